"""REST order entry in shard mode: signed POST -> shard command stream -> this process's replica.

Two API apps (two ShardGateways, each with its own replica of the shard) share
one shard stream and one database. The replicas answer without a shard leader:
the machine is deterministic, so a replica's result is the leader's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from shard_api_helpers import (
    BASE,
    BTC,
    USDC,
    Trader,
    close,
    fund,
    gateway,
    mark_btc,
    new_shard,
    shard_app,
    stream_bodies,
    wait_for,
)
from sqlalchemy import event

from exchange.api.blueprint import LIMITS_EXTENSION
from exchange.commands import Place
from exchange.stream.cluster import LocalCluster
from exchange.stream.shard.machine import ShardMachine
from exchange.stream.shard.wire import command_decoder
from policies.roles import Role

Stack = tuple[Flask, Flask, str, Trader]
RETRY_DEADLINE_S = 60.0  # only bounds a hang: a leader election takes a few seconds


@pytest.fixture
def stack(nats_cluster: LocalCluster, postgres_url: str, clock: Any, keystore: Any,
          tmp_path: Path) -> Iterator[Stack]:
    """Two shard-mode API apps on one fresh shard, BTC marked at 60,000 USD."""
    shard = new_shard(nats_cluster.urls)
    one = shard_app(nats_cluster.urls, shard, postgres_url, clock, keystore, tmp_path / "a")
    two = shard_app(nats_cluster.urls, shard, postgres_url, clock, keystore, tmp_path / "b")
    try:
        admin = Trader(one, clock, "ops", tier=0, roles=frozenset({Role.ADMIN}))
        mark_btc(admin)
        yield one, two, shard, admin
    finally:
        close(one)
        close(two)


def _free(app: Flask, who: Trader) -> int:
    r = who.call("GET", f"{BASE}/account", app=app)
    assert r.status_code == 200, r.get_json()
    return int(r.get_json()["free_margin"])


def test_shard_api_signed_order_round_trip_answers_from_replica_and_reads_from_memory(
        stack: Stack, clock: Any) -> None:
    one, two, shard, _ = stack
    alice, bob = Trader(one, clock, "alice"), Trader(one, clock, "bob")
    fund(one, shard, "alice", 10_000 * USDC, clock.now_ms)
    fund(one, shard, "bob", 10_000 * USDC, clock.now_ms)
    r = bob.order("ask-1", "sell", 4)
    assert r.status_code == 201, r.get_json()
    assert [(e["type"], e["id"]) for e in r.get_json()["events"]] == [("accepted", "ask-1")]
    # Through the other app: its replica answers, and has seen bob's order in stream order.
    r = alice.order("bid-1", "buy", 4, app=two)
    assert r.status_code == 201, r.get_json()
    trades = [e for e in r.get_json()["events"] if e["type"] == "trade"]
    assert [(t["id"], t["side"], t["qty"], t["price"], t["liquidity"]) for t in trades] == [
        ("bid-1", "buy", 4, BTC, "taker")]
    # Hot reads from the replica: the same views as the embedded mode.
    r = alice.call("GET", f"{BASE}/positions", app=two)
    assert [(p["symbol"], p["size"], p["entry_price"]) for p in r.get_json()["positions"]] == [
        ("BTC-PERP", 4, BTC)]
    r = alice.call("GET", f"{BASE}/fills", app=two)
    assert [(f["order_id"], f["qty"], f["liquidity"]) for f in r.get_json()["fills"]] == [
        ("bid-1", 4, "taker")]
    bob.order("ask-2", "sell", 2, BTC + 100_000)
    wait_for(lambda: gateway(two).applied_seq(shard) == gateway(one).applied_seq(shard), "app two")
    r = bob.call("GET", f"{BASE}/orders", app=two)
    assert [(o["id"], o["open_qty"], o["status"]) for o in r.get_json()["orders"]] == [
        ("ask-2", 2, "resting")]
    r = alice.call("GET", f"{BASE}/depth/BTC-PERP", app=two)
    assert r.status_code == 200 and r.get_json()["asks"] == [[BTC + 100_000, 2]], r.get_json()
    r = alice.call("GET", f"{BASE}/account", app=two)
    assert r.get_json()["account"] == "alice" and r.get_json()["used_margin"] > 0
    assert r.get_json()["collateral"] < 10_000 * USDC  # the taker fee
    # Both replicas are the same machine at the same sequence.
    with gateway(one).replicas[shard].lock, gateway(two).replicas[shard].lock:
        assert gateway(one).replicas[shard].machine.state_hash() == \
            gateway(two).replicas[shard].machine.state_hash()


def test_shard_api_order_retry_is_stored_once_and_reused_id_is_refused(
        stack: Stack, clock: Any, nats_cluster: LocalCluster) -> None:
    one, two, shard, _ = stack
    alice = Trader(one, clock, "alice")
    fund(one, shard, "alice", 10_000 * USDC, clock.now_ms)
    before = len(stream_bodies(nats_cluster.urls, shard))
    first = alice.order("o-1", "buy", 2, BTC - 100_000)
    again = alice.order("o-1", "buy", 2, BTC - 100_000, app=two)  # a lost response, retried
    assert first.status_code == again.status_code == 201, (first.get_json(), again.get_json())
    assert first.get_json() == again.get_json()
    assert len(stream_bodies(nats_cluster.urls, shard)) == before + 1
    # The same id for another order inside the stream's duplicate window: refused, not answered
    # with the first order's events.
    r = alice.order("o-1", "buy", 3, BTC - 100_000)
    assert (r.status_code, r.get_json()["code"]) == (409, 2006), r.get_json()
    assert "another order" in r.get_json()["message"]
    assert len(stream_bodies(nats_cluster.urls, shard)) == before + 1


def test_shard_api_two_gateways_racing_orders_never_exceed_free_margin(
        stack: Stack, clock: Any, nats_cluster: LocalCluster) -> None:
    one, two, shard, _ = stack
    for app in (one, two):  # no KYC caps here (they would bind first): margin alone decides
        app.extensions.pop(LIMITS_EXTENSION)
    alice = Trader(one, clock, "alice")
    fund(one, shard, "alice", 1_000 * USDC, clock.now_ms)
    # Each resting bid of 100 contracts needs a few hundred USD of margin: 1,000 USD covers
    # only some of the 12 sent at once through two gateways.
    results: list[tuple[str, int, Any]] = []
    lock = threading.Lock()

    def send(app: Flask, oid: str) -> None:
        r = alice.order(oid, "buy", 100, BTC - 1_000_000, app=app)
        with lock:
            results.append((oid, r.status_code, r.get_json()))

    threads = [threading.Thread(target=send, args=(one if i % 2 else two, f"race-{i}"))
               for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    codes = sorted(status for _, status, _ in results)
    assert len(results) == 12 and set(codes) == {201, 422}, results
    assert all(body["code"] == 2001 for _, status, body in results if status == 422)
    wait_for(lambda: gateway(two).applied_seq(shard) == gateway(one).applied_seq(shard), "app two")
    for app in (one, two):
        assert _free(app, alice) >= 0
        orders = alice.call("GET", f"{BASE}/orders", app=app).get_json()["orders"]
        assert sorted(o["id"] for o in orders) == sorted(oid for oid, s, _ in results if s == 201)
    # The stream decided: a single replay of it gives the same answers, in stream order.
    replay = ShardMachine(gateway(one).configs[shard], shard)
    replies = [replay.apply(seq, body) for seq, body in
               enumerate(stream_bodies(nats_cluster.urls, shard), 1)]
    assert sum(1 for r in replies if r.code == 2001) == codes.count(422)
    assert replay.state_hash() == gateway(one).replicas[shard].machine.state_hash()


def test_shard_api_order_path_runs_no_ledger_or_exchange_sql(stack: Stack, clock: Any) -> None:
    one, _, shard, _ = stack
    alice = Trader(one, clock, "alice")
    fund(one, shard, "alice", 10_000 * USDC, clock.now_ms)
    alice.order("warm", "buy", 1, BTC - 100_000)  # the gateway connects on first use
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = one.extensions["strongroom.engine"]
    event.listen(engine, "before_cursor_execute", count)
    try:
        r = alice.order("o-1", "buy", 2, BTC - 100_000)
        placed = list(statements)
        cancelled = alice.call("DELETE", f"{BASE}/orders/BTC-PERP/o-1")
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert r.status_code == 201 and cancelled.status_code == 200, (r.get_json(), cancelled.get_json())
    # No ledger transfer, balance or hold, no exchange table, on the order or the cancel; and the
    # signed request's own path (key, nonce, KYC limits) is served from memory and NATS in shard
    # mode (strongroom/auth_fast.py): no SQL at all once the process has seen the caller.
    touched = [s for s in statements if "ledger" in s.lower() or "exchange" in s.lower()]
    assert touched == [], touched
    assert placed == [] and statements == [], statements


def test_shard_api_refused_order_retried_after_funding_is_decided_afresh_once(
        stack: Stack, clock: Any, nats_cluster: LocalCluster) -> None:
    one, two, shard, _ = stack
    for app in (one, two):
        app.extensions.pop(LIMITS_EXTENSION)
    alice = Trader(one, clock, "alice")
    fund(one, shard, "alice", 10 * USDC, clock.now_ms)
    order = ("big", "buy", 100, BTC - 1_000_000)
    r = alice.order(*order)
    assert (r.status_code, r.get_json()["code"]) == (422, 2001), r.get_json()
    before = len(stream_bodies(nats_cluster.urls, shard))
    fund(one, shard, "alice", 10_000 * USDC, clock.now_ms)
    # The refused copy changed nothing: the same id goes in again (under "<id>::<refused seq>").
    first = alice.order(*order, app=two)
    assert first.status_code == 201, first.get_json()
    again = alice.order(*order)  # and a lost response's retry of that is stored once
    assert (again.status_code, again.get_json()) == (201, first.get_json())
    assert len(stream_bodies(nats_cluster.urls, shard)) == before + 2  # the deposit and the order
    orders = alice.call("GET", f"{BASE}/orders").get_json()["orders"]
    assert [(o["id"], o["open_qty"]) for o in orders] == [("big", 100)]


def test_shard_api_nats_node_lost_orders_retried_with_same_id_are_stored_once(
        stack: Stack, clock: Any, nats_cluster: LocalCluster) -> None:
    one, two, shard, _ = stack
    for app in (one, two):
        app.extensions.pop(LIMITS_EXTENSION)
    alice = Trader(one, clock, "alice")
    fund(one, shard, "alice", 100_000 * USDC, clock.now_ms)
    victim = nats_cluster.nodes[0]
    ids = [f"n-{i}" for i in range(30)]
    unavailable = 0
    try:
        for i, oid in enumerate(ids):
            if i == 10:
                nats_cluster.kill_node(victim)
            deadline = time.monotonic() + RETRY_DEADLINE_S
            while True:  # a client retrying 503 with the same id, as documented
                r = alice.order(oid, "buy", 1, BTC - 100_000 * (1 + i % 10), app=(one, two)[i % 2])
                if r.status_code != 503 or time.monotonic() > deadline:
                    break
                unavailable += 1
                time.sleep(0.2)
            assert r.status_code == 201, (oid, r.get_json())
    finally:
        if victim.process is None:
            nats_cluster.start_node(victim)
    bodies = stream_bodies(nats_cluster.urls, shard)
    placed = [cmd.cmd.order.id for cmd in map(command_decoder.decode, bodies)
              if type(cmd.cmd) is Place]
    scope = placed[0].split(":")[0] + ":"
    assert sorted(placed) == sorted(scope + oid for oid in ids)  # each once, retries deduplicated
    wait_for(lambda: gateway(one).applied_seq(shard) == gateway(two).applied_seq(shard) == len(bodies),
             "both replicas")
    with gateway(one).replicas[shard].lock, gateway(two).replicas[shard].lock:
        assert gateway(one).replicas[shard].machine.state_hash() == \
            gateway(two).replicas[shard].machine.state_hash()
    orders = alice.call("GET", f"{BASE}/orders", app=two).get_json()["orders"]
    assert sorted(o["id"] for o in orders) == sorted(ids), unavailable
