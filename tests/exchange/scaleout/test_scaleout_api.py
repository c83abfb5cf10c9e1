"""REST order entry in scale-out mode: signed POST -> margin reserved -> command stream -> events."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from scaleout_helpers import IM_PPM, Stack, fund, margin_ledger, wait_for
from werkzeug.test import TestResponse

from exchange.instruments import DEFAULT_CONFIG
from exchange.stream.cluster import LocalCluster
from exchange.stream.margin import MarginLedger
from policies.api_key import Scope
from policies.request_signing import sign_request
from policies.roles import Role

BASE = "/api/v1/exchange"


class Trader:
    """A signed API caller."""

    def __init__(self, app: Flask, clock: Any, name: str) -> None:
        _, key = app.extensions["strongroom.access"].users.create_user(
            name, frozenset({Role.TRADER}), kyc_tier=2, key_scopes=frozenset(Scope))
        self.client, self.clock = app.test_client(), clock
        self.key_id, self.secret = key.credentials.key_id, key.credentials.secret

    def call(self, method: str, path: str, body: Any = None) -> TestResponse:
        raw = b"" if body is None else json.dumps(body).encode()
        self.clock.advance(1)
        headers = sign_request(key_id=self.key_id, secret=self.secret, timestamp_ms=self.clock.now_ms,
                               method=method, path=path, query="", body=raw)
        return self.client.open(path, method=method, data=raw, headers=headers,
                                content_type="application/json" if body is not None else None,
                                environ_base={"REMOTE_ADDR": "127.0.0.1"})


@pytest.fixture
def scaleout_app(nats_cluster: LocalCluster, postgres_url: str, clock: Any, keystore: Any,
                 tmp_path: Path) -> Iterator[tuple[Flask, Stack, str, MarginLedger]]:
    from strongroom.app import create_app
    from strongroom.settings import Settings

    # A market of its own: the session's cluster keeps every test's streams.
    symbol = "S" + uuid.uuid4().hex[:8].upper() + "-PERP"
    instruments = tmp_path / "instruments.toml"
    instruments.write_text(DEFAULT_CONFIG.read_text().replace("BTC-PERP", symbol))
    margin, engine = margin_ledger(postgres_url)
    # The shipped BTC-PERP has tick 500_000; this stack's engine uses tick 5.
    stack = Stack(nats_cluster.urls, symbol, margin, tick=5).start()
    app = create_app({"TESTING": True, "CLOCK": clock, "KEYSTORE": keystore,
                      "EXCHANGE_INSTRUMENTS": instruments, "EXCHANGE_NATS_URLS": nats_cluster.urls,
                      "EXCHANGE_SCALEOUT_IM_PPM": IM_PPM, "EXCHANGE_SCALEOUT_WAIT_S": 30.0,
                      "EXCHANGE_SCALEOUT_MARKETS": [symbol]},
                     settings=Settings(data_dir=tmp_path / "data", database_url=postgres_url))
    try:
        yield app, stack, symbol, margin
    finally:
        app.extensions["strongroom.exchange.gateway"].close()
        stack.close()
        app.extensions["strongroom.engine"].dispose()
        engine.dispose()


def test_rest_order_scaleout_mode_goes_through_stream_and_answers_events(
        scaleout_app: tuple[Flask, Stack, str, MarginLedger], clock: Any) -> None:
    app, stack, symbol, margin = scaleout_app
    alice, bob = Trader(app, clock, "alice"), Trader(app, clock, "bob")
    fund(margin, "alice", 1_000)
    fund(margin, "bob", 1_000)
    r = bob.call("POST", f"{BASE}/orders", {"symbol": symbol, "id": "ask-1", "side": "sell",
                                            "qty": 4, "price": 100})
    assert r.status_code == 201, r.get_json()
    assert [e["type"] for e in r.get_json()["events"]] == ["accepted"]
    assert r.get_json()["events"][0]["id"] == "ask-1"  # the client's id, not the scoped one
    r = alice.call("POST", f"{BASE}/orders", {"symbol": symbol, "id": "bid-1", "side": "buy",
                                              "qty": 4, "price": 100})
    assert r.status_code == 201, r.get_json()
    trade = [e for e in r.get_json()["events"] if e["type"] == "trade"]
    assert trade == [{"type": "trade", "seq": trade[0]["seq"], "id": "bid-1", "side": "buy",
                      "price": 100, "qty": 4, "liquidity": "taker", "ts": trade[0]["ts"]}]
    # Hot reads from the gateway's event-fed state.
    r = alice.call("GET", f"{BASE}/positions")
    assert r.get_json() == {"positions": [{"symbol": symbol, "size": 4, "entry_cost": 400,
                                           "entry_price": 100}]}
    bob.call("POST", f"{BASE}/orders", {"symbol": symbol, "id": "ask-2", "side": "sell",
                                        "qty": 2, "price": 110})
    r = bob.call("GET", f"{BASE}/orders")
    assert r.get_json()["orders"] == [{"symbol": symbol, "id": "ask-2", "side": "sell", "price": 110,
                                       "open_qty": 2, "account": "bob", "status": "resting"}]
    r = alice.call("GET", f"{BASE}/depth/{symbol}")
    assert r.status_code == 200 and r.get_json()["asks"] == [[110, 2]]
    assert len(stack.bodies()) == 3


def test_rest_order_scaleout_mode_without_margin_is_refused_and_never_appended(
        scaleout_app: tuple[Flask, Stack, str, MarginLedger], clock: Any) -> None:
    app, stack, symbol, margin = scaleout_app
    alice = Trader(app, clock, "alice")
    fund(margin, "alice", 99)
    r = alice.call("POST", f"{BASE}/orders", {"symbol": symbol, "id": "big", "side": "buy",
                                              "qty": 10, "price": 100})  # needs 100
    assert r.status_code == 422
    assert r.get_json()["error"] == "insufficient_margin"
    assert margin.free("alice") == 99
    assert stack.bodies() == []
    # Unsupported order kinds are refused before anything is reserved or appended.
    r = alice.call("POST", f"{BASE}/orders", {"symbol": symbol, "id": "mkt", "side": "buy",
                                              "qty": 1, "type": "market"})
    assert r.status_code == 400, r.get_json()
    r = alice.call("POST", f"{BASE}/orders", {"symbol": symbol, "id": "iso", "side": "buy",
                                              "qty": 1, "price": 100, "margin_mode": "isolated"})
    assert r.status_code == 400, r.get_json()
    assert margin.free("alice") == 99
    assert stack.bodies() == []
    # A retry of a resting order (lost response) is answered from the stream, stored once.
    order = {"symbol": symbol, "id": "small", "side": "buy", "qty": 5, "price": 100}
    first, again = alice.call("POST", f"{BASE}/orders", order), alice.call("POST", f"{BASE}/orders", order)
    assert first.status_code == again.status_code == 201
    assert first.get_json() == again.get_json()
    assert len(stack.bodies()) == 1
    assert margin.free("alice") == 49


def test_rest_cancel_scaleout_mode_cancels_own_order_and_refuses_others(
        scaleout_app: tuple[Flask, Stack, str, MarginLedger], clock: Any) -> None:
    app, stack, symbol, margin = scaleout_app
    alice, mallory = Trader(app, clock, "alice"), Trader(app, clock, "mallory")
    fund(margin, "alice", 1_000)
    r = alice.call("POST", f"{BASE}/orders", {"symbol": symbol, "id": "rest-1", "side": "buy",
                                              "qty": 3, "price": 100})
    assert r.status_code == 201, r.get_json()
    assert margin.free("alice") == 970
    # Another trader naming alice's client id cancels nothing: ids are scoped per user.
    r = mallory.call("DELETE", f"{BASE}/orders/{symbol}/rest-1")
    assert r.status_code == 404 and r.get_json()["error"] == "unknown_order", r.get_json()
    r = alice.call("DELETE", f"{BASE}/orders/{symbol}/rest-1")
    assert r.status_code == 200, r.get_json()
    assert [(e["type"], e["id"], e["qty"]) for e in r.get_json()["events"]] == [
        ("cancelled", "rest-1", 3)]
    assert alice.call("GET", f"{BASE}/orders").get_json()["orders"] == []
    wait_for(lambda: stack.written() == 3, "the margin worker")
    assert margin.free("alice") == 1_000  # the hold is released
    # A cancel of an order that never existed is refused by the book; the margin worker
    # takes the refusal in its stride (it has no hold to release) and keeps going.
    r = mallory.call("DELETE", f"{BASE}/orders/{symbol}/ghost")
    assert r.status_code == 404, r.get_json()
    r = alice.call("POST", f"{BASE}/orders", {"symbol": symbol, "id": "rest-2", "side": "buy",
                                              "qty": 1, "price": 100})
    assert r.status_code == 201, r.get_json()
    wait_for(lambda: stack.written() == 5, "the margin worker after a refused cancel")
    assert margin.free("alice") == 990
    assert not stack.margin.done()


def test_rest_unrouted_state_change_scaleout_mode_is_refused_not_pretended(
        scaleout_app: tuple[Flask, Stack, str, MarginLedger], clock: Any) -> None:
    app, _, symbol, _ = scaleout_app
    alice = Trader(app, clock, "alice")
    for method, path, body in (("PATCH", f"{BASE}/orders/{symbol}/x", {"qty": 1}),
                               ("DELETE", f"{BASE}/orders/{symbol}", None),
                               ("POST", f"{BASE}/collateral/deposit", {"amount": 5})):
        r = alice.call(method, path, body)
        assert (r.status_code, r.get_json()["code"]) == (501, 3105), (path, r.get_json())
    assert alice.call("GET", f"{BASE}/positions").status_code == 200



def _admin(app: Flask, clock: Any) -> Any:
    from tests.custody.access.helpers import make_user

    return make_user(app, app.test_client(), clock, "opsadmin", {Role.ADMIN})


def test_rest_halt_scaleout_mode_refused_at_gateway_and_engine_then_lifted(
        scaleout_app: tuple[Flask, Stack, str, MarginLedger], clock: Any) -> None:
    import asyncio

    from exchange.engine.messages import NewOrder
    from exchange.stream.margin import initial_margin
    from exchange.stream.publisher import CommandPublisher

    app, stack, symbol, margin = scaleout_app
    admin, alice = _admin(app, clock), Trader(app, clock, "alice")
    fund(margin, "alice", 1_000)
    r = alice.call("POST", f"{BASE}/orders", {"symbol": symbol, "id": "rest", "side": "buy",
                                              "qty": 2, "price": 100})
    assert r.status_code == 201, r.get_json()
    r = admin.post(f"{BASE}/admin/markets/{symbol}/status", json={"mode": "halted",
                                                                  "reason": "incident 7"}, mfa=True)
    assert r.status_code == 200 and (r.json["mode"], r.json["reason"]) == ("halted", "incident 7"), r.json
    appended = len(stack.bodies())
    # The gateway refuses at once: nothing reserved, nothing appended.
    r = alice.call("POST", f"{BASE}/orders", {"symbol": symbol, "id": "late", "side": "buy",
                                              "qty": 1, "price": 100})
    assert (r.status_code, r.get_json()["code"], r.get_json()["error"]) == (409, 2021, "market_halted")
    r = alice.call("DELETE", f"{BASE}/orders/{symbol}/rest")
    assert (r.status_code, r.get_json()["code"]) == (409, 2021)
    assert len(stack.bodies()) == appended
    wait_for(lambda: stack.written() == appended, "the margin worker")
    assert margin.free("alice") == 980
    # A gateway whose view lagged (it reserved and appended after the halt was in the stream):
    # the engine refuses the order in stream order and the margin worker releases its hold.
    oid = "alice-scope:stale"
    assert margin.reserve("alice", oid, initial_margin(100, 3, IM_PPM), symbol)
    assert margin.free("alice") == 950

    async def append() -> int:
        return (await CommandPublisher(stack.js, {symbol}).append(
            symbol, oid, NewOrder(id=oid, account="alice", side="buy", qty=3, price=100,
                                  ts=clock.now_ms * 1_000_000))).seq
    seq = asyncio.run_coroutine_threadsafe(append(), stack.loop).result(60)
    wait_for(lambda: stack.written() >= seq, "the margin worker after the engine's refusal")
    assert margin.free("alice") == 980
    gw = app.extensions["strongroom.exchange.gateway"].get()
    wait_for(lambda: gw.book.last_seq.get(symbol, 0) >= seq, "the gateway's fold")
    assert (symbol, oid) not in gw.book.orders
    # Lifting restores trading.
    r = admin.post(f"{BASE}/admin/markets/{symbol}/status", json={"mode": "open"}, mfa=True)
    assert r.status_code == 200 and r.json["mode"] == "open", r.json
    r = alice.call("POST", f"{BASE}/orders", {"symbol": symbol, "id": "late", "side": "buy",
                                              "qty": 1, "price": 100})
    assert r.status_code == 201, r.get_json()
    markets = {m["symbol"]: m["mode"] for m in admin.get(f"{BASE}/admin/markets").json["markets"]}
    assert markets[symbol] == "open"


def test_rest_cancel_only_scaleout_mode_lets_cancels_through_refuses_new_orders(
        scaleout_app: tuple[Flask, Stack, str, MarginLedger], clock: Any) -> None:
    app, stack, symbol, margin = scaleout_app
    admin, alice = _admin(app, clock), Trader(app, clock, "alice")
    fund(margin, "alice", 1_000)
    assert alice.call("POST", f"{BASE}/orders", {"symbol": symbol, "id": "r1", "side": "buy",
                                                 "qty": 2, "price": 100}).status_code == 201
    r = admin.post(f"{BASE}/admin/markets/{symbol}/status", json={"mode": "cancel_only"}, mfa=True)
    assert r.status_code == 200 and r.json["mode"] == "cancel_only", r.json
    r = alice.call("POST", f"{BASE}/orders", {"symbol": symbol, "id": "r2", "side": "buy",
                                              "qty": 1, "price": 100})
    assert (r.status_code, r.get_json()["code"]) == (409, 2022), r.get_json()
    r = alice.call("DELETE", f"{BASE}/orders/{symbol}/r1")
    assert r.status_code == 200, r.get_json()
    assert [e["type"] for e in r.get_json()["events"]] == ["cancelled"]
    wait_for(lambda: stack.written() == len(stack.bodies()), "the margin worker")
    assert margin.free("alice") == 1_000


def test_rest_breaker_scaleout_mode_trips_on_max_move_and_reopens_after_cooldown(
        scaleout_app: tuple[Flask, Stack, str, MarginLedger], clock: Any) -> None:
    app, _, symbol, margin = scaleout_app
    admin = _admin(app, clock)
    alice, bob = Trader(app, clock, "alice"), Trader(app, clock, "bob")
    fund(margin, "alice", 10_000)
    fund(margin, "bob", 10_000)
    r = admin.post(f"{BASE}/admin/markets/{symbol}/breaker",
                   json={"max_move_bps": 500, "window_ms": 600_000, "cooldown_ms": 60_000}, mfa=True)
    assert r.status_code == 200 and r.json["breaker"]["max_move_bps"] == 500, r.json

    def cross(n: int, price: int) -> Any:
        assert bob.call("POST", f"{BASE}/orders", {"symbol": symbol, "id": f"a{n}", "side": "sell",
                                                   "qty": 1, "price": price}).status_code == 201
        return alice.call("POST", f"{BASE}/orders", {"symbol": symbol, "id": f"b{n}", "side": "buy",
                                                     "qty": 1, "price": price})
    assert cross(1, 100).status_code == 201
    r = cross(2, 110)  # 100 -> 110 within the window: 10 % > 5 %: the trade prints, then the halt
    assert r.status_code == 201 and [e["type"] for e in r.get_json()["events"]][-1] == "trade"
    view = {m["symbol"]: m for m in admin.get(f"{BASE}/admin/markets").json["markets"]}[symbol]
    assert (view["mode"], view["reason"]) == ("halted", "circuit_breaker"), view
    r = bob.call("POST", f"{BASE}/orders", {"symbol": symbol, "id": "a3", "side": "sell",
                                            "qty": 1, "price": 110})
    assert (r.status_code, r.get_json()["code"]) == (409, 2021), r.get_json()
    clock.advance(60_000)  # the cooldown ends by the orders' own time
    assert cross(4, 110).status_code == 201


def test_rest_deadman_scaleout_mode_cancels_orders_before_first_command_past_deadline(
        scaleout_app: tuple[Flask, Stack, str, MarginLedger], clock: Any) -> None:
    app, stack, symbol, margin = scaleout_app
    alice, bob = Trader(app, clock, "alice"), Trader(app, clock, "bob")
    fund(margin, "alice", 1_000)
    fund(margin, "bob", 1_000)
    assert alice.call("POST", f"{BASE}/orders", {"symbol": symbol, "id": "mine", "side": "buy",
                                                 "qty": 2, "price": 100}).status_code == 201
    r = alice.call("POST", f"{BASE}/deadman", {"timeout_ms": 5_000})
    assert r.status_code == 200 and r.get_json()["deadline_ms"] == clock.now_ms + 5_000, r.get_json()
    assert r.status_code == 200
    r = alice.call("POST", f"{BASE}/deadman", {"timeout_ms": 10})
    assert (r.status_code, r.get_json()["code"]) == (400, 2023), r.get_json()
    clock.advance(5_000)
    # bob's sell would have hit alice's bid; the switch fired first, in stream order.
    r = bob.call("POST", f"{BASE}/orders", {"symbol": symbol, "id": "hit", "side": "sell",
                                            "qty": 2, "price": 100})
    assert r.status_code == 201 and [e["type"] for e in r.get_json()["events"]] == ["accepted"]
    assert alice.call("GET", f"{BASE}/orders").get_json()["orders"] == []
    wait_for(lambda: stack.written() == len(stack.bodies()), "the margin worker")
    assert margin.free("alice") == 1_000
