"""The exchange blueprint: signed requests, pre-trade refusals, own data only."""

from __future__ import annotations

import json
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from policies.api_key import Scope
from policies.request_signing import sign_request
from policies.roles import Role

BASE = "/api/v1/exchange"
USDC = 1_000_000
BTC = 60_000 * USDC


class Caller:
    """A user with an API key; every request is HMAC-signed at the fake clock's time."""

    def __init__(self, app: Flask, client: FlaskClient, clock: Any, name: str, roles: set[Role]) -> None:
        svc = app.extensions["strongroom.access"]
        _, key = svc.users.create_user(name, frozenset(roles), kyc_tier=2, key_scopes=frozenset(Scope))
        self.client, self.clock, self.name = client, clock, name
        self.key_id, self.secret = key.credentials.key_id, key.credentials.secret

    def call(self, method: str, path: str, body: Any = None) -> TestResponse:
        raw = b"" if body is None else json.dumps(body).encode()
        self.clock.advance(1)
        headers = sign_request(key_id=self.key_id, secret=self.secret, timestamp_ms=self.clock.now_ms,
                               method=method, path=path, query="", body=raw)
        return self.client.open(path, method=method, data=raw, headers=headers,
                                content_type="application/json" if body is not None else None,
                                environ_base={"REMOTE_ADDR": "127.0.0.1"})


def _setup(app: Flask, client: FlaskClient, clock: Any) -> tuple[Caller, Caller, Caller]:
    admin = Caller(app, client, clock, "ops", {Role.ADMIN})
    alice = Caller(app, client, clock, "alice", {Role.TRADER})
    bob = Caller(app, client, clock, "bob", {Role.TRADER})
    svc = app.extensions["strongroom.exchange"]
    for who in ("alice", "bob"):
        svc.credit_deposit(who, 10_000 * USDC, f"dep-{who}")
    for source in ("coinbase", "kraken", "bitstamp"):
        r = admin.call("POST", f"{BASE}/operator/quotes",
                       {"underlying": "BTC", "source": source, "price": BTC})
        assert r.status_code == 200, r.get_json()
    return admin, alice, bob


def test_trading_flow_through_the_api(app: Flask, client: FlaskClient, clock: Any) -> None:
    _, alice, bob = _setup(app, client, clock)
    for who in (alice, bob):
        r = who.call("POST", f"{BASE}/collateral/deposit", {"amount": 5_000 * USDC})
        assert r.status_code == 200 and r.get_json()["collateral"] == 5_000 * USDC
    r = alice.call("POST", f"{BASE}/orders", {"symbol": "BTC-PERP", "id": "a1", "side": "sell",
                                              "qty": 1000, "price": BTC})
    assert r.status_code == 201, r.get_json()
    assert [o["id"] for o in alice.call("GET", f"{BASE}/orders").get_json()["orders"]] == ["a1"]
    assert bob.call("GET", f"{BASE}/orders").get_json()["orders"] == []
    r = bob.call("POST", f"{BASE}/orders", {"symbol": "BTC-PERP", "id": "b1", "side": "buy",
                                            "qty": 1000, "price": BTC})
    assert any(e["type"] == "trade" for e in r.get_json()["events"])
    pos = bob.call("GET", f"{BASE}/positions").get_json()["positions"]
    assert pos[0]["size"] == 1000 and pos[0]["entry_price"] == BTC
    assert 0 < pos[0]["liquidation_price"] < BTC
    summary = bob.call("GET", f"{BASE}/account").get_json()
    assert summary["used_margin"] == 1_200 * USDC and summary["equity"] == 5_000 * USDC - 30 * USDC
    assert len(bob.call("GET", f"{BASE}/fills").get_json()["fills"]) == 1
    svc = app.extensions["strongroom.exchange"]
    assert svc.ledger_balance("m:bob") == svc.venue.clearing.accounts["bob"].cash


def test_order_beyond_margin_is_refused_with_2001(app: Flask, client: FlaskClient, clock: Any) -> None:
    _, alice, _ = _setup(app, client, clock)
    alice.call("POST", f"{BASE}/collateral/deposit", {"amount": 100 * USDC})
    r = alice.call("POST", f"{BASE}/orders", {"symbol": "BTC-PERP", "id": "x", "side": "buy",
                                              "qty": 1000, "price": BTC})
    assert r.status_code == 422
    assert r.get_json()["code"] == 2001 and r.get_json()["error"] == "insufficient_margin"


def test_trader_cannot_cancel_someone_elses_order_or_feed_prices(
        app: Flask, client: FlaskClient, clock: Any) -> None:
    _, alice, bob = _setup(app, client, clock)
    alice.call("POST", f"{BASE}/collateral/deposit", {"amount": 5_000 * USDC})
    alice.call("POST", f"{BASE}/orders", {"symbol": "BTC-PERP", "id": "a1", "side": "buy",
                                          "qty": 10, "price": BTC - 100 * USDC})
    r = bob.call("DELETE", f"{BASE}/orders/BTC-PERP/a1")
    assert r.status_code == 404 and r.get_json()["code"] == 3001
    r = bob.call("POST", f"{BASE}/operator/quotes", {"underlying": "BTC", "source": "kraken",
                                                     "price": 1})
    assert r.status_code == 403
    r = alice.call("DELETE", f"{BASE}/orders/BTC-PERP/a1")
    assert r.status_code == 200


def test_unsigned_request_is_refused(client: FlaskClient) -> None:
    assert client.get(f"{BASE}/positions").status_code == 401
