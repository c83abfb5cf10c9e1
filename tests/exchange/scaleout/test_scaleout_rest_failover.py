"""Failover on the REST path: kill -9 the leading engine while signed orders flow through two gateways."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from pathlib import Path
from typing import Any

import msgspec
from flask import Flask
from scaleout_helpers import (
    IM_PPM,
    Stack,
    command_bodies,
    event_batches,
    events_by_command,
    fund,
    last_published,
    lease_holder,
    margin_ledger,
    ready_topology,
    replay_single_process,
    spawn_engine,
    wait_for,
    wait_published,
)
from test_scaleout_api import BASE, Trader

from exchange.engine.instrument import Instrument
from exchange.engine.orderbook import OrderBook
from exchange.engine.replay import parse_line
from exchange.instruments import DEFAULT_CONFIG
from exchange.stream.cluster import LocalCluster
from exchange.stream.margin import PPM, Position, initial_margin

ORDERS_PER_TRADER = 20
KILL_AFTER = 25  # commands published before the leader is killed
FUNDS = 1_000_000


def _app(urls: list[str], postgres_url: str, clock: Any, keystore: Any, data: Path,
         instruments: Path, symbol: str) -> Flask:
    from strongroom.app import create_app
    from strongroom.settings import Settings

    return create_app({"TESTING": True, "CLOCK": clock, "KEYSTORE": keystore,
                       "EXCHANGE_INSTRUMENTS": instruments, "EXCHANGE_NATS_URLS": urls,
                       "EXCHANGE_SCALEOUT_IM_PPM": IM_PPM, "EXCHANGE_SCALEOUT_WAIT_S": 60.0,
                       "EXCHANGE_SCALEOUT_MARKETS": [symbol]},
                      settings=Settings(data_dir=data, database_url=postgres_url))


def test_rest_orders_through_two_gateways_leader_killed_standby_resumes_holds_match(
        nats_cluster: LocalCluster, postgres_url: str, clock: Any, keystore: Any,
        tmp_path: Path) -> None:
    symbol = "F" + uuid.uuid4().hex[:8].upper() + "-PERP"
    instruments = tmp_path / "instruments.toml"
    instruments.write_text(DEFAULT_CONFIG.read_text().replace("BTC-PERP", symbol))
    margin, db = margin_ledger(postgres_url)
    # The margin worker in-process; the engines as processes (to kill -9 the leader).
    stack = Stack(nats_cluster.urls, symbol, margin, tick=1, engine=False).start()
    leader = spawn_engine(symbol, "a", nats_cluster.urls, "--snapshot-every", "10")
    standby = None
    apps = [_app(nats_cluster.urls, postgres_url, clock, keystore, tmp_path / f"data{i}",
                 instruments, symbol) for i in (1, 2)]
    try:
        def run(coro: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(coro, stack.loop).result(120)
        run(ready_topology(stack.js, [symbol]))
        assert run(lease_holder(stack.js, symbol, 60.0)) == "a"
        standby = spawn_engine(symbol, "b", nats_cluster.urls, "--snapshot-every", "10")
        traders = [Trader(apps[i // 2], clock, f"trader{i}") for i in range(4)]
        for t in range(4):
            fund(margin, f"trader{t}", FUNDS)
        answers: dict[str, tuple[int, Any]] = {}
        errors: list[BaseException] = []

        def flow(gateway: int) -> None:
            rng = random.Random(gateway)
            try:
                for i in range(ORDERS_PER_TRADER):
                    for who in (2 * gateway, 2 * gateway + 1):
                        cid = f"g{gateway}-{who}-{i}"
                        r = traders[who].call("POST", f"{BASE}/orders", {
                            "symbol": symbol, "id": cid, "side": rng.choice(["buy", "sell"]),
                            "qty": rng.randint(1, 5), "price": 100 + rng.randint(-3, 3)})
                        answers[f"trader{who}/{cid}"] = (r.status_code, r.get_json())
            except BaseException as exc:  # surfaced in the main thread
                errors.append(exc)

        threads = [threading.Thread(target=flow, args=(g,)) for g in (0, 1)]
        for th in threads:
            th.start()
        # Orders keep flowing in while the leader is killed.
        wait_for(lambda: run(last_published(stack.js, symbol)) >= KILL_AFTER, "the first orders")
        assert any(th.is_alive() for th in threads)  # mid-flow
        leader.kill()
        leader.wait()
        for th in threads:
            th.join(600)
            assert not th.is_alive()
        assert errors == []
        total = 4 * ORDERS_PER_TRADER
        assert len(answers) == total
        assert {status for status, _ in answers.values()} == {201}, [
            a for a in answers.values() if a[0] != 201][:3]
        run(wait_published(stack.js, symbol, total, 120.0))
        assert run(lease_holder(stack.js, symbol, 5.0)) == "b"

        # Every order is in the stream once, and its events were published once, in order.
        bodies = run(command_bodies(stack.js, symbol))
        assert len(bodies) == total
        assert len({msgspec.json.decode(b)["id"] for b in bodies}) == total
        expected, _ = replay_single_process(Instrument(symbol), bodies)
        published = events_by_command(run(event_batches(stack.js, symbol)))
        assert [seq for seq, _ in published] == list(range(1, total + 1))
        assert [events for _, events in published] == expected
        trades = [e for events in expected for e in events if e["type"] == "trade"]
        assert len(trades) > 5
        # What the clients were told about their own fills is what the stream says.
        told = sum(e["qty"] for _, body in answers.values() for e in body["events"]
                   if e["type"] == "trade" and e["liquidity"] == "taker")
        assert told == sum(int(e["qty"]) for e in trades)

        # After settling: each trader's free collateral is funds minus the holds of exactly
        # their open orders and the margin of exactly their position.
        wait_for(lambda: stack.written() == total, "the margin worker")
        book = OrderBook(Instrument(symbol))
        for i, body in enumerate(bodies, 1):
            book.process(parse_line(i, body, skip_invalid=True))
            book.take_events()
        positions: dict[str, Position] = {}
        for e in trades:
            buyer, seller = ((e["taker_account"], e["maker_account"]) if e["taker_side"] == "buy"
                             else (e["maker_account"], e["taker_account"]))
            positions.setdefault(str(buyer), Position()).fill(int(e["qty"]), int(e["price"]))
            positions.setdefault(str(seller), Position()).fill(-int(e["qty"]), int(e["price"]))
        for t in range(4):
            account = f"trader{t}"
            holds = sum(initial_margin(o.price, o.qty, IM_PPM) for o in book.orders.values()
                        if o.account == account)
            cost = positions.get(account, Position()).cost
            assert margin.free(account) == FUNDS - holds - (-(-cost * IM_PPM // PPM)), account
    finally:
        for app in apps:
            app.extensions["strongroom.exchange.gateway"].close()
            app.extensions["strongroom.engine"].dispose()
        stack.close()
        for proc in (leader, standby):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)
        db.dispose()
