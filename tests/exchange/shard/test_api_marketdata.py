"""Public market data in shard mode: fed by this process's replica of each shard.

Depth, trades, candles, ticker and marks of `/api/v1/market` and the websocket
market channels come from a `MarketData` model attached to the gateway's replica
(`attach_market`), not from the API process's idle embedded venue. A process that
starts from the shard worker's snapshot mirrors the restored books: same depth.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from flask import Flask
from shard_api_helpers import (
    BTC,
    USDC,
    Trader,
    WorkerThread,
    close,
    fund,
    gateway,
    mark,
    mark_btc,
    new_shard,
    seed,
    shard_app,
    snapshot_seq,
    two_shard_app,
    wait_for,
)
from websockets.sync.client import connect

from exchange.commands import Deposit
from exchange.instruments import DEFAULT_CONFIG, load_instruments
from exchange.stream.cluster import LocalCluster
from policies.roles import Role

MARKET = "/api/v1/market"
PERP = "BTC-PERP"
SNAPSHOT_EVERY = 5
TIMEOUT_S = 30.0  # bounds a hang only


def _get(app: Flask, path: str) -> dict[str, Any]:
    r = app.test_client().get(path, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert r.status_code == 200, (path, r.get_json())
    body: dict[str, Any] = r.get_json()
    return body


def _trade_flow(app: Flask, shard: str, clock: Any) -> tuple[Trader, Trader]:
    """Bob rests two asks, alice a bid, then alice lifts bob's best ask for 2: one trade."""
    alice, bob = Trader(app, clock, "alice"), Trader(app, clock, "bob")
    fund(app, shard, "alice", 10_000 * USDC, clock.now_ms)
    fund(app, shard, "bob", 10_000 * USDC, clock.now_ms)
    assert bob.order("s1", "sell", 2, BTC + 100_000).status_code == 201
    assert bob.order("s2", "sell", 3, BTC + 200_000).status_code == 201
    assert alice.order("b1", "buy", 1, BTC - 100_000).status_code == 201
    r = alice.order("b2", "buy", 2, BTC + 100_000)
    assert r.status_code == 201, r.get_json()
    assert [e["type"] for e in r.get_json()["events"]].count("trade") == 1
    return alice, bob


DEPTH = {"bids": [["59999.9", "0.001", "1"]], "asks": [["60000.2", "0.003", "1"]]}


def test_shard_market_data_depth_trades_candles_ticker_answered_from_the_replica(
        shard_api: tuple[Flask, str, Trader], clock: Any) -> None:
    app, shard, _ = shard_api
    _trade_flow(app, shard, clock)
    depth = _get(app, f"{MARKET}/depth?symbol={PERP}")
    assert {k: depth[k] for k in ("bids", "asks")} == DEPTH and depth["seq"] > 0
    (trade,) = _get(app, f"{MARKET}/trades?symbol={PERP}")["trades"]
    assert (trade["price"], trade["qty"], trade["side"], trade["liquidation"]) == (
        "60000.1", "0.002", "buy", False)
    (candle,) = _get(app, f"{MARKET}/candles?symbol={PERP}&interval=1m")["candles"]
    assert (candle["open"], candle["close"], candle["volume"], candle["trades"]) == (
        "60000.1", "60000.1", "0.002", 1)
    (ticker,) = _get(app, f"{MARKET}/ticker?symbol={PERP}")["tickers"]
    assert (ticker["last_price"], ticker["trades"], ticker["best_bid"], ticker["best_ask"]) == (
        "60000.1", 1, "59999.9", "60000.2")
    assert ticker["mark"] is not None  # the operator's quotes reached the replica's model
    every = {t["symbol"]: t for t in _get(app, f"{MARKET}/ticker")["tickers"]}
    assert every[PERP] == ticker and len(every) == len(load_instruments(DEFAULT_CONFIG).instruments)
    instruments = {i["symbol"]: i for i in _get(app, f"{MARKET}/instruments")["instruments"]}
    assert instruments[PERP]["open_interest"] == "0.002" and instruments[PERP]["status"] == "open"
    marks = {m["symbol"]: m for m in _get(app, f"{MARKET}/mark")["marks"]}
    assert marks[PERP]["mark"] == ticker["mark"]
    # Read from the replica's model, not the API process's idle embedded venue.
    replica = gateway(app).replicas[shard]
    assert replica.market is not None and replica.market.trades[PERP]
    assert not app.extensions["strongroom.exchange"].market.trades.get(PERP)


