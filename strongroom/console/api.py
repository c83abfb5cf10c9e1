"""The console calls the platform's own REST views in-process, as the logged-in person.

Every action of the console goes through exactly the code an API client reaches:
the same view, the same ``secured`` checks (permission, step-up TOTP in
``X-Strongroom-MFA``, ``Idempotency-Key`` on money-moving requests), the same
services and the same error codes. Only the first step differs: instead of an
HMAC-signed request, the caller is the console session (`acting_as`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from flask import current_app, g, request

from custody.access.users import UserView
from custody.api.auth import HEADER_IDEMPOTENCY_KEY, HEADER_MFA, Principal, acting_as
from policies.api_key import ApiKey, Scope

SESSION_KEY_ID = "console-session"


@dataclass(frozen=True, slots=True)
class Answer:
    """What the API answered: status and JSON body."""

    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        """The API's own explanation of a refusal (``code error: message``)."""
        if self.ok:
            return ""
        code, error = self.body.get("code", self.status), self.body.get("error", "refused")
        return f"{code} {error}: {self.body.get('message', '')}"


def session_principal(user: UserView) -> Principal:
    """Return the caller a console session acts as: the user, with a key of every scope.

    Scopes limit what a *key* may do; a person logged in with password and TOTP acts with
    their roles, and step-up TOTP still guards every action that needs it.
    """
    return Principal(user, ApiKey(SESSION_KEY_ID, user.username, frozenset(Scope), user.created_ms))


def call(method: str, path: str, *, body: dict[str, Any] | None = None,
         query: dict[str, Any] | None = None, mfa: str | None = None,
         idempotency_key: str | None = None) -> Answer:
    """Call ``method path`` of this app as the console's user; return status and JSON body."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    user: UserView = g.console_user
    headers = {}
    if mfa:
        headers[HEADER_MFA] = mfa
    if idempotency_key:
        headers[HEADER_IDEMPOTENCY_KEY] = idempotency_key
    environ = {"REMOTE_ADDR": request.remote_addr or "127.0.0.1"}
    with acting_as(session_principal(user)), app.test_request_context(
            path, method=method, json=body, query_string=query, headers=headers, environ_base=environ):
        response = app.full_dispatch_request()
    data = response.get_data(as_text=True)
    try:
        parsed = json.loads(data) if data else {}
    except ValueError:
        parsed = {"message": data[:200]}
    return Answer(response.status_code, parsed if isinstance(parsed, dict) else {"items": parsed})
