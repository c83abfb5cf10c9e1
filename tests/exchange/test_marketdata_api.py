"""Market-data REST: public endpoints (no signature), the trader's history, units, isolation, refusals."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from policies.api_key import Scope
from policies.request_signing import sign_request
from policies.roles import Role

EX = "/api/v1/exchange"
MD = "/api/v1/market"
USDC = 1_000_000
BTC = 60_000 * USDC


class Caller:
    """A user with an API key; requests are signed (query string included) at the fake clock's time."""

    def __init__(self, app: Flask, client: FlaskClient, clock: Any, name: str, roles: set[Role]) -> None:
        svc = app.extensions["strongroom.access"]
        _, key = svc.users.create_user(name, frozenset(roles), kyc_tier=4, key_scopes=frozenset(Scope))
        self.client, self.clock = client, clock
        self.key_id, self.secret = key.credentials.key_id, key.credentials.secret

    def call(self, method: str, path: str, body: Any = None, **query: Any) -> TestResponse:
        raw = b"" if body is None else json.dumps(body).encode()
        qs = urlencode(query)
        self.clock.advance(1)
        headers = sign_request(key_id=self.key_id, secret=self.secret, timestamp_ms=self.clock.now_ms,
                               method=method, path=path, query=qs, body=raw)
        return self.client.open(path + (f"?{qs}" if qs else ""), method=method, data=raw, headers=headers,
                                content_type="application/json" if body is not None else None,
                                environ_base={"REMOTE_ADDR": "127.0.0.1"})


@pytest.fixture
def market(app: Flask, client: FlaskClient, clock: Any) -> tuple[Caller, Caller]:
    """Alice sells 1 BTC-PERP at 60,000 to Bob, then Bob sells it back to Carol at 61,000."""
    admin = Caller(app, client, clock, "ops", {Role.ADMIN})
    alice = Caller(app, client, clock, "alice", {Role.TRADER})
    bob = Caller(app, client, clock, "bob", {Role.TRADER})
    app.config["EXCHANGE_DEV_MODE"] = True
    svc = app.extensions["strongroom.exchange"]
    for who in ("alice", "bob"):
        svc.credit_deposit(who, 10_000 * USDC, f"dep-{who}")
        assert Caller.call(alice if who == "alice" else bob, "POST", f"{EX}/collateral/deposit",
                           {"amount": 10_000 * USDC}).status_code == 200
    for source in ("coinbase", "kraken", "bitstamp"):
        assert admin.call("POST", f"{EX}/operator/quotes",
                          {"underlying": "BTC", "source": source, "price": BTC}).status_code == 200
    assert alice.call("POST", f"{EX}/orders", {"symbol": "BTC-PERP", "id": "s1", "side": "sell",
                                               "qty": 1000, "price": BTC}).status_code == 201
    assert alice.call("POST", f"{EX}/orders", {"symbol": "BTC-PERP", "id": "s2", "side": "sell",
                                               "qty": 500, "price": BTC + 500 * USDC}).status_code == 201
    assert bob.call("POST", f"{EX}/orders", {"symbol": "BTC-PERP", "id": "b1", "side": "buy",
                                             "qty": 1000, "price": BTC}).status_code == 201
    assert bob.call("POST", f"{EX}/orders", {"symbol": "BTC-PERP", "id": "b2", "side": "buy",
                                             "qty": 300, "price": BTC - 100 * USDC}).status_code == 201
    # Bob closes: sells 1,000 into Alice's resting bid at 60,100 (she buys back her short).
    assert alice.call("POST", f"{EX}/orders", {"symbol": "BTC-PERP", "id": "c1", "side": "buy",
                                               "qty": 1000, "price": BTC + 100 * USDC}).status_code == 201
    assert bob.call("POST", f"{EX}/orders", {"symbol": "BTC-PERP", "id": "b3", "side": "sell",
                                             "qty": 1000, "price": BTC + 100 * USDC}).status_code == 201
    return alice, bob


def get(client: FlaskClient, path: str, **query: Any) -> TestResponse:
    qs = urlencode(query)
    return client.get(path + (f"?{qs}" if qs else ""), environ_base={"REMOTE_ADDR": "127.0.0.9"})


def test_market_depth_is_public_and_in_decimal_units(client: FlaskClient, market: Any) -> None:
    r = get(client, f"{MD}/depth", symbol="BTC-PERP", limit=5)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    # 1 contract = 0.001 BTC; ticks of 0.1 USDC: prices with one decimal.
    assert body["asks"] == [["60500.0", "0.500", "1"]]
    assert body["bids"] == [["59900.0", "0.300", "1"]]
    assert body["seq"] > 0


