"""The exchange blueprint: signed requests, pre-trade refusals, own data only."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from exchange.venue import ORDER_TYPES, PRICE_KINDS, SIDES, STP_MODES, TIMES_IN_FORCE
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
        _, key = svc.users.create_user(name, frozenset(roles), kyc_tier=4, key_scopes=frozenset(Scope))
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
    app.config["EXCHANGE_DEV_MODE"] = True  # these tests hand-set the index (docs/market.md)
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


# ------------------------------------------------------------------ refused orders never brick a restart

INVALID_ENUMS = [
    ("side", "sideways", 3011, "bad_side"),
    ("type", "iceberg", 3010, "bad_order_type"),
    ("tif", "GTD", 3010, "bad_order_type"),
    ("stp", "cancel_nobody", 3010, "bad_order_type"),
    ("trigger", "index", 3013, "bad_trigger"),
]
INVALID_DEFAULTS = [("side", "buy"), ("type", "stop_limit"), ("tif", "GTC"), ("stp", "cancel_taker"),
                    ("trigger", "last")]


def _restart(app: Flask, clock: Any) -> Flask:
    """Stop the exchange as a crash would (journal closed, no final snapshot) and start a new app.

    The new app goes through what ``strongroom serve`` runs at start: ``create_app`` ->
    ``exchange.api.blueprint.init_app`` -> ``ExchangeService.open`` -> journal recovery.
    """
    from strongroom.app import create_app

    svc = app.extensions["strongroom.exchange"]
    svc.flush()
    svc.durable.close()
    settings = app.extensions["strongroom.settings"]
    return create_app({"TESTING": True, "CLOCK": clock, "KEYSTORE": app.config["KEYSTORE"],
                       "EXCHANGE_INSTRUMENTS": app.config["EXCHANGE_INSTRUMENTS"]}, settings=settings)


@pytest.mark.parametrize(("field", "value", "code", "error"), INVALID_ENUMS)
def test_order_with_invalid_enum_is_refused_unjournaled_and_the_server_restarts(
        app: Flask, client: FlaskClient, clock: Any, field: str, value: str, code: int,
        error: str) -> None:
    _, alice, _ = _setup(app, client, clock)
    alice.call("POST", f"{BASE}/collateral/deposit", {"amount": 5_000 * USDC})
    svc = app.extensions["strongroom.exchange"]
    before = svc.durable.command_seq
    order = {"symbol": "BTC-PERP", "id": "bad", "side": "buy", "qty": 10, "price": BTC - 100 * USDC,
             "type": "stop_limit", "trigger_price": BTC + 100 * USDC, field: value}
    r = alice.call("POST", f"{BASE}/orders", order)
    assert r.status_code == 400 and r.get_json()["code"] == code and r.get_json()["error"] == error
    assert svc.durable.command_seq == before, "a refused order was journaled"
    ok = dict(order, id="good", **{field: dict(INVALID_DEFAULTS)[field]})
    assert alice.call("POST", f"{BASE}/orders", ok).status_code == 201
    state = svc.venue.state_hash()
    restarted = _restart(app, clock)
    try:
        again = restarted.extensions["strongroom.exchange"]
        assert again.venue.state_hash() == state
        assert len(again.venue.books["BTC-PERP"].stops) == 1
        assert again.reconcile() == []
    finally:
        restarted.extensions["strongroom.exchange"].close()
        restarted.extensions["strongroom.engine"].dispose()


# ------------------------------------------------------------------ client order ids


def test_same_client_id_in_two_accounts_neither_leaks_nor_blocks(
        app: Flask, client: FlaskClient, clock: Any) -> None:
    _, alice, bob = _setup(app, client, clock)
    for who in (alice, bob):
        who.call("POST", f"{BASE}/collateral/deposit", {"amount": 5_000 * USDC})
    r = alice.call("POST", f"{BASE}/orders", {"symbol": "BTC-PERP", "id": "o1", "side": "buy",
                                              "qty": 10, "price": BTC - 100 * USDC})
    assert r.status_code == 201
    r = bob.call("POST", f"{BASE}/orders", {"symbol": "BTC-PERP", "id": "o1", "side": "buy",
                                            "qty": 10, "price": BTC - 200 * USDC})
    assert r.status_code == 201, r.get_json()
    r = alice.call("POST", f"{BASE}/orders", {"symbol": "BTC-PERP", "id": "o1", "side": "buy",
                                              "qty": 10, "price": BTC - 300 * USDC})
    assert r.status_code == 409 and r.get_json()["message"] == "order id 'o1' is already live on BTC-PERP"
    assert bob.call("DELETE", f"{BASE}/orders/BTC-PERP/o1").status_code == 200
    orders = alice.call("GET", f"{BASE}/orders").get_json()["orders"]
    assert [(o["id"], o["price"]) for o in orders] == [("o1", BTC - 100 * USDC)]
    assert bob.call("GET", f"{BASE}/orders").get_json()["orders"] == []


@pytest.mark.parametrize("bad", ["a/b", "..", ".", "-x", "", "x" * 41, "a b", "é", "a%2Fb", 7])
def test_order_id_outside_the_safe_alphabet_is_refused_with_bad_id(
        app: Flask, client: FlaskClient, clock: Any, bad: Any) -> None:
    _, alice, _ = _setup(app, client, clock)
    alice.call("POST", f"{BASE}/collateral/deposit", {"amount": 5_000 * USDC})
    r = alice.call("POST", f"{BASE}/orders", {"symbol": "BTC-PERP", "id": bad, "side": "buy",
                                              "qty": 10, "price": BTC - 100 * USDC})
    assert r.status_code == 400 and r.get_json()["error"] == "bad_id", r.get_json()
    assert len(r.get_json()["message"]) < 200
    assert alice.call("GET", f"{BASE}/orders").get_json()["orders"] == []


def test_order_id_at_the_alphabet_limits_is_placed_and_cancelled(
        app: Flask, client: FlaskClient, clock: Any) -> None:
    _, alice, _ = _setup(app, client, clock)
    alice.call("POST", f"{BASE}/collateral/deposit", {"amount": 5_000 * USDC})
    oid = "A9._-" + "z" * 35
    r = alice.call("POST", f"{BASE}/orders", {"symbol": "BTC-PERP", "id": oid, "side": "buy",
                                              "qty": 10, "price": BTC - 100 * USDC})
    assert r.status_code == 201 and r.get_json()["events"][0]["id"] == oid
    r = alice.call("PATCH", f"{BASE}/orders/BTC-PERP/{oid}", {"qty": 5})
    assert r.status_code == 200 and r.get_json()["events"][0]["id"] == oid
    r = alice.call("DELETE", f"{BASE}/orders/BTC-PERP/{oid}")
    assert r.status_code == 200
    cancelled = r.get_json()["events"][0]
    assert (cancelled["type"], cancelled["id"], cancelled["qty"]) == ("cancelled", oid, 5)


def test_cancel_all_cancels_only_the_callers_orders_on_that_symbol(
        app: Flask, client: FlaskClient, clock: Any) -> None:
    _, alice, bob = _setup(app, client, clock)
    for who in (alice, bob):
        who.call("POST", f"{BASE}/collateral/deposit", {"amount": 5_000 * USDC})
    for i, mode in enumerate(("cross", "cross", "isolated")):
        r = alice.call("POST", f"{BASE}/orders", {"symbol": "BTC-PERP", "id": f"a{i}", "side": "buy",
                                                  "qty": 10, "price": BTC - (i + 1) * 100 * USDC,
                                                  "margin_mode": mode})
        assert r.status_code == 201, r.get_json()
    r = alice.call("POST", f"{BASE}/orders", {"symbol": "BTC-PERP", "id": "stop", "side": "buy", "qty": 10,
                                              "type": "stop_market", "trigger_price": BTC + 100 * USDC})
    assert r.status_code == 201, r.get_json()
    bob.call("POST", f"{BASE}/orders", {"symbol": "BTC-PERP", "id": "a0", "side": "buy", "qty": 10,
                                        "price": BTC - 500 * USDC})
    svc = app.extensions["strongroom.exchange"]
    r = alice.call("DELETE", f"{BASE}/orders/BTC-PERP")
    assert r.status_code == 200
    assert sorted(e["id"] for e in r.get_json()["events"] if e["type"] == "cancelled") == [
        "a0", "a1", "a2", "stop"]
    assert alice.call("GET", f"{BASE}/orders").get_json()["orders"] == []
    assert [o["id"] for o in bob.call("GET", f"{BASE}/orders").get_json()["orders"]] == ["a0"]
    assert svc.venue.clearing.accounts["alice"].order_im == 0
    assert alice.call("DELETE", f"{BASE}/orders/BTC-PERP").get_json() == {"events": []}
    assert alice.call("DELETE", f"{BASE}/orders/NOPE-PERP").status_code == 404
    assert svc.reconcile() == []


# ------------------------------------------------------------------ what a trader sees


def test_taker_fill_events_name_no_counterparty(app: Flask, client: FlaskClient, clock: Any) -> None:
    _, alice, bob = _setup(app, client, clock)
    for who in (alice, bob):
        who.call("POST", f"{BASE}/collateral/deposit", {"amount": 5_000 * USDC})
    alice.call("POST", f"{BASE}/orders", {"symbol": "BTC-PERP", "id": "maker-1", "side": "sell",
                                          "qty": 1000, "price": BTC})
    r = bob.call("POST", f"{BASE}/orders", {"symbol": "BTC-PERP", "id": "taker-1", "side": "buy",
                                            "qty": 1000, "price": BTC})
    assert r.status_code == 201
    text = r.get_data(as_text=True)
    assert "alice" not in text and "maker-1" not in text and "maker_account" not in text
    trades = [e for e in r.get_json()["events"] if e["type"] == "trade"]
    assert trades == [{"type": "trade", "seq": trades[0]["seq"], "id": "taker-1", "side": "buy",
                       "price": BTC, "qty": 1000, "liquidity": "taker", "ts": trades[0]["ts"]}]
    for who, other, own in ((bob, "alice", "taker-1"), (alice, "bob", "maker-1")):
        fills = who.call("GET", f"{BASE}/fills").get_json()["fills"]
        assert [f["order_id"] for f in fills] == [own]
        assert other not in json.dumps(fills)
    # Internal settlement still knows both sides.
    trade = next(e for _, e in app.extensions["strongroom.exchange"].venue.engine_events
                 if type(e).__name__ == "Trade")
    assert (trade.maker_account, trade.taker_account) == ("alice", "bob")


def test_huge_ids_in_exchange_paths_answer_4xx(app: Flask, client: FlaskClient, clock: Any) -> None:
    _, alice, _ = _setup(app, client, clock)
    for path in (f"{BASE}/orders/BTC-PERP/{2**63}", f"{BASE}/orders/BTC-PERP/{2**64 + 1}",
                 f"{BASE}/orders/{2**63}/1", f"{BASE}/orders/BTC-PERP/{'9' * 400}"):
        for method, body in (("DELETE", None), ("PATCH", {"qty": 1})):
            r = alice.call(method, path, body)
            assert 400 <= r.status_code < 500 and len(r.get_data()) < 400, (path, r.get_json())
    assert alice.call("DELETE", f"{BASE}/orders/{2**63}").status_code == 404
    assert alice.call("POST", f"{BASE}/collateral/{2**63}", {"amount": 1}).status_code == 404


def test_openapi_exchange_order_schema_matches_what_the_venue_accepts(client: FlaskClient) -> None:
    document = client.get("/api/v1/openapi.json").json
    order = document["paths"]["/api/v1/exchange/orders"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    enums = {name: set(order["properties"][name]["enum"])
             for name in ("side", "type", "tif", "stp", "trigger")}
    assert enums == {"side": set(SIDES), "type": set(ORDER_TYPES), "tif": set(TIMES_IN_FORCE),
                     "stp": set(STP_MODES), "trigger": set(PRICE_KINDS)}
    assert order["additionalProperties"] is False
    assert set(order["required"]) == {"symbol", "id", "side", "qty"}
    assert "/api/v1/exchange/orders/{symbol}" in document["paths"]
    collateral = document["paths"]["/api/v1/exchange/collateral/{direction}"]["post"]
    direction = next(p for p in collateral["parameters"] if p["name"] == "direction")
    assert direction["schema"]["enum"] == ["deposit", "withdraw"]
