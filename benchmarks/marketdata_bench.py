"""Benchmark the engine with and without market data: the read model's tap and 1,000 stream subscribers.

    python benchmarks/marketdata_bench.py                    # 20k commands, short
    python benchmarks/marketdata_bench.py --orders 200000 --subscribers 1000

The same seeded stream of commands (limit orders around the mark 60 %,
cancels 30 %, market orders 10 %, 200 funded accounts on one perpetual) runs
through ``Venue.place``/``cancel`` with a drain after every ``--batch``
commands (1 = one API request per batch, the server's case), three times:

1. no tap (the engine alone);
2. the market-data read model attached (exchange/marketdata.py);
3. the read model plus the stream hub (exchange/api/stream.py) with
   ``--subscribers`` websocket clients subscribed to the instrument's depth,
   trades and their own orders, connected over loopback and reading.

The engine's throughput is commands per second of the engine thread; the
hub fans out on its own thread, so (3) should equal (2). Each run is given
the median of ``--repeat`` runs. Not a pass/fail test.
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


def run(stream: list[tuple[str, Any]], batch: int, market: MarketData | None) -> float:
    """Run the stream on a fresh venue; return engine commands per second."""
    v = fresh_venue()
    if market is not None:
        market.attach(v)
    gc.collect()
    t0 = time.perf_counter()
    for n, (kind, payload) in enumerate(stream):
        if kind == "place":
            v.place(SYMBOL, payload)
        else:
            v.cancel(SYMBOL, payload, None)
        if n % batch == batch - 1:
            v.drain()
    v.drain()
    return len(stream) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--subscribers", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    stream = commands(args.orders, args.seed)
    results: dict[str, float] = {}
    results["engine alone"] = statistics.median(run(stream, args.batch, None) for _ in range(args.repeat))
    results["with read model"] = statistics.median(
        run(stream, args.batch, MarketData()) for _ in range(args.repeat))
    if args.subscribers:
        from benchmarks_stream import with_subscribers  # type: ignore[import-not-found]

        results[f"with read model + {args.subscribers:,} subscribers"] = statistics.median(
            with_subscribers(lambda md: run(stream, args.batch, md), args.subscribers, SYMBOL)
            for _ in range(args.repeat))
    base = results["engine alone"]
    print(f"{len(stream):,} commands, drain every {args.batch}, median of {args.repeat}:")
    for name, rate in results.items():
        print(f"  {name:<45} {rate:>10,.0f} commands/s  ({rate / base - 1:+.1%})")


if __name__ == "__main__":
    main()
