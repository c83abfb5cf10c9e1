"""Authentication and authorization for every protected endpoint.

Each view declares what it needs with `@secured(...)`: the permission (one
of several may suffice), the API-key scope, and whether a fresh TOTP code is
required (by default: when `policies.roles.requires_mfa` says so). The
decorator runs, in order:

1. HMAC request signature (`policies.request_signing.verify_signed_request`
   with the DB-backed replay cache): key known, timestamp window, signature,
   key state, IP allowlist, scope, replay.                      -> 401 / 403
2. the user is not disabled                                      -> 401
3. the user's roles grant the permission                          -> 403
4. a POST with ``Idempotency-Key`` claims the key (unique per user) before any work:
   a completed one returns the stored result, a running one answers 409; money-moving
   endpoints refuse a POST without the header                    -> 400 / 409 / 422
5. the ``X-Strongroom-MFA`` TOTP code, if required               -> 401 / 403 / 429
6. the view; a 2xx result is stored under the key, anything else releases the claim.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from flask import Response, current_app, g, request
from flask.typing import ResponseReturnValue

from custody.access.errors import AccessCode, AccessError
from custody.access.idempotency import check_key, request_fingerprint
from custody.access.users import UserView
from custody.api.services import AccessServices
from policies.api_key import ApiKey, Scope
from policies.request_signing import (
    HEADER_KEY_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    SignedRequest,
    timestamp_refusal,
    verify_signed_request,
)
from policies.results import PolicyError, Refusal, ResultCode
from policies.roles import Permission, Role, has_permission, requires_mfa

HEADER_MFA = "X-Strongroom-MFA"
HEADER_IDEMPOTENCY_KEY = "Idempotency-Key"
HEADER_IDEMPOTENT_REPLAY = "Idempotent-Replayed"

F = TypeVar("F", bound=Callable[..., ResponseReturnValue])
# The web console (strongroom/console) authenticates people with a session instead of a signed
# request and then calls these same views in-process; it sets the caller here for that one call.
# Only code in this process can set it: nothing an HTTP client sends reaches it.
_session_caller: ContextVar[Principal | None] = ContextVar("strongroom_session_caller", default=None)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the user and the key they signed with."""

    user: UserView
    key: ApiKey

    @property
    def username(self) -> str:
        return self.user.username


@dataclass(frozen=True, slots=True)
class EndpointAccess:
    """What an endpoint requires; also read by the OpenAPI generator and the role-matrix test."""

    permissions: tuple[Permission, ...]
    scope: Scope
    mfa: bool
    admin_only: bool
    # Money-moving POSTs need an Idempotency-Key: a retry must never move money twice.
    idempotency_key_required: bool = False

    def allows(self, roles: frozenset[Role]) -> bool:
        if self.admin_only:
            return Role.ADMIN in roles
        return any(has_permission(roles, p) for p in self.permissions)

    def describe(self) -> str:
        who = "role admin" if self.admin_only else " or ".join(p.value for p in self.permissions)
        return f"needs {who}; key scope {self.scope.value}" + ("; MFA code" if self.mfa else "")


@contextlib.contextmanager
def acting_as(caller: Principal) -> Iterator[None]:
    """Run in-process API calls as ``caller`` (a console session), with every other check unchanged."""
    token = _session_caller.set(caller)
    try:
        yield
    finally:
        _session_caller.reset(token)


def services() -> AccessServices:
    found: AccessServices = current_app.extensions["strongroom.access"]
    return found


def principal() -> Principal:
    """Return the authenticated caller of the current request."""
    found: Principal = g.principal
    return found


def secured(
    *permissions: Permission, scope: Scope, mfa: bool | None = None, admin_only: bool = False,
    moves_money: bool = False,
) -> Callable[[F], F]:
    """Protect a view; see the module docstring for the order of checks.

    ``moves_money`` makes the ``Idempotency-Key`` header required.
    """
    assert permissions or admin_only, "an endpoint must name a permission or be admin-only"
    need_mfa = any(requires_mfa(p) for p in permissions) if mfa is None else mfa
    access = EndpointAccess(tuple(permissions), scope, need_mfa, admin_only, moves_money)

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> ResponseReturnValue:
            caller = _session_caller.get() or authenticate(access.scope)
            g.principal = caller
            if not access.allows(caller.user.roles):
                raise PolicyError(
                    ResultCode.PERMISSION_DENIED,
                    f"{caller.username} (roles {', '.join(sorted(caller.user.roles))}) "
                    f"may not call this endpoint: it {access.describe()}",
                )
            idempotency = _idempotency(caller)
            if idempotency is None:
                if access.idempotency_key_required:
                    raise AccessError(AccessCode.IDEMPOTENCY_KEY_REQUIRED,
                                      f"this request moves money: send an {HEADER_IDEMPOTENCY_KEY} header "
                                      "(reuse it when you retry)")
                if access.mfa:
                    _check_mfa(caller)
                return view(*args, **kwargs)
            return _run_claimed(caller, idempotency, access, lambda: view(*args, **kwargs))

        wrapper.endpoint_access = access  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorate


