"""Every state-changing exchange endpoint in shard mode: built as embedded, decided in stream order.

Cancel, amend, cancel-all, collateral withdrawal, leverage, TP/SL, market halt and
dead man's switch go through the shard's command stream and are answered by this
process's replica; KYC caps are checked by the shard machine with the limits the
gateway attached, so a replay of the stream refuses the same orders.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from shard_api_helpers import (
    BASE,
    BTC,
    USDC,
    Trader,
    fund,
    gateway,
    mark_btc,
    stream_bodies,
)
from werkzeug.test import TestResponse

from exchange.stream.cluster import LocalCluster
from exchange.stream.shard.machine import ShardMachine
from exchange.stream.shard.wire import command_decoder
from policies.roles import Role

App = tuple[Flask, str, Trader]


def refused(r: TestResponse, status: int, code: int) -> dict[str, Any]:
    body: dict[str, Any] = r.get_json()
    assert (r.status_code, body.get("code")) == (status, code), body
    return body


def test_shard_api_cancel_amend_cancel_all_answer_like_embedded(shard_api: App, clock: Any) -> None:
    app, shard, _ = shard_api
    alice, mallory = Trader(app, clock, "alice"), Trader(app, clock, "mallory")
    fund(app, shard, "alice", 10_000 * USDC, clock.now_ms)
    for oid in ("a", "b", "c"):
        assert alice.order(oid, "buy", 2, BTC - 100_000).status_code == 201
    # Ids are scoped per user: mallory cannot name alice's order.
    refused(mallory.call("DELETE", f"{BASE}/orders/BTC-PERP/a"), 404, 3001)
    r = alice.call("DELETE", f"{BASE}/orders/BTC-PERP/a")
    assert r.status_code == 200, r.get_json()
    assert [(e["type"], e["id"], e["qty"]) for e in r.get_json()["events"]] == [("cancelled", "a", 2)]
    # A retried cancel (same command id `cx.<order id>`) is stored once and answered the same.
    again = alice.call("DELETE", f"{BASE}/orders/BTC-PERP/a")
    assert (again.status_code, again.get_json()) == (200, r.get_json())
    r = alice.call("PATCH", f"{BASE}/orders/BTC-PERP/b", {"qty": 5})
    assert r.status_code == 200, r.get_json()
    assert [(e["type"], e["id"]) for e in r.get_json()["events"]] == [("amended", "b")]
    refused(alice.call("PATCH", f"{BASE}/orders/BTC-PERP/zz", {"qty": 5}), 404, 3001)
    refused(alice.call("PATCH", f"{BASE}/orders/NOPE-PERP/b", {"qty": 5}), 404, 2002)
    orders = alice.call("GET", f"{BASE}/orders").get_json()["orders"]
    assert sorted((o["id"], o["open_qty"]) for o in orders) == [("b", 5), ("c", 2)]
    r = alice.call("DELETE", f"{BASE}/orders/BTC-PERP")
    assert r.status_code == 200, r.get_json()
    assert sorted(e["id"] for e in r.get_json()["events"] if e["type"] == "cancelled") == ["b", "c"]
    assert alice.call("GET", f"{BASE}/orders").get_json()["orders"] == []
    summary = alice.call("GET", f"{BASE}/account").get_json()
    assert summary["used_margin"] == 0 and summary["free_margin"] == 10_000 * USDC


def test_shard_api_withdraw_leverage_tpsl_decided_by_the_shard(shard_api: App, clock: Any) -> None:
    app, shard, _ = shard_api
    alice, bob = Trader(app, clock, "alice"), Trader(app, clock, "bob")
    fund(app, shard, "alice", 1_000 * USDC, clock.now_ms)
    fund(app, shard, "bob", 10_000 * USDC, clock.now_ms)
    r = alice.call("POST", f"{BASE}/collateral/withdraw", {"amount": 400 * USDC})
    assert r.status_code == 200 and r.get_json()["collateral"] == 600 * USDC, r.get_json()
    body = refused(alice.call("POST", f"{BASE}/collateral/withdraw", {"amount": 601 * USDC}), 422, 2007)
    assert body["error"] == "insufficient_free_collateral"
    r = alice.call("POST", f"{BASE}/positions/BTC-PERP/leverage", {"leverage": 5})
    assert r.get_json() == {"symbol": "BTC-PERP", "leverage": 5, "margin_mode": "cross"}, r.get_json()
    refused(alice.call("POST", f"{BASE}/positions/BTC-PERP/leverage", {"leverage": 0}), 400, 2013)
    assert bob.order("ask", "sell", 3).status_code == 201
    assert alice.order("bid", "buy", 3).status_code == 201
    r = alice.call("POST", f"{BASE}/positions/BTC-PERP/tpsl",
                   {"take_profit": BTC + 10_000_000, "stop_loss": BTC - 10_000_000})
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"symbol": "BTC-PERP", "take_profit": BTC + 10_000_000,
                            "stop_loss": BTC - 10_000_000}
    # Collateral backing the position cannot leave.
    refused(alice.call("POST", f"{BASE}/collateral/withdraw", {"amount": 600 * USDC}), 422, 2007)
    assert alice.call("GET", f"{BASE}/positions").get_json()["positions"][0]["size"] == 3


def test_shard_api_kyc_caps_refused_in_stream_order_and_on_replay(
        shard_api: App, clock: Any, nats_cluster: LocalCluster) -> None:
    app, shard, _ = shard_api
    carol = Trader(app, clock, "carol", tier=1)  # KYC tier 1: 25,000 USD notional, 3x leverage
    dave = Trader(app, clock, "dave", tier=1)
    fund(app, shard, "carol", 5_000 * USDC, clock.now_ms)
    fund(app, shard, "dave", 100_000 * USDC, clock.now_ms)
    body = refused(carol.order("x", "buy", 300), 422, 2033)  # 18,000 USD on 5,000: over 3x
    assert "3x" in body["message"] and "KYC tier 1" in body["message"]
    assert carol.order("y", "buy", 250).status_code == 201  # 15,000 USD
    refused(dave.order("big", "buy", 500), 422, 2032)  # 30,000 USD > 25,000 USD
    assert dave.order("ok", "buy", 400).status_code == 201  # 24,000 USD
    refused(dave.call("PATCH", f"{BASE}/orders/BTC-PERP/ok", {"qty": 450}), 422, 2032)
    # The limits travel in the stream: a replay with no database refuses the same commands.
    bodies = stream_bodies(nats_cluster.urls, shard)
    replay = ShardMachine(gateway(app).configs[shard], shard)
    codes = [replay.apply(seq, data).code for seq, data in enumerate(bodies, 1)]
    users = [command_decoder.decode(data).user for data in bodies]
    assert [(u, c) for u, c in zip(users, codes, strict=True) if u is not None] == [
        ("carol", 2033), ("carol", 0), ("dave", 2032), ("dave", 0), ("dave", 2032)]
    assert replay.state_hash() == gateway(app).replicas[shard].machine.state_hash()


def test_shard_api_halted_market_refuses_orders_then_reopens(
        shard_api: App, clock: Any, nats_cluster: LocalCluster) -> None:
    from tests.custody.access.helpers import make_user

    app, shard, _ = shard_api
    admin = make_user(app, app.test_client(), clock, "opsadmin", {Role.ADMIN})
    ops = Trader(app, clock, "ops2", tier=0, roles=frozenset({Role.ADMIN}))
    mark_btc(ops)  # each MFA code moves the fake clock 30 s: past the index's staleness
    alice = Trader(app, clock, "alice")
    fund(app, shard, "alice", 10_000 * USDC, clock.now_ms)
    assert alice.order("rest", "buy", 1, BTC - 100_000).status_code == 201
    r = admin.post(f"{BASE}/admin/markets/BTC-PERP/status", json={"mode": "halted",
                                                                  "reason": "incident 7"}, mfa=True)
    assert r.status_code == 200 and (r.json["mode"], r.json["reason"]) == ("halted", "incident 7"), r.json
    refused(alice.order("new", "buy", 1, BTC - 100_000), 409, 2021)
    refused(alice.call("DELETE", f"{BASE}/orders/BTC-PERP/rest"), 409, 2021)  # the book is frozen
    r = admin.get(f"{BASE}/admin/markets")
    assert {m["symbol"]: m["mode"] for m in r.json["markets"]}["BTC-PERP"] == "halted", r.json
    r = admin.post(f"{BASE}/admin/markets/BTC-PERP/status", json={"mode": "cancel_only"}, mfa=True)
    assert r.status_code == 200 and r.json["mode"] == "cancel_only", r.json
    mark_btc(ops)
    refused(alice.order("new", "buy", 1, BTC - 100_000), 409, 2022)
    assert alice.call("DELETE", f"{BASE}/orders/BTC-PERP/rest").status_code == 200
    r = admin.post(f"{BASE}/admin/markets/BTC-PERP/status", json={"mode": "open"}, mfa=True)
    assert r.status_code == 200 and r.json["mode"] == "open", r.json
    mark_btc(ops)
    r = alice.order("new", "buy", 1, BTC - 100_000)
    assert r.status_code == 201, r.get_json()
    # A bad value is refused before anything is appended.
    appended = gateway(app).applied_seq(shard)
    r = admin.post(f"{BASE}/admin/markets/BTC-PERP/breaker", json={"max_move_bps": 100, "window_ms": 0},
                   mfa=True)
    assert (r.status_code, r.json["code"]) == (400, 2023), r.json
    assert len(stream_bodies(nats_cluster.urls, shard)) == appended


def test_shard_api_deadman_cancels_in_stream_order_at_the_shard_clock(
        shard_api: App, clock: Any) -> None:
    app, shard, ops = shard_api
    alice = Trader(app, clock, "alice")
    fund(app, shard, "alice", 10_000 * USDC, clock.now_ms)
    assert alice.order("rest", "buy", 1, BTC - 100_000).status_code == 201
    r = alice.call("POST", f"{BASE}/deadman", {"timeout_ms": 60_000})
    assert r.status_code == 200, r.get_json()
    deadline = r.get_json()["deadline_ms"]
    assert deadline >= clock.now_ms + 60_000 - 10
    clock.advance(59_000)
    mark_btc(ops)  # fresh quotes (the index goes stale after 10 s), still before the deadline
    assert alice.order("early", "buy", 1, BTC - 100_000).status_code == 201  # before the deadline
    clock.advance(2_000)
    # The next command at or past the deadline (here the index quotes) fires the switch
    # first, in stream order, on every replica.
    mark_btc(ops)
    assert alice.call("GET", f"{BASE}/orders").get_json()["orders"] == []
    assert alice.order("late", "buy", 1, BTC - 100_000).status_code == 201
    assert [o["id"] for o in alice.call("GET", f"{BASE}/orders").get_json()["orders"]] == ["late"]


def test_shard_api_collateral_deposit_reserved_in_ledger_then_credited_in_stream_order(
        shard_api: App, clock: Any, nats_cluster: LocalCluster) -> None:
    from sqlalchemy import select

    from custody.ledger.models import LedgerTransfer

    app, shard, _ = shard_api
    alice = Trader(app, clock, "alice")
    app.extensions["strongroom.exchange"].credit_deposit("alice", 500 * USDC, "dep-alice")
    before = len(stream_bodies(nats_cluster.urls, shard))
    body = refused(alice.call("POST", f"{BASE}/collateral/deposit", {"amount": 501 * USDC}), 422, 2007)
    assert body["message"] == f"amount was {501 * USDC}, more than the spot balance available", body
    assert len(stream_bodies(nats_cluster.urls, shard)) == before  # refused by the ledger: nothing appended
    r = alice.call("POST", f"{BASE}/collateral/deposit", {"amount": 300 * USDC})
    assert r.status_code == 200 and r.get_json()["collateral"] == 300 * USDC, r.get_json()
    bodies = stream_bodies(nats_cluster.urls, shard)
    funded = command_decoder.decode(bodies[-1]).cmd
    assert type(funded).__name__ == "FundedDeposit" and funded.amount == 300 * USDC  # type: ignore[union-attr]
    # The spot side is a pending ledger transfer under the command's reference, posted by the
    # shard settlement when it writes this command's result (kind "post", pending id = ref).
    sessions = app.extensions["strongroom.sessions"]
    with sessions() as session:
        held = session.scalars(select(LedgerTransfer).where(
            LedgerTransfer.id == funded.ref)).one_or_none()  # type: ignore[union-attr]
    assert held is not None and int(held.amount) == 300 * USDC
    result = gateway(app).replicas[shard].results[len(bodies)]
    assert [(p[1], p[5]) for p in result.postings] == [("post", funded.ref)]  # type: ignore[union-attr]
    # The spot balance left cannot be deposited twice.
    refused(alice.call("POST", f"{BASE}/collateral/deposit", {"amount": 201 * USDC}), 422, 2007)
    assert alice.call("POST", f"{BASE}/collateral/deposit", {"amount": 200 * USDC}).status_code == 200


def test_shard_api_cancel_on_disconnect_cancels_in_every_book_except_a_halted_one(
        shard_api: App, clock: Any) -> None:
    from shard_api_helpers import seed

    from exchange.api.controls import cancel_everywhere_in_shards
    from exchange.api.runner import ShardRunner
    from exchange.commands import SetMark, SetMarketStatus

    app, shard, _ = shard_api
    alice = Trader(app, clock, "alice")
    fund(app, shard, "alice", 50_000 * USDC, clock.now_ms)
    seed(app, shard, SetMark("ETH-PERP", 3_000 * USDC, 3_000 * USDC), clock.now_ms)
    assert alice.order("b1", "buy", 1, BTC - 100_000).status_code == 201
    assert alice.order("b2", "buy", 1, BTC - 200_000, margin_mode="isolated").status_code in (201, 422)
    r = alice.order("e1", "buy", 1, 2_990 * USDC, symbol="ETH-PERP")
    assert r.status_code == 201, r.get_json()
    seed(app, shard, SetMarketStatus("ETH-PERP", "halted"), clock.now_ms)
    cancelled = cancel_everywhere_in_shards(ShardRunner(gateway(app)), "alice")
    left = alice.call("GET", f"{BASE}/orders").get_json()["orders"]
    assert [(o["symbol"], o["id"]) for o in left] == [("ETH-PERP", "e1")]  # the halt's rule wins
    assert cancelled >= 1
