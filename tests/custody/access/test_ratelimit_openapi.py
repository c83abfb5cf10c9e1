"""Rate limits (per key, per IP) with standard headers; the OpenAPI document and docs page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

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
            path = rule.rule.replace("<int:", "{").replace("<", "{").replace(">", "}")
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