def test_market_trades_candles_and_ticker_come_from_the_trades(client: FlaskClient, market: Any,
                                                               clock: Any) -> None:
    trades = get(client, f"{MD}/trades", symbol="BTC-PERP").get_json()["trades"]
    assert [(t["price"], t["qty"], t["side"]) for t in trades] == [("60000.0", "1.000", "buy"),
                                                                   ("60100.0", "1.000", "sell")]
    assert len({t["trade_id"] for t in trades}) == 2 and all(t["time_ms"] > 0 for t in trades)
    candles = get(client, f"{MD}/candles", symbol="BTC-PERP", interval="1m").get_json()["candles"]
    (bar,) = candles
    assert (bar["open"], bar["high"], bar["low"], bar["close"], bar["volume"], bar["trades"]) == (
        "60000.0", "60100.0", "60000.0", "60100.0", "2.000", 2)
    assert bar["quote_volume"] == "120100.000000" and bar["close_ms"] - bar["open_ms"] == 59_999
    (tick,) = get(client, f"{MD}/ticker", symbol="BTC-PERP").get_json()["tickers"]
    assert tick["last_price"] == "60100.0" and tick["change"] == "100.0" and tick["trades"] == 2
    assert tick["best_bid"] == "59900.0" and tick["best_ask"] == "60500.0"
    clock.advance(2 * 86_400_000)  # the 24 h window moves on
    (tick,) = get(client, f"{MD}/ticker", symbol="BTC-PERP").get_json()["tickers"]
    assert tick["trades"] == 0 and tick["open"] is None and tick["last_price"] == "60100.0"


def test_market_instruments_mark_open_interest_and_insurance(client: FlaskClient, market: Any) -> None:
    rows = {i["symbol"]: i for i in get(client, f"{MD}/instruments").get_json()["instruments"]}
    perp = rows["BTC-PERP"]
    assert perp["mark"] is not None and perp["funding_rate_ppm"] is not None
    assert perp["next_funding_ms"] % perp["funding_interval_ms"] == 0
    assert perp["open_interest"] == "0.000"  # both closed again
    assert rows["BTC-27MAR26"]["funding_rate_ppm"] is None
    marks = get(client, f"{MD}/mark", symbol="BTC-PERP").get_json()["marks"]
    assert marks[0]["index"] == "60000.0"
    oi = get(client, f"{MD}/open-interest", symbol="BTC-PERP").get_json()
    assert oi["open_interest_contracts"] == 0
    ins = get(client, f"{MD}/insurance").get_json()
    assert ins["asset"] == "USDC" and Decimal(ins["balance"]) >= 0


@pytest.mark.parametrize(("path", "query", "status"), [
    ("/depth", {}, 400),
    ("/depth", {"symbol": "NOPE"}, 404),
    ("/depth", {"symbol": "BTC-PERP", "limit": 0}, 400),
    ("/depth", {"symbol": "BTC-PERP", "limit": "ten"}, 400),
    ("/trades", {"symbol": "BTC-PERP", "limit": 1001}, 400),
    ("/liquidations", {"symbol": "BTC-PERP", "limit": 0}, 400),
    ("/candles", {"symbol": "BTC-PERP", "interval": "1m", "limit": "ten"}, 400),
    ("/candles", {"symbol": "NOPE", "interval": "1m"}, 404),
    ("/candles", {"symbol": "BTC-PERP"}, 400),
    ("/candles", {"symbol": "BTC-PERP", "interval": "7m"}, 400),
    ("/candles", {"symbol": "BTC-PERP", "interval": "1m", "start_ms": 5, "end_ms": 4}, 400),
    ("/candles", {"symbol": "BTC-PERP", "interval": "1m", "start_ms": -1}, 400),
    ("/ticker", {"symbol": "NOPE"}, 404),
    ("/open-interest", {}, 400),
])
def test_market_bad_parameters_are_refused_with_4xx(client: FlaskClient, path: str,
                                                    query: dict[str, Any], status: int) -> None:
    r = get(client, MD + path, **query)
    assert r.status_code == status
    assert set(r.get_json()) >= {"code", "error", "message"}


def test_order_by_id_and_history_show_only_the_callers_orders(market: tuple[Caller, Caller]) -> None:
    alice, bob = market
    r = alice.call("GET", f"{EX}/orders/BTC-PERP/s1")
    assert r.status_code == 200, r.get_json()
    o = r.get_json()
    assert (o["order_id"], o["status"], o["filled_qty"], o["avg_price"], o["qty"]) == (
        "s1", "filled", "1.000", "60000.0", "1.000")
    assert bob.call("GET", f"{EX}/orders/BTC-PERP/s1").status_code == 404  # Alice's id
    assert alice.call("GET", f"{EX}/orders/BTC-PERP/zz").status_code == 404
    assert alice.call("GET", f"{EX}/orders/NOPE/s1").status_code == 404
    hist = alice.call("GET", f"{EX}/order-history").get_json()["orders"]
    assert [h["order_id"] for h in hist] == ["s1", "s2", "c1"]
    opened = alice.call("GET", f"{EX}/order-history", status="open").get_json()["orders"]
    assert [h["order_id"] for h in opened] == ["s2"]
    assert alice.call("GET", f"{EX}/order-history", status="gone").status_code == 400
    assert not any(h["order_id"].startswith("b") for h in hist)


