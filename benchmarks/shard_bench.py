"""Clearing-shard benchmark: shard workers over a local 3-node NATS JetStream cluster.

    python benchmarks/shard_bench.py [--commands 5000] [--failovers 3]

1. Throughput, 1 vs 2 shard-worker processes on two shards: both shards'
   command streams are filled first (commands appended directly to the R3
   streams, pipelined), then the workers start; the time is from their start
   to the results of the last command of both shards being published (R3
   SHARDEVT), so it includes process start-up and leadership acquisition
   (reported separately as the time to the first batch). 1 process: one
   Python process leads both shards (two workers on one event loop).
   2 processes: one `strongroom shard-worker --shard X` each. The CPU seconds
   the worker processes used are read from /proc.
2. Failover: a leader and a standby on one shard; kill -9 the leader, append
   one command, measure until its result is published by the standby.
   Expected around the lease TTL (2 s) plus one standby poll (0.4 s) plus the
   standby's recovery (snapshot + silent replay).

Each shard runs the whole venue of exchange/data/market.toml; the flow is
deposits and index quotes first, then limit orders of 50 traders in pairs
(a resting order and the one that fills it, sides alternating so positions
stay bounded) with about 15 % cancels. The numbers depend heavily on the
machine load: the script prints the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import nats
from nats.js.client import JetStreamContext

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import stream_wait  # noqa: E402
from http_load import CpuMeter, tree_pids  # noqa: E402
from stream_wait import spawn  # noqa: E402

from exchange.commands import CancelOrder, Deposit, Place, Quote, SeedInsurance, Tick  # noqa: E402
from exchange.engine.messages import NewOrder  # noqa: E402
from exchange.stream.cluster import LocalCluster  # noqa: E402
from exchange.stream.shard.wire import (  # noqa: E402
    SHARD_EVENTS_STREAM,
    ShardCommand,
    ShardOp,
    batch_decoder,
    encode_command,
    msg_id_of,
    shard_events_subject,
    shard_subject,
)

CLI = "from strongroom.cli import main; main()"
USDC = 1_000_000
BTC = 60_000 * USDC  # index price, USDC minor units per BTC
TICK = 100_000  # BTC-PERP tick (exchange/data/market.toml)
SOURCES = ("coinbase", "kraken", "bitstamp")
TRADERS = 50
APPEND_WINDOW = 256  # appends in flight while filling a stream


def flow(n: int, seed: int, now_ms: int) -> list[tuple[str, bytes]]:
    """Return n (Nats-Msg-Id, body): funding and quotes, then paired orders and ~15 % cancels."""
    rng = random.Random(seed)
    ops: list[ShardOp] = [SeedInsurance(1_000_000 * USDC)]
    ops += [Deposit(f"t{k}", 10_000_000 * USDC) for k in range(TRADERS)]
    ops += [Quote("BTC", s, BTC, now_ms) for s in SOURCES] + [Tick("BTC", now_ms)]
    live: list[str] = []
    i = 0
    while len(ops) < n:
        if live and rng.random() < 0.15:
            ops.append(CancelOrder("BTC-PERP", live.pop(rng.randrange(len(live)))))
            continue
        # Pair p: trader a rests at the index price, trader b crosses it with the same size;
        # the resting side swaps every round of pairs, so positions stay bounded.
        pair, second = divmod(i, 2)
        i += 1
        rest_side = "buy" if (pair // (TRADERS // 2)) % 2 == 0 else "sell"
        if not second:
            account, side, price = f"t{(2 * pair) % TRADERS}", rest_side, BTC
        else:
            account = f"t{(2 * pair + 1) % TRADERS}"
            side = "sell" if rest_side == "buy" else "buy"
            price = BTC + 5 * TICK if side == "buy" else BTC - 5 * TICK
        oid = f"{account}:o{seed}-{i}"
        ops.append(Place("BTC-PERP", NewOrder(oid, account, side, 1 + pair % 4,  # type: ignore[arg-type]
                                              price=price, ts=now_ms * 1_000_000)))
        live.append(oid)
    out = []
    for k, op in enumerate(ops[:n]):
        body = encode_command(ShardCommand(op, now_ms))
        out.append((msg_id_of(op, f"b{seed}.{k}"), body))
    return out


async def fill(js: JetStreamContext, shard: str, commands: list[tuple[str, bytes]]) -> float:
    """Append `commands` to `shard`'s stream, APPEND_WINDOW in flight; return appends per second."""
    t0 = time.perf_counter()
    subject = shard_subject(shard)
    for start in range(0, len(commands), APPEND_WINDOW):
        chunk = commands[start:start + APPEND_WINDOW]
        acks = await asyncio.gather(*(js.publish(subject, body, timeout=30.0, headers={"Nats-Msg-Id": mid})
                                      for mid, body in chunk))
        # Pipelined appends may be stored out of order within a window: the stream order is
        # the replay order either way, and every command is stored exactly once.
        assert all(not a.duplicate for a in acks), "a benchmark command id was reused"
    return len(commands) / (time.perf_counter() - t0)


