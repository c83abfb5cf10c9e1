"""The role matrix, proven per endpoint: a role without the permission gets 403, a role with it does not.

Also: no endpoint shows one trader another trader's data, and every endpoint
is listed in docs/api.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from custody.api.auth import EndpointAccess
from policies.roles import Role

from .conftest import fund
from .helpers import SignedClient, make_user

DOCS = Path(__file__).resolve().parents[3] / "docs" / "api.md"
_PARAM = re.compile(r"<(?:(?P<conv>[a-z]+):)?(?P<name>[a-z_]+)>")


def secured_routes(app: Flask) -> list[tuple[str, str, EndpointAccess]]:
    routes = []
    for rule in app.url_map.iter_rules():
        access = getattr(app.view_functions[rule.endpoint], "endpoint_access", None)
        if access is None:
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            routes.append((method, rule.rule, access))
    return sorted(routes, key=lambda r: (r[1], r[0]))


def fill(rule: str, values: dict[str, Any]) -> str:
    return _PARAM.sub(lambda m: str(values.get(m["name"], "1" if m["conv"] == "int" else "x")), rule)


@pytest.fixture
def people(app: Flask, client: FlaskClient, clock: Any) -> dict[Role, SignedClient]:
    return {role: make_user(app, client, clock, f"user-{role.value}", {role}, approver=True) for role in Role}


def test_every_endpoint_refuses_roles_without_its_permission(
    app: Flask, people: dict[Role, SignedClient]
) -> None:
    routes = secured_routes(app)
    assert len(routes) >= 30
    for method, rule, access in routes:
        for role, user in people.items():
            response = user.request(
                method, fill(rule, {}), json={} if method == "POST" else None, mfa=access.mfa
            )
            error = (response.get_json() or {}).get("error")
            if access.allows(frozenset({role})):
                assert error != "permission_denied", (method, rule, role, response.get_json())
                assert response.status_code != 500, (method, rule, role)
            else:
                assert (response.status_code, error) == (403, "permission_denied"), (method, rule, role)


DOCUMENTED_BLUEPRINTS = ("access.", "withdrawals.", "policy.", "ledger.")


def test_every_endpoint_is_documented_with_its_access(app: Flask) -> None:
    text = DOCS.read_text()
    ours = {r.rule for r in app.url_map.iter_rules() if r.endpoint.startswith(DOCUMENTED_BLUEPRINTS)}
    for method, rule, access in (r for r in secured_routes(app) if r[1] in ours):
        path = _PARAM.sub(lambda m: "{" + m["name"] + "}", rule)
        line = next((x for x in text.splitlines() if f"`{method} {path}`" in x), None)
        assert line is not None, f"docs/api.md does not list {method} {path}"
        for permission in access.permissions:
            assert permission.value in line, (method, path, permission)


def _whitelist(user: SignedClient, address: str) -> int:
    response = user.post("/api/v1/whitelist", json={"asset": "BTC", "address": address}, mfa=True)
    assert response.status_code == 201, response.json
    return int(response.json["entry"]["id"])


def test_no_endpoint_leaks_another_traders_data(app: Flask, alice: SignedClient, bob: SignedClient) -> None:
    entry_id = _whitelist(alice, "bc1qalicesecretaddr")
    alice.clock.advance(86_400_000)
    withdrawal = alice.post(
        "/api/v1/withdrawals",
        json={"asset": "BTC", "amount": "1000000", "destination": "bc1qalicesecretaddr"},
        mfa=True,
        idempotency_key="role-matrix-withdrawal",
    ).json["withdrawal"]
    fund(app, "bob", "ETH", 10**18)
    values = {
        "account_id": alice.extra["account_id"],
        "withdrawal_id": withdrawal["id"],
        "transfer_id": withdrawal["hold_transfer_id"],
        "key_id": alice.key_id,
        "entry_id": entry_id,
        "username": "alice",
        "proposal_id": "x",
        "pending_id": "x",
    }
    secrets = [
        withdrawal["id"],
        "bc1qalicesecretaddr",
        alice.key_id,
        '"alice"',
        f'"id":{alice.extra["account_id"]},',
    ]
    for method, rule, access in secured_routes(app):
        if not access.allows(frozenset({Role.TRADER})):
            continue
        path = fill(rule, values)
        response = bob.request(method, path, json={} if method == "POST" else None, mfa=access.mfa)
        text = response.get_data(as_text=True).replace(" ", "")
        # An error may echo the id Bob sent himself; anything else of Alice's is a leak.
        for secret in (s for s in secrets if s.strip('"') not in path):
            assert secret not in text, (method, rule, secret, response.status_code)
    # Bob's attempts changed nothing of Alice's.
    assert alice.get(f"/api/v1/withdrawals/{withdrawal['id']}").json["withdrawal"]["state"] == "approved"
    assert [e["id"] for e in alice.get("/api/v1/whitelist").json["entries"]] == [entry_id]
    assert alice.get("/api/v1/me").status_code == 200