def _run_claimed(caller: Principal, idempotency: tuple[str, str], access: EndpointAccess,
                 run: Callable[[], ResponseReturnValue]) -> ResponseReturnValue:
    """Claim the key before the work; store a 2xx result, release the claim otherwise."""
    store = services().idempotency
    key, fingerprint = idempotency
    stored = store.claim(caller.username, key, fingerprint)
    if stored is not None:
        response = Response(stored.body, stored.status, mimetype="application/json")
        response.headers[HEADER_IDEMPOTENT_REPLAY] = "true"
        return response
    try:
        if access.mfa:
            _check_mfa(caller)
        result = current_app.make_response(run())
    except BaseException:
        store.release(caller.username, key)
        raise
    if 200 <= result.status_code < 300:
        store.complete(caller.username, key, result.status_code, result.get_data(as_text=True))
    else:
        store.release(caller.username, key)
    return result


def authenticate(scope: Scope) -> Principal:
    """Verify the request signature and return the caller; raise `PolicyError` if refused."""
    svc = services()
    signed = SignedRequest.parse(
        key_id=request.headers.get(HEADER_KEY_ID),
        timestamp=request.headers.get(HEADER_TIMESTAMP),
        signature=request.headers.get(HEADER_SIGNATURE),
        method=request.method,
        path=request.path,
        query=request.query_string.decode("latin-1"),
        body=request.get_data(cache=True),
        client_ip=request.remote_addr or "",
    )
    # Outside the time window: refused before the key is looked up. Such a request is not
    # authenticated (its signature is never checked), so it costs no key lookup and no
    # security-log row: a client whose requests queued past the window under overload, or
    # a replay of an old capture, must not add database work. The app log has key and path.
    now_ms = svc.clock()
    early = timestamp_refusal(signed.timestamp_ms, now_ms, svc.recv_window_ms)
    if early is not None:
        svc.log_refusal(signed.key_id, None, early, request.method, request.path)
        raise PolicyError(early.code, early.message)
    found = svc.users.verified_key(signed.key_id)
    refusal = verify_signed_request(
        signed,
        None if found is None else found[0],
        required_scope=scope,
        now_ms=now_ms,
        replay_cache=svc.replay_cache,
        recv_window_ms=svc.recv_window_ms,
    )
    if refusal is not None:
        svc.log_refusal(
            signed.key_id, None if found is None else found[1].username, refusal, request.method, request.path
        )
        raise PolicyError(refusal.code, refusal.message)
    assert found is not None
    verified, user = found
    if user.disabled_ms is not None:
        raise AccessError(AccessCode.USER_DISABLED, f"user {user.username} is disabled")
    return Principal(user, verified.key)


def _check_mfa(caller: Principal) -> None:
    code = request.headers.get(HEADER_MFA)
    if not code:
        raise PolicyError(ResultCode.MFA_REQUIRED, f"this request needs a TOTP code in {HEADER_MFA}")
    refusal: Refusal | None = services().mfa.verify(caller.username, code)
    if refusal is not None:
        raise PolicyError(refusal.code, refusal.message)


def _idempotency(caller: Principal) -> tuple[str, str] | None:
    key = request.headers.get(HEADER_IDEMPOTENCY_KEY)
    if request.method != "POST" or key is None:
        return None
    fingerprint = request_fingerprint(
        request.method, request.path, request.query_string.decode("latin-1"), request.get_data(cache=True)
    )
    return check_key(key), fingerprint


def json_response(body: dict[str, Any], status: int = 200) -> Response:
    """Return ``body`` as JSON (a helper so idempotent replays store exactly what was sent)."""
    return Response(json.dumps(body, separators=(",", ":")), status, mimetype="application/json")
