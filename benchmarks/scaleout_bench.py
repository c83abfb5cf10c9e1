"""Scale-out benchmark: engine workers over a local 3-node NATS JetStream cluster.

    python benchmarks/scaleout_bench.py [--commands 5000] [--failovers 3]

1. Append: ``--commands`` commands per market appended through the command
   gateway (one awaited publish at a time, R3 stream): appends/s.
2. Throughput, 1 vs 2 engine processes on two markets: both command streams
   are filled first, then the engine workers start; the time is from their
   start to the events of the last command of both markets being published
   (R3 events stream), so it includes process start-up and leadership
   acquisition (reported separately as the time to the first batch).
   1 process: one Python process leads both markets (two workers on one
   event loop). 2 processes: one `strongroom engine-worker` each.
3. Failover: a leader and a standby on one market; kill -9 the leader, append
   one command, measure until its events are published by the standby.
   Expected around the lease TTL (2 s) plus one standby poll (0.4 s).

The numbers depend heavily on the machine load: the script prints the load
average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nats
from nats.js.client import JetStreamContext

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import stream_wait  # noqa: E402
from stream_wait import spawn  # noqa: E402

from exchange.engine.instrument import Instrument  # noqa: E402
from exchange.engine.messages import Cancel, Command, NewOrder  # noqa: E402
from exchange.stream.cluster import LocalCluster  # noqa: E402
from exchange.stream.publisher import CommandPublisher  # noqa: E402
from exchange.stream.topology import EVENTS_STREAM, ensure_topology, events_subject  # noqa: E402
from exchange.stream.wire import batch_decoder  # noqa: E402
from exchange.stream.worker import run_worker  # noqa: E402

CLI = "from strongroom.cli import main; main()"


def flow(n: int, seed: int) -> list[tuple[str, Command]]:
    """Return n (command id, command): limit orders around 1000 and ~15 % cancels."""
    import random

    rng = random.Random(seed)
    out: list[tuple[str, Command]] = []
    live: list[str] = []
    for i in range(n):
        if live and rng.random() < 0.15:
            out.append((f"s{seed}-{i}", Cancel(id=live.pop(rng.randrange(len(live))))))
            continue
        oid = f"o{seed}-{i}"
        out.append((f"s{seed}-{i}", NewOrder(id=oid, account=f"a{rng.randrange(50)}",
                                             side="buy" if rng.random() < 0.5 else "sell",
                                             qty=rng.randrange(1, 20),
                                             price=1000 + rng.randrange(-20, 21))))
        live.append(oid)
    return out


async def wait_all(js: JetStreamContext, markets: list[str], seq: int, timeout_s: float) -> float:
    """Wait until every market published the events of command `seq`; return the time."""
    return await stream_wait.wait_all(
        js, markets, seq, timeout_s, stream=EVENTS_STREAM, subject_of=events_subject,
        last_seq_of=lambda data: batch_decoder.decode(data).last_seq, what="markets")


async def fill(js: JetStreamContext, markets: list[str], n: int) -> float:
    """Append n commands to each market; return appends per second."""
    publisher = CommandPublisher(js, set(markets))
    flows = [flow(n, seed) for seed in range(len(markets))]
    t0 = time.perf_counter()
    for i in range(n):
        for market, f in zip(markets, flows, strict=True):
            await publisher.append(market, f[i][0], f[i][1])
    return n * len(markets) / (time.perf_counter() - t0)


async def throughput(cluster: LocalCluster, js: JetStreamContext, processes: int, n: int,
                     tag: str) -> dict[str, float]:
    markets = [f"{tag}1", f"{tag}2"]
    await ensure_topology(js, markets, 3)
    rate = await fill(js, markets, n)
    t0 = time.monotonic()
    if processes == 1:
        procs = [spawn([__file__, "--serve", ",".join(markets)], cluster.urls)]
    else:
        procs = [spawn(["-c", CLI, "engine-worker", "--market", m, "--name", m], cluster.urls)
                 for m in markets]
    try:
        first = await wait_all(js, markets, 1, 60.0) - t0
        done = await wait_all(js, markets, n, 300.0) - t0
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
    return {"append_per_s": round(rate), "first_batch_s": round(first, 2),
            "total_s": round(done, 2),
            "commands_per_s_incl_startup": round(2 * n / done),
            "commands_per_s_after_first_batch": round(2 * n / max(done - first, 1e-9))}


async def failover(cluster: LocalCluster, js: JetStreamContext, rounds: int) -> list[float]:
    market = "FOB"
    await ensure_topology(js, [market], 3)
    publisher = CommandPublisher(js, {market})
    times = []
    seq = 0
    for r in range(rounds):
        leader = spawn(["-c", CLI, "engine-worker", "--market", market, "--name", f"l{r}"],
                       cluster.urls)
        seq += 1
        await publisher.append(market, f"warm{r}", NewOrder(id=f"w{r}", account="a", side="buy",
                                                             qty=1, price=900))
        await wait_all(js, [market], seq, 60.0)
        standby = spawn(["-c", CLI, "engine-worker", "--market", market, "--name", f"s{r}"],
                        cluster.urls)
        await asyncio.sleep(3.0)  # the standby is up and polling the lease
        leader.kill()
        t0 = time.monotonic()
        leader.wait()
        seq += 1
        await publisher.append(market, f"after{r}", Cancel(id=f"w{r}"))
        times.append(round(await wait_all(js, [market], seq, 60.0) - t0, 2))
        standby.terminate()
        standby.wait(timeout=10)
    return times


async def serve(markets: list[str], urls: list[str]) -> None:
    """Lead several markets from one process (the 1-process case of the benchmark)."""
    await asyncio.gather(*(run_worker(urls, Instrument(symbol=m), name=f"one-{m}")
                           for m in markets))


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp), 3).start()
        try:
            nc = None
            for _ in range(60):
                try:
                    nc = await nats.connect(servers=cluster.urls)
                    await ensure_topology(nc.jetstream(), ["WARM"], 3)
                    break
                except Exception:
                    if nc is not None:
                        await nc.close()
                        nc = None
                    await asyncio.sleep(0.5)
            assert nc is not None
            js = nc.jetstream()
            report = {"load_before": os.getloadavg(), "cpus": os.cpu_count(),
                      "commands_per_market": args.commands}
            report["one_process"] = await throughput(cluster, js, 1, args.commands, "ONE")
            report["two_processes"] = await throughput(cluster, js, 2, args.commands, "TWO")
            times = await failover(cluster, js, args.failovers)
            report["failover_s"] = {"runs": times, "median": statistics.median(times)}
            report["load_after"] = os.getloadavg()
            print(json.dumps(report, indent=2))
            await nc.close()
        finally:
            cluster.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=5000)
    parser.add_argument("--failovers", type=int, default=3)
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--nats", default=None, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.serve:
        asyncio.run(serve(ns.serve.split(","), ns.nats.split(",")))
    else:
        asyncio.run(main(ns))