def test_shard_market_data_unknown_symbol_is_refused_404(
        shard_api: tuple[Flask, str, Trader]) -> None:
    app, _, _ = shard_api
    r = app.test_client().get(f"{MARKET}/depth?symbol=NOPE-PERP", environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert (r.status_code, r.get_json()["code"]) == (404, 2002)


def test_shard_market_data_process_started_from_the_snapshot_shows_the_same_depth(
        nats_cluster: LocalCluster, postgres_url: str, clock: Any, keystore: Any,
        tmp_path: Path) -> None:
    shard = new_shard(nats_cluster.urls)
    config = load_instruments(DEFAULT_CONFIG)
    one = shard_app(nats_cluster.urls, shard, postgres_url, clock, keystore, tmp_path / "a",
                    EXCHANGE_SHARD_HASH_EVERY=SNAPSHOT_EVERY)
    two = None
    try:
        with WorkerThread(nats_cluster.urls, config, shard, snapshot_every=SNAPSHOT_EVERY):
            ops = Trader(one, clock, "ops", tier=0, roles=frozenset({Role.ADMIN}))
            mark_btc(ops)
            _trade_flow(one, shard, clock)
            replica = gateway(one).replicas[shard]
            while replica.machine.seq % SNAPSHOT_EVERY:  # end exactly at a snapshot point
                seed(one, shard, Deposit("pad", 1), clock.now_ms)
            last = replica.machine.seq
            wait_for(lambda: snapshot_seq(nats_cluster.urls, shard) == last, "the leader's snapshot")
            two = shard_app(nats_cluster.urls, shard, postgres_url, clock, keystore, tmp_path / "b")
            late = gateway(two).replicas[shard]
            # Restored at the snapshot with nothing to replay: its depth comes from the books.
            assert late.machine.seq == last and late.results.get(last) is None
            first = _get(one, f"{MARKET}/depth?symbol={PERP}")
            again = _get(two, f"{MARKET}/depth?symbol={PERP}")
            assert {k: again[k] for k in ("bids", "asks")} == DEPTH == {k: first[k] for k in ("bids", "asks")}
            (ticker,) = _get(two, f"{MARKET}/ticker?symbol={PERP}")["tickers"]
            assert (ticker["best_bid"], ticker["best_ask"]) == ("59999.9", "60000.2")
            assert ticker["mark"] is not None
            # Its trade history starts at the snapshot (documented); new trades reach both.
            assert _get(two, f"{MARKET}/trades?symbol={PERP}")["trades"] == []
            carol = Trader(two, clock, "carol")
            fund(two, shard, "carol", 10_000 * USDC, clock.now_ms)
            assert carol.order("c1", "sell", 1, BTC - 100_000, app=two).status_code == 201
            wait_for(lambda: replica.machine.seq == late.machine.seq, "the first replica")
            for app in (one, two):
                depth = _get(app, f"{MARKET}/depth?symbol={PERP}")
                assert (depth["bids"], depth["asks"]) == ([], DEPTH["asks"])
                assert _get(app, f"{MARKET}/trades?symbol={PERP}")["trades"][-1]["price"] == "59999.9"
    finally:
        close(one)
        if two is not None:
            close(two)


def test_shard_market_data_websocket_feed_gets_the_replicas_depth_and_trades(
        shard_api: tuple[Flask, str, Trader], clock: Any) -> None:
    from exchange.api.marketdata import FEED_EXTENSION, start_stream_feed
    from exchange.api.stream import ThreadedStreamServer

    app, shard, _ = shard_api
    alice, bob = Trader(app, clock, "alice"), Trader(app, clock, "bob")
    fund(app, shard, "alice", 10_000 * USDC, clock.now_ms)
    fund(app, shard, "bob", 10_000 * USDC, clock.now_ms)
    assert bob.order("s1", "sell", 2, BTC + 100_000).status_code == 201
    # Folded before the feed starts: its first hello has the ask, and no diff of it follows.
    # (A diff folded in the feed's first round would reach the stream server after the hello
    # and could go out after a subscriber's snapshot with a seq it already has.)
    gateway(app).market(shard)
    # A short directory: a Unix socket path has at most 107 bytes.
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="srm") as directory:
        feed = start_stream_feed(app, Path(directory) / "feed.sock")
        server = ThreadedStreamServer(Path(directory) / "feed.sock")
        try:
            wait_for(server.server.feed_connected.is_set, "the feed")
            with connect(f"ws://127.0.0.1:{server.port}/") as ws:
                channels = [f"depth:{PERP}", f"trades:{PERP}"]
                ws.send(json.dumps({"op": "subscribe", "id": 1, "channels": channels}))
                assert _recv(ws) == {"type": "subscribed", "id": 1, "channels": channels}
                snap = _recv(ws)["data"]  # the replica's book, through the feed's hello
                assert snap["type"] == "snapshot" and snap["asks"] == [["60000.1", "0.002", "1"]]
                r = alice.order("b" + uuid.uuid4().hex[:6], "buy", 2, BTC + 100_000)
                assert r.status_code == 201, r.get_json()
                seen = _collect(ws, channels)  # the server may send the depth diff first
                (trade,) = seen[f"trades:{PERP}"]["data"]
                assert (trade["price"], trade["qty"], trade["side"]) == ("60000.1", "0.002", "buy")
                diff = seen[f"depth:{PERP}"]["data"]
                assert diff["type"] == "diff" and diff["prev_seq"] == snap["seq"] < diff["seq"]
        finally:
            server.stop()
            feed.stop()
            app.extensions.pop(FEED_EXTENSION)