async def wait_all(js: JetStreamContext, shards: list[str], seq: int, timeout_s: float) -> float:
    """Wait until every shard published the results of command `seq`; return the time."""
    return await stream_wait.wait_all(
        js, shards, seq, timeout_s, stream=SHARD_EVENTS_STREAM, subject_of=shard_events_subject,
        last_seq_of=lambda data: batch_decoder.decode(data).last_seq, what="shards")


async def tally(js: JetStreamContext, shard: str) -> dict[str, int]:
    """Count the published results of `shard` by code, and the trades among their events."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    codes: Counter[str] = Counter()
    trades = 0
    sub = await js.pull_subscribe(shard_events_subject(shard), stream=SHARD_EVENTS_STREAM,
                                  config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL,
                                                        ack_policy=AckPolicy.NONE, mem_storage=True,
                                                        num_replicas=1, inactive_threshold=30.0))
    try:
        while True:
            try:
                msgs = await sub.fetch(256, timeout=1.0)
            except nats.errors.TimeoutError:
                break
            for msg in msgs:
                for result in batch_decoder.decode(msg.data).results:
                    codes[str(result.code)] += 1
                    trades += sum(1 for _, e in result.events if type(e).__name__ == "Trade")
    finally:
        await sub.unsubscribe()
    return {"results_by_code": dict(codes), "trades": trades}


async def throughput(cluster: LocalCluster, js: JetStreamContext, processes: int, n: int,
                     tag: str) -> dict[str, float]:
    from exchange.stream.topology import ensure_shard_topology

    shards = [f"{tag}1", f"{tag}2"]
    await ensure_shard_topology(js, shards, 3)
    now_ms = int(time.time() * 1000)
    rates = [await fill(js, s, flow(n, k, now_ms)) for k, s in enumerate(shards)]
    t0 = time.monotonic()
    if processes == 1:
        procs = [spawn([__file__, "--serve", ",".join(shards)], cluster.urls)]
    else:
        procs = [spawn(["-c", CLI, "shard-worker", "--shard", s, "--name", s], cluster.urls) for s in shards]
    meter = CpuMeter({"workers": lambda: [q for p in procs for q in tree_pids(p.pid)]})
    meter.start()
    try:
        first = await wait_all(js, shards, 1, 120.0) - t0
        done = await wait_all(js, shards, n, 600.0) - t0
        cpu = meter.stop()["workers"]
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
    counts = [await tally(js, s) for s in shards]
    return {"results": counts, "append_per_s": round(statistics.mean(rates)),
            "first_batch_s": round(first, 2),
            "total_s": round(done, 2), "commands_per_s_incl_startup": round(2 * n / done),
            "commands_per_s_after_first_batch": round(2 * n / max(done - first, 1e-9)),
            "worker_cpu_s": round(cpu, 2), "worker_cpu_ms_per_command": round(1000 * cpu / (2 * n), 3)}


async def failover(cluster: LocalCluster, js: JetStreamContext, rounds: int, n: int) -> list[float]:
    from exchange.stream.topology import ensure_shard_topology

    shard = "FOB"
    await ensure_shard_topology(js, [shard], 3)
    now_ms = int(time.time() * 1000)
    base = flow(n, 99, now_ms)
    await fill(js, shard, base)
    seq = len(base)
    times = []
    for r in range(rounds):
        leader = spawn(["-c", CLI, "shard-worker", "--shard", shard, "--name", f"l{r}"], cluster.urls)
        await wait_leader(js, shard, f"l{r}", 120.0)
        await wait_all(js, [shard], seq, 120.0)
        standby = spawn(["-c", CLI, "shard-worker", "--shard", shard, "--name", f"s{r}"], cluster.urls)
        await asyncio.sleep(4.0)  # the standby is up and polling the lease
        leader.kill()
        t0 = time.monotonic()
        leader.wait()
        op = Quote("BTC", SOURCES[r % 3], BTC + TICK * r, now_ms + r + 1)
        await js.publish(shard_subject(shard), encode_command(ShardCommand(op, now_ms + r + 1)),
                         headers={"Nats-Msg-Id": f"fo.{r}"})
        seq += 1
        times.append(round(await wait_all(js, [shard], seq, 120.0) - t0, 2))
        standby.terminate()
        standby.wait(timeout=30)
    return times


async def wait_leader(js: JetStreamContext, shard: str, name: str, timeout_s: float) -> None:
    """Wait until worker `name` holds the shard's lease (the previous round's standby let go)."""
    from nats.js.errors import KeyNotFoundError

    from exchange.stream.topology import LEASE_BUCKET, shard_lease_key

    kv = await js.key_value(LEASE_BUCKET)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            entry = await kv.get(shard_lease_key(shard))
            if entry.value == name.encode():
                return
        except KeyNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} did not take the lease of {shard}")
        await asyncio.sleep(0.05)


async def serve(shards: list[str], urls: list[str]) -> None:
    """Lead several shards from one process (the 1-process case of the benchmark)."""
    from exchange.instruments import MARKET_CONFIG, load_instruments
    from exchange.stream.shard.worker import run_shard_worker

    config = load_instruments(MARKET_CONFIG)
    await asyncio.gather(*(run_shard_worker(urls, config, s, name=f"one-{s}") for s in shards))


async def connect(cluster: LocalCluster) -> nats.NATS:
    from exchange.stream.topology import ensure_shard_topology

    for _ in range(60):
        nc = None
        try:
            nc = await nats.connect(servers=cluster.urls)
            await ensure_shard_topology(nc.jetstream(), ["WARM"], 3)
            return nc
        except Exception:
            if nc is not None:
                await nc.close()
            await asyncio.sleep(0.5)
    raise SystemExit("the NATS cluster did not come up")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp), 3).start()
        try:
            nc = await connect(cluster)
            js = nc.jetstream()
            report: dict[str, object] = {"load_before": os.getloadavg(), "cpus": os.cpu_count(),
                                         "commands_per_shard": args.commands}
            if args.commands > 0:
                report["one_process"] = await throughput(cluster, js, 1, args.commands, "ONE")
                report["two_processes"] = await throughput(cluster, js, 2, args.commands, "TWO")
            if args.failovers > 0:
                times = await failover(cluster, js, args.failovers, args.failover_commands)
                report["failover_s"] = {"runs": times, "median": statistics.median(times),
                                        "commands_in_stream": args.failover_commands}
            report["load_after"] = os.getloadavg()
            print(json.dumps(report, indent=2))
            await nc.close()
        finally:
            cluster.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=5000,
                        help="commands per shard (0: no throughput run)")
    parser.add_argument("--failovers", type=int, default=3)
    parser.add_argument("--failover-commands", type=int, default=2000,
                        help="commands in the failover shard's stream before the first leader starts")
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--nats", default=None, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.serve:
        asyncio.run(serve(ns.serve.split(","), ns.nats.split(",")))
    else:
        asyncio.run(main(ns))
