"""Benchmark the engine with and without market data: the read model's tap and 1,000 stream subscribers.

    python benchmarks/marketdata_bench.py                    # 5k commands, once, 1,000 subscribers (short)
    python benchmarks/marketdata_bench.py --orders 10000 --repeat 3   # the figures below

The same seeded stream of commands (limit orders around the mark 60 %,
cancels 30 %, market orders 10 %, 200 funded accounts on one perpetual) runs
through ``Venue.place``/``cancel`` with a drain after every ``--batch``
commands (1 = one API request per batch, the server's case):

1. no tap (the engine alone);
2. the market-data read model attached (exchange/marketdata.py), folded in
   by the engine thread itself every 10,000 commands (no feed);
3. the read model folded in by another thread every 10 ms (the server's case);
4. plus the stream feed and a stream server process (exchange/api/stream.py)
   with 0 and with ``--subscribers`` websocket clients (in a third process)
   subscribed to the instrument's depth and trades over loopback.

Two rates per run: wall clock (on a shared machine it moves with everything
else running), and engine CPU: commands per second of ``time.thread_time()``
of the engine thread, i.e. what the engine itself spends. Medians of
``--repeat`` runs. Not a pass/fail test.

Measured 2026-12-01 on the 2-core development machine shared with ~8 other
jobs (``--orders 10000 --repeat 3 --subscribers 1000``), engine CPU:

    engine alone                                   22,539 commands/s
    read model folded by the engine thread         16,251  (-27.9 %)
    read model folded by another thread            22,162  ( -1.7 %)
    + feed, stream server, 0 subscribers           21,357  ( -5.2 %)
    + feed, stream server, 1,000 subscribers       20,285  (-10.0 %)

So the engine pays ~2 % for recording when the folding runs on another
thread (as the server's feed thread does); the 1,000 subscribers are served
by another process and do nothing on the engine thread: the 0 vs 1,000
difference (within this machine's run-to-run noise of several points) is the
feed thread's rendering competing for the interpreter plus the other
processes competing for the two cores (wall rates fell from 5,673/s to 1,918/s on this machine:
the stream server and the 1,000 clients ran on the same two cores). On this
machine the stream server process was the bottleneck of delivery (10,025
frames in the run to 1,000 subscribers), not the engine; nobody was cut off
as slow.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exchange.engine.messages import NewOrder
from exchange.instruments import load_instruments
from exchange.marketdata import MarketData
from exchange.venue import Venue

BTC = 60_000_000_000
USDC = 1_000_000
NOW = 1_767_225_600_000
SYMBOL = "BTC-PERP"
ACCOUNTS = 200


def commands(count: int, seed: int) -> list[tuple[str, Any]]:
    """Return a seeded stream of (kind, payload) commands."""
    rng = random.Random(seed)
    out: list[tuple[str, Any]] = []
    live: list[str] = []
    for i in range(count):
        r = rng.random()
        account = f"u{rng.randrange(ACCOUNTS)}"
        if r < 0.3 and live:
            out.append(("cancel", live.pop(rng.randrange(len(live)))))
        elif r < 0.4:
            out.append(("place", NewOrder(id=f"o{i}", account=account, side=rng.choice(("buy", "sell")),
                                          qty=rng.randint(1, 5), type="market", ts=(NOW + i) * 1_000_000)))
        else:
            side = rng.choice(("buy", "sell"))
            offset = rng.randint(1, 40) * 100_000 * 10
            price = BTC - offset if side == "buy" else BTC + offset
            if rng.random() < 0.2:  # crossing
                price = BTC + offset if side == "buy" else BTC - offset
            out.append(("place", NewOrder(id=f"o{i}", account=account, side=side,  # type: ignore[arg-type]
                                          qty=rng.randint(1, 20), price=price, ts=(NOW + i) * 1_000_000)))
            live.append(f"o{i}")
    return out


def fresh_venue() -> Venue:
    """Return a venue with funded accounts and a BTC mark."""
    v = Venue(load_instruments())
    for a in range(ACCOUNTS):
        v.deposit(f"u{a}", 1_000_000 * USDC)
    for source in ("coinbase", "kraken", "bitstamp"):
        v.quote("BTC", source, BTC, NOW)
    v.tick("BTC", NOW)
    v.drain()
    return v


def run(stream: list[tuple[str, Any]], batch: int, market: MarketData | None,
        fold: bool = False) -> tuple[float, float]:
    """Run the stream on a fresh venue; return (commands/s wall, commands/s of engine-thread CPU).

    ``fold``: a thread folds the recorded commands in every 10 ms, as the stream feed does
    in the server (without one the tap folds them in itself every 10,000 commands).
    """
    import threading

    v = fresh_venue()
    if market is not None:
        market.attach(v)
    stop = threading.Event()
    folder = None
    if market is not None and fold:
        def fold_every_10_ms() -> None:
            while not stop.wait(0.01):
                market.catch_up()

        folder = threading.Thread(target=fold_every_10_ms)
        folder.start()
    gc.collect()
    t0, c0 = time.perf_counter(), time.thread_time()
    for n, (kind, payload) in enumerate(stream):
        if kind == "place":
            v.place(SYMBOL, payload)
        else:
            v.cancel(SYMBOL, payload, None)
        if n % batch == batch - 1:
            v.drain()
    v.drain()
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    stop.set()
    if folder is not None:
        folder.join()
    if market is not None:
        market.catch_up()
        assert market.broken is None, market.broken
    return len(stream) / wall, len(stream) / cpu


def with_subscribers(bench: Any, count: int) -> tuple[tuple[float, float], int, int]:
    """Run ``bench(market)`` with the feed, a stream server process and ``count`` websocket clients.

    The clients run in their own process (as they would on other machines), subscribed to the
    instrument's depth and trades; return (engine rate, messages they received, slow disconnects).
    """
    import socket
    import subprocess
    import tempfile

    from exchange.api.blueprint import order_scope
    from exchange.api.streamfeed import StreamFeed

    specs = dict(load_instruments().instruments)
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="srb") as directory:
        market = MarketData()
        feed = StreamFeed(market, lambda: specs, order_scope, Path(directory) / "feed.sock")
        feed.start()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        root = Path(__file__).resolve().parent.parent
        server = subprocess.Popen([sys.executable, "-m", "exchange.api.stream", "--feed",
                                   str(Path(directory) / "feed.sock"), "--port", str(port)], cwd=root,
                                  stderr=subprocess.DEVNULL)
        clients = None
        if count:
            clients = subprocess.Popen([sys.executable, __file__, "--clients", str(count), "--port",
                                        str(port)], stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
        try:
            delivered = slow = 0
            if clients is None:
                time.sleep(1.0)  # the server has connected to the feed
                rate = bench(market)
            else:
                assert clients.stdout is not None and clients.stdin is not None
                assert clients.stdout.readline().strip() == "ready"
                rate = bench(market)
                time.sleep(5.0)  # let the fan-out finish
                clients.stdin.close()
                delivered, slow = (int(x) for x in clients.stdout.readline().split())
        finally:
            if clients is not None:
                clients.kill()
            server.terminate()
            server.wait(10)
            feed.stop()
    return rate, delivered, slow


def client_process(count: int, port: int) -> None:
    """Open ``count`` subscribers; print ready; on stdin EOF print (messages, closed) and exit."""
    import asyncio

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    received = [0]
    closed = [0]

    async def one() -> None:
        try:
            async with connect(f"ws://127.0.0.1:{port}/", max_size=2**24) as ws:
                await ws.send('{"op": "subscribe", "channels": ["depth:BTC-PERP", "trades:BTC-PERP"]}')
                async for _ in ws:
                    received[0] += 1
        except ConnectionClosed:
            closed[0] += 1

    async def main() -> None:
        tasks = []
        for _ in range(count):
            tasks.append(asyncio.create_task(one()))
            await asyncio.sleep(0.001)
        while received[0] < 2 * count:  # every subscriber has its two answers
            await asyncio.sleep(0.05)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        print(received[0] - 2 * count, closed[0], flush=True)
        for t in tasks:
            t.cancel()

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--subscribers", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--clients", type=int, default=0, help=argparse.SUPPRESS)  # the client process
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients:
        client_process(args.clients, args.port)
        return
    stream = commands(args.orders, args.seed)
    results: dict[str, tuple[float, float]] = {}

    def median(runs: list[tuple[float, float]]) -> tuple[float, float]:
        return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)

    results["engine alone"] = median([run(stream, args.batch, None) for _ in range(args.repeat)])
    results["read model folded by the engine thread"] = median(
        [run(stream, args.batch, MarketData()) for _ in range(args.repeat)])
    results["read model folded by another thread"] = median(
        [run(stream, args.batch, MarketData(), fold=True) for _ in range(args.repeat)])
    for subscribers in ((0, args.subscribers) if args.subscribers else ()):
        runs = []
        for _ in range(args.repeat):
            rates, delivered, slow = with_subscribers(lambda md: run(stream, args.batch, md), subscribers)
            runs.append(rates)
            if subscribers:
                print(f"  (stream: {delivered:,} messages delivered to {subscribers:,} subscribers, "
                      f"{slow} disconnected as slow)")
        results[f"+ feed, stream server, {subscribers:,} subscribers"] = median(runs)
    base_wall, base_cpu = results["engine alone"]
    print(f"{len(stream):,} commands, drain every {args.batch}, median of {args.repeat} "
          "(wall: the machine is shared; engine CPU: time.thread_time of the engine thread):")
    for name, (wall, cpu) in results.items():
        print(f"  {name:<48} wall {wall:>8,.0f}/s ({wall / base_wall - 1:+6.1%})   "
              f"engine CPU {cpu:>8,.0f}/s ({cpu / base_cpu - 1:+6.1%})")


if __name__ == "__main__":
    main()