def _recv(ws: Any) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(ws.recv(timeout=TIMEOUT_S))
    return message


def _collect(ws: Any, channels: list[str]) -> dict[str, dict[str, Any]]:
    """Read messages until one of each channel came; return the first of each."""
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        m = _recv(ws)
        seen.setdefault(m.get("channel", ""), m)
        if all(c in seen for c in channels):
            return seen
    raise AssertionError(f"only {sorted(seen)} came")


def test_shard_market_data_two_shards_each_symbol_read_from_its_shards_model(
        nats_cluster: LocalCluster, postgres_url: str, clock: Any, keystore: Any,
        tmp_path: Path) -> None:

    eth = 3_000 * USDC
    app, btc_shard, eth_shard = two_shard_app(nats_cluster.urls, postgres_url, clock, keystore,
                                              tmp_path / "data")
    try:
        ops = Trader(app, clock, "ops", tier=0, roles=frozenset({Role.ADMIN}))
        mark(ops, "BTC", BTC)
        mark(ops, "ETH", eth)
        alice = Trader(app, clock, "alice")
        fund(app, btc_shard, "alice", 10_000 * USDC, clock.now_ms)
        fund(app, eth_shard, "alice", 10_000 * USDC, clock.now_ms)
        assert alice.order("b1", "buy", 1, BTC - 100_000).status_code == 201
        r = alice.order("e1", "buy", 1, eth - 1_000_000, symbol="ETH-PERP")
        assert r.status_code == 201, r.get_json()
        btc = _get(app, f"{MARKET}/depth?symbol=BTC-PERP")
        eth_depth = _get(app, f"{MARKET}/depth?symbol=ETH-PERP")
        assert btc["bids"] == [["59999.9", "0.001", "1"]] and len(eth_depth["bids"]) == 1
        tickers = {t["symbol"]: t for t in _get(app, f"{MARKET}/ticker")["tickers"]}
        assert tickers["BTC-PERP"]["best_bid"] == "59999.9"
        assert tickers["ETH-PERP"]["best_bid"] == eth_depth["bids"][0][0]
        marks = {m["symbol"] for m in _get(app, f"{MARKET}/mark")["marks"]}
        assert {"BTC-PERP", "ETH-PERP"} <= marks
        models = {name: r.market for name, r in gateway(app).replicas.items()}
        assert models[btc_shard] is not None and models[eth_shard] is not None
        assert not models[btc_shard].depth.get("ETH-PERP") and not models[eth_shard].depth.get("BTC-PERP")
    finally:
        close(app)