def test_trade_history_has_fee_trade_id_and_flags(market: tuple[Caller, Caller]) -> None:
    alice, bob = market
    fills = bob.call("GET", f"{EX}/trade-history").get_json()["trades"]
    assert [(f["order_id"], f["side"], f["liquidity"], f["fee"]) for f in fills] == [
        ("b1", "buy", "taker", "30.000000"), ("b3", "sell", "taker", "30.050000")]
    assert all(f["fee_asset"] == "USDC" and not f["liquidation"] and not f["adl"] for f in fills)
    assert fills[1]["realised_pnl"] == "100.000000"
    theirs = alice.call("GET", f"{EX}/trade-history").get_json()["trades"]
    assert {f["trade_id"] for f in theirs} == {f["trade_id"] for f in fills}
    assert not any(f["order_id"].startswith("b") for f in theirs)


def test_income_and_position_history_keep_closed_positions(market: tuple[Caller, Caller]) -> None:
    _, bob = market
    income = bob.call("GET", f"{EX}/income").get_json()["income"]
    assert [(i["type"], i["amount"]) for i in income] == [
        ("fee", "-30.000000"), ("realised_pnl", "100.000000"), ("fee", "-30.050000")]
    assert bob.call("GET", f"{EX}/income", type="funding").get_json()["income"] == []
    assert bob.call("GET", f"{EX}/income", type="bonus").status_code == 400
    positions = bob.call("GET", f"{EX}/position-history").get_json()
    assert positions["open"] == []
    (closed,) = positions["closed"]
    assert (closed["side"], closed["realised_pnl"], closed["status"]) == ("long", "100.000000", "closed")


def test_private_history_needs_a_signature(client: FlaskClient) -> None:
    for path in ("/order-history", "/trade-history", "/income", "/position-history",
                 "/orders/BTC-PERP/s1"):
        assert get(client, EX + path).status_code == 401


def test_fills_carry_nanoseconds_also_when_an_amend_crosses(
        market: tuple[Caller, Caller], clock: Any) -> None:
    alice, bob = market
    assert alice.call("POST", f"{EX}/orders", {"symbol": "BTC-PERP", "id": "x1", "side": "sell",
                                               "qty": 100, "price": BTC + 200 * USDC}).status_code == 201
    r = bob.call("PATCH", f"{EX}/orders/BTC-PERP/b2", {"price": BTC + 200 * USDC, "qty": 100})
    assert r.status_code == 200, r.get_json()
    fills = bob.call("GET", f"{EX}/fills").get_json()["fills"]
    crossed = [f for f in fills if f["order_id"] == "b2"]
    assert crossed and all(f["ts"] % 1_000_000 == 0 and f["ts"] // 1_000_000 >= clock.now_ms - 10
                           for f in crossed)
    assert all(f["ts"] > 10**15 for f in fills)  # every fill in nanoseconds


def test_market_public_endpoints_are_rate_limited_per_client_ip(
        database_url: str, clock: Any, keystore: Any, tmp_path: Any) -> None:
    from exchange.instruments import DEFAULT_CONFIG
    from strongroom.app import create_app
    from strongroom.settings import Settings

    limited = create_app({"TESTING": True, "CLOCK": clock, "KEYSTORE": keystore,
                          "EXCHANGE_INSTRUMENTS": DEFAULT_CONFIG, "RATELIMIT_PER_IP": "5 per minute"},
                         settings=Settings(data_dir=tmp_path / "data", database_url=database_url))
    try:
        client = limited.test_client()
        statuses = [get(client, f"{MD}/trades", symbol="BTC-PERP").status_code for _ in range(6)]
        assert statuses == [200] * 5 + [429]
        refused = get(client, f"{MD}/trades", symbol="BTC-PERP")
        assert refused.status_code == 429 and refused.get_json()["code"] == 9029
        assert "Retry-After" in refused.headers
        other = client.get(f"{MD}/trades?symbol=BTC-PERP", environ_base={"REMOTE_ADDR": "192.0.2.8"})
        assert other.status_code == 200  # another client's budget is its own
    finally:
        limited.extensions["strongroom.engine"].dispose()

