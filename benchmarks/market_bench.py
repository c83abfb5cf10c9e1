"""Benchmark the market scheduler: one ``run_due`` of a live demo market (docs/market.md).

    python benchmarks/market_bench.py                  # 600 simulated seconds
    python benchmarks/market_bench.py --seconds 3600

The server's market job as ``make run`` runs it, on a fake clock advancing one
second per run: the market file (perpetuals plus the calendar's ~44 dated
futures and options), the simulated feed, the demo market maker and taker,
an SQLite ledger in a temporary directory and the venue journal (fsync
never, so the disk is not what is measured). Reports the time of one run
(poll, advance, quotes, ticks, listings, maker requotes, ledger flush) and
the journal bytes written per simulated second. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from custody.db import make_engine, make_session_factory
from custody.ledger.service import Ledger
from exchange.engine.journal import FsyncPolicy
from exchange.feeds.simulated import SimulatedFeed
from exchange.instruments import MARKET_CONFIG, load_instruments
from exchange.marketmaker import DemoMarketMaker
from exchange.schedule import MarketScheduler
from exchange.service import ExchangeService
from strongroom.migrate import upgrade

START_MS = 1_796_140_800_000  # 2026-12-01T00:00Z


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        upgrade(url)
        ledger = Ledger(make_session_factory(make_engine(url)))
        config = load_instruments(MARKET_CONFIG)
        svc = ExchangeService.open(ledger, config, Path(tmp) / "exchange", policy=FsyncPolicy.NEVER)
        now = [START_MS]
        svc.clock = lambda: now[0]
        scheduler = MarketScheduler(svc, lambda: now[0], SimulatedFeed(config.indices, 1),
                                    participants=(DemoMarketMaker(svc, 1),))
        times = []
        for _ in range(args.seconds):
            t0 = time.perf_counter()
            scheduler.run_due()
            times.append(time.perf_counter() - t0)
            now[0] += 1_000
        svc.close()
        journal = sum(p.stat().st_size for p in (Path(tmp) / "exchange").glob("venue-journal-*"))
    times.sort()
    print(f"instruments: {len(svc.venue.specs)}, runs: {len(times)}")
    print(f"run_due: median {statistics.median(times) * 1e3:.2f} ms, "
          f"p99 {times[int(len(times) * 0.99)] * 1e3:.2f} ms, max {times[-1] * 1e3:.2f} ms")
    print(f"journal: {journal / args.seconds / 1024:.2f} kB per simulated second")


if __name__ == "__main__":
    main()
