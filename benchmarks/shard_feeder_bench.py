"""Shard feeder benchmark: round latency and the quote gap of a feeder failover (local 3-node cluster).

    python benchmarks/shard_feeder_bench.py [--rounds 200] [--failovers 3] [--interval-ms 1000]

1. Round latency: one feeder appends ``--rounds`` rounds (an Advance on the
   first, then 6 quotes and 2 ticks for the market config's BTC and ETH
   indices, each an awaited R3 append): p50/p99 of a round, and of one append.
   While a round is being appended, the shard's index is between two states
   (some sources quoted at the new time, the tick not yet): the machine runs
   every command at the shard clock, so an order landing in that window is
   judged correctly; the figure bounds how long the window lasts.
2. Failover: two feeders (own connections) on one shard; the leader is killed
   without giving its lease up (a crash) or stopped cleanly (SIGTERM: it
   releases the lease). The **quote gap** is the time between the last round
   of the old leader and the first round of the new one, from the rounds' own
   stamps in the stream: how much older than usual the index gets. With the
   default staleness of 10 s and a gap under it, a failover halts nothing.

The numbers depend on the machine load; the script prints the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import nats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from exchange.feeds import ScriptedFeed  # noqa: E402
from exchange.instruments import MARKET_CONFIG, load_instruments  # noqa: E402
from exchange.stream.cluster import LocalCluster  # noqa: E402
from exchange.stream.shard.feeder import FEEDER_HEADER, ShardFeeder  # noqa: E402
from exchange.stream.shard.wire import command_decoder, shard_stream  # noqa: E402
from exchange.stream.topology import ensure_shard_topology  # noqa: E402

CONFIG = load_instruments(MARKET_CONFIG)


def feed() -> ScriptedFeed:
    f = ScriptedFeed(CONFIG.indices)
    f.set("BTC", 60_000_000_000)
    f.set("ETH", 3_000_000_000)
    return f


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def round_latency(urls: list[str], rounds: int) -> dict[str, float]:
    shard = "B" + uuid.uuid4().hex[:8].upper()
    nc = await nats.connect(servers=urls)
    try:
        js = nc.jetstream()
        await ensure_shard_topology(js, [shard])
        feeder = ShardFeeder(js, CONFIG, shard, feed(), "bench")
        took: list[float] = []
        for _ in range(rounds):
            start = time.perf_counter()
            await feeder.round()
            took.append((time.perf_counter() - start) * 1000)
        per_append = sum(took) / max(1, feeder.stats.appended)
        return {"rounds": rounds, "appends": feeder.stats.appended,
                "round_p50_ms": round(statistics.median(took), 2),
                "round_p99_ms": round(pct(took, 0.99), 2),
                "append_mean_ms": round(per_append, 2)}
    finally:
        await nc.close()


async def one_failover(urls: list[str], interval_ms: int, crash: bool) -> float:
    shard = "V" + uuid.uuid4().hex[:8].upper()
    conns = [await nats.connect(servers=urls) for _ in range(3)]
    try:
        await ensure_shard_topology(conns[0].jetstream(), [shard])
        a = ShardFeeder(conns[1].jetstream(), CONFIG, shard, feed(), "A", interval_ms)
        b = ShardFeeder(conns[2].jetstream(), CONFIG, shard, feed(), "B", interval_ms)
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        task_a = asyncio.create_task(a.run(stop_a))
        while a.stats.rounds < 3:
            await asyncio.sleep(0.01)
        task_b = asyncio.create_task(b.run(stop_b))
        await asyncio.sleep(1.0)
        if crash:
            task_a.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task_a
            await conns[1].close()
        else:
            stop_a.set()
            await task_a
        deadline = time.monotonic() + 60
        while b.stats.appended == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        stop_b.set()
        await task_b
        js = conns[0].jetstream()
        info = await js.stream_info(shard_stream(shard))
        last_a = first_b = None
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(shard_stream(shard), seq)
            ts = command_decoder.decode(msg.data or b"").ts_ms
            author = (msg.headers or {}).get(FEEDER_HEADER)
            if author == "A":
                last_a = ts
            elif author == "B" and first_b is None:
                first_b = ts
        assert last_a is not None and first_b is not None
        return (first_b - last_a) / 1000
    finally:
        for nc in conns:
            if not nc.is_closed:
                await nc.close()


async def ready(urls: list[str]) -> None:
    """Wait until the cluster can place a 3-replica stream (its meta leader is elected)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            nc = await nats.connect(servers=urls, connect_timeout=1)
            try:
                await ensure_shard_topology(nc.jetstream(), ["READY"])
                return
            finally:
                await nc.close()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


async def main(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp), 3).start()
        try:
            await ready(cluster.urls)
            out: dict[str, object] = {"load_before": os.getloadavg()[0]}
            out["round"] = await round_latency(cluster.urls, args.rounds)
            out["crash_gap_s"] = [round(await one_failover(cluster.urls, args.interval_ms, True), 2)
                                  for _ in range(args.failovers)]
            out["sigterm_gap_s"] = [round(await one_failover(cluster.urls, args.interval_ms, False), 2)
                                    for _ in range(args.failovers)]
            out["interval_ms"] = args.interval_ms
            out["load_after"] = os.getloadavg()[0]
            return out
        finally:
            cluster.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--failovers", type=int, default=3)
    parser.add_argument("--interval-ms", type=int, default=1000)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
