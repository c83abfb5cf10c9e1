"""Rate limits (per key, per IP) with standard headers; the OpenAPI document and docs page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from custody.api.schema import BODYLESS_WRITES
from custody.api.withdrawals import STATES
from policies.roles import Role

from .helpers import assert_error, make_user


@pytest.fixture
def limited_app(database_url: str, clock: Any, keystore: Any, tmp_path: Path) -> Iterator[Flask]:
    from strongroom.app import create_app
    from strongroom.settings import Settings

    application = create_app(
        {
            "TESTING": True,
            "CLOCK": clock,
            "KEYSTORE": keystore,
            "RATELIMIT_PER_KEY": "3 per minute",
            "RATELIMIT_PER_IP": "6 per minute",
        },
        settings=Settings(data_dir=tmp_path / "data", database_url=database_url),
    )
    yield application
    application.extensions["strongroom.engine"].dispose()


def test_per_key_limit_answers_429_with_standard_headers_and_error_body(
    limited_app: Flask, clock: Any
) -> None:
    client = limited_app.test_client()
    alice = make_user(limited_app, client, clock, "alice", {Role.TRADER}, mfa=False)
    for _ in range(3):
        ok = alice.get("/api/v1/me")
        assert ok.status_code == 200 and "X-RateLimit-Limit" in ok.headers
    limited = alice.get("/api/v1/me")
    assert_error(limited, 429, "rate_limited")
    assert limited.json["code"] == 9029 and "Retry-After" in limited.headers
    bob = make_user(limited_app, client, clock, "bob", {Role.TRADER}, mfa=False)
    assert bob.get("/api/v1/me", remote_addr="192.0.2.7").status_code == 200


def test_per_ip_limit_counts_unauthenticated_requests(limited_app: Flask) -> None:
    client = limited_app.test_client()
    statuses = [
        client.get("/api/v1/me", headers={"X-Strongroom-Key": f"srk_{i}"}).status_code for i in range(7)
    ]
    assert statuses == [401] * 6 + [429]


def test_openapi_document_lists_every_api_route_with_security(app: Flask, client: FlaskClient) -> None:
    document = client.get("/api/v1/openapi.json").json
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1"):
            path = re.sub(r"<(?:[a-z]+(?:\([^)]*\))?:)?([a-z_]+)>", r"{\1}", rule.rule)
            assert path in paths, path
    withdrawal = paths["/api/v1/withdrawals"]["post"]
    assert withdrawal["x-strongroom-access"] == {
        "permissions": ["withdraw.request"],
        "scope": "withdraw",
        "mfa": True,
        "admin_only": False,
    }
    assert "security" in withdrawal and "security" not in paths["/api/v1/health"]["get"]
    page = client.get("/api/v1/docs")
    assert page.status_code == 200 and b"/api/v1/withdrawals" in page.data


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, ops in document["paths"].items()
            for method, op in ops.items()]


def test_openapi_documents_a_success_schema_and_the_error_schema_for_every_operation(
        client: FlaskClient) -> None:
    document = client.get("/api/v1/openapi.json").json
    operations = _operations(document)
    assert len(operations) >= 70
    for method, path, op in operations:
        responses = op["responses"]
        assert "x-strongroom-undocumented" not in op, (method, path, "add it to custody.api.schema")
        success = [s for s in responses if s[0] == "2"]
        assert success, (method, path)
        for status in success:
            schema = next(iter(responses[status]["content"].values()))["schema"]
            assert schema != {"type": "object"} or op["operationId"] in {
                "audit.inclusion_proof", "audit.consistency_proof", "audit.liability_proof"}, (method, path)
        default = responses["default"]["content"]["application/json"]["schema"]
        assert default == {"$ref": "#/components/schemas/Error"}, (method, path)
        if "security" in op:
            for status in ("400", "401", "403", "404", "429"):
                assert responses[status]["content"]["application/json"]["schema"] == default, (method, status)
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["code", "error", "message"]


def test_openapi_documents_a_request_body_for_every_write_that_takes_one(client: FlaskClient) -> None:
    document = client.get("/api/v1/openapi.json").json
    for method, path, op in _operations(document):
        if method in ("POST", "PUT", "PATCH"):
            has_body = "requestBody" in op
            assert has_body != (op["operationId"] in BODYLESS_WRITES), (method, path)
        else:
            assert "requestBody" not in op, (method, path)


def test_openapi_withdrawal_state_enums_list_every_state(client: FlaskClient) -> None:
    document = client.get("/api/v1/openapi.json").json
    states = set(STATES)
    assert len(states) == 10
    listed = document["paths"]["/api/v1/withdrawals"]["get"]["parameters"]
    query = next(p for p in listed if p["name"] == "state")
    assert set(query["schema"]["enum"]) == states
    schema = document["components"]["schemas"]["Withdrawal"]["properties"]["state"]
    assert set(schema["enum"]) == states

