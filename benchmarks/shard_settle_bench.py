"""Shard settlement throughput into PostgreSQL: postings/s by how many result batches share a round.

The ledger is the serialisation point of a clearing shard's output (one hash
chain, one head row lock per commit). `ShardSettlement.settle` writes every
ShardBatch that queued up (up to `--fetch-batch` messages) in linked
submissions of at most MAX_BATCH postings, so the commit cost is amortised
over a round. This feeds it the results of a seeded order flow applied by a
ShardMachine (what a shard worker publishes: `--per-batch` commands per
ShardBatch) in rounds of 1, 16, 64 and 256 batches, each round size on a fresh
shard (fresh accounts), and prints postings/s. No NATS here: this is the
ledger side alone (the consumer adds one fetch and one ack per round).
With `--via-nats` it also publishes the batches on a local 3-node JetStream
cluster (R3 SHARDEVT) and times the durable consumer (`run_shard_settlement`,
fetch batch = round size) draining them: fetch + decode + ledger + ack.

    python benchmarks/shard_settle_bench.py --admin-url postgresql://... [--commands 3000] [--via-nats]

`--admin-url` (or STRONGROOM_BENCH_POSTGRES_URL) names a PostgreSQL server
where a scratch database may be created and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
import uuid
from pathlib import Path

from custody.db import make_engine, make_session_factory, scratch_postgres_database
from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger
from exchange.commands import CancelOrder, Place, Quote, SeedInsurance, Tick
from exchange.engine.messages import NewOrder
from exchange.instruments import load_instruments
from exchange.postings import PostingWriter
from exchange.stream.cluster import LocalCluster
from exchange.stream.shard.machine import ShardMachine
from exchange.stream.shard.settle import ShardSettlement, reserve_deposit, run_shard_settlement
from exchange.stream.shard.wire import (
    FundedDeposit,
    ShardBatch,
    ShardCommand,
    ShardOp,
    batch_encoder,
    batch_msg_id,
    encode_command,
    shard_events_subject,
)
from exchange.stream.topology import ensure_shard_topology
from strongroom.migrate import upgrade

USDC = 1_000_000
BTC = 60_000 * USDC
NOW = 1_767_225_600_000
SOURCES = ("coinbase", "kraken", "bitstamp")
TRADERS = 40


def _cmd(op: ShardOp, ts: int = NOW) -> bytes:
    return encode_command(ShardCommand(op, ts))


def _flow(ledger: Ledger, shard: str, commands: int, seed: int) -> list[bytes]:
    """Fund and deposit TRADERS traders, then `commands` orders/cancels/mark moves."""
    users = [f"u{shard.lower()}{i}" for i in range(TRADERS)]
    spot = PostingWriter(ledger)
    out = [_cmd(SeedInsurance(10_000 * USDC))]
    for user in users:
        ledger.transfer(TransferRequest(id=f"spot.{user}", debit_account=spot.account("wallet"),
                                        credit_account=spot.account(f"a:{user}"),
                                        amount=1_000_000 * USDC, asset="USDC"))
        ref = reserve_deposit(ledger, user, 1_000_000 * USDC, shard)
        out.append(_cmd(FundedDeposit(user, 1_000_000 * USDC, ref)))
    out += [_cmd(Quote("BTC", s, BTC, NOW)) for s in SOURCES] + [_cmd(Tick("BTC", NOW))]
    rng = random.Random(seed)
    ts = NOW
    price0 = BTC // 1000 * 1000
    for i in range(commands):
        roll = rng.random()
        if roll < 0.85:
            order = NewOrder(f"o{i}", rng.choice(users), rng.choice(("buy", "sell")),  # type: ignore[arg-type]
                             rng.randint(1, 5), price=price0 + rng.randint(-2, 2) * 100_000,
                             ts=ts * 1_000_000)
            out.append(_cmd(Place("BTC-PERP", order), ts))
        elif roll < 0.95:
            out.append(_cmd(CancelOrder("BTC-PERP", f"o{rng.randrange(i + 1)}", None), ts))
        else:
            ts += 1_000
            px = BTC + rng.randint(-3, 3) * BTC // 200
            out += [_cmd(Quote("BTC", s, px, ts), ts) for s in SOURCES] + [_cmd(Tick("BTC", ts), ts)]
    return out


def _batches(machine: ShardMachine, bodies: list[bytes], per_batch: int) -> list[ShardBatch]:
    out = []
    for start in range(0, len(bodies), per_batch):
        results = [machine.apply(machine.seq + 1, b) for b in bodies[start:start + per_batch]]
        out.append(ShardBatch(machine.shard, results[0].seq, results[-1].seq, results))
    return out


async def _drain_via_nats(urls: list[str], settlement: ShardSettlement, batches: list[ShardBatch],
                          round_size: int) -> float:
    """Publish `batches` on SHARDEVT, then time the durable consumer settling all of them."""
    import nats

    nc = await nats.connect(servers=urls)
    js = nc.jetstream()
    await ensure_shard_topology(js, [settlement.shard])
    for b in batches:
        await js.publish(shard_events_subject(settlement.shard), batch_encoder.encode(b),
                         headers={"Nats-Msg-Id": batch_msg_id(b)})
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(run_shard_settlement(js, settlement, stop, fetch_batch=round_size))
    while settlement.stats.last_seq < batches[-1].last_seq:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    await nc.close()
    return elapsed


def _run(url: str, round_size: int, commands: int, per_batch: int,
         urls: list[str] | None = None) -> dict[str, float]:
    engine = make_engine(url)
    ledger = Ledger(make_session_factory(engine))
    shard = f"B{uuid.uuid4().hex[:8].upper()}"
    machine = ShardMachine(load_instruments(), shard)
    opening_and_flow = _flow(ledger, shard, commands, seed=round_size)
    batches = _batches(machine, opening_and_flow, per_batch)
    settlement = ShardSettlement(ledger, shard)
    # The opening (account creation, deposits) is not the steady state: settle it first.
    warm = next(i for i, b in enumerate(batches) if b.last_seq >= TRADERS + 6) + 1
    settlement.settle(batches[:warm])
    before = settlement.stats.postings
    if urls is not None:
        elapsed = asyncio.run(_drain_via_nats(urls, settlement, batches[warm:], round_size))
    else:
        started = time.perf_counter()
        for i in range(warm, len(batches), round_size):
            settlement.settle(batches[i:i + round_size])
        elapsed = time.perf_counter() - started
    postings = settlement.stats.postings - before
    assert settlement.reconcile(machine) == [], "ledger differs from the replica"
    engine.dispose()
    return {"round": round_size, "postings": postings, "seconds": elapsed,
            "postings_per_s": postings / elapsed, "submissions": settlement.stats.submissions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--admin-url", default=os.environ.get("STRONGROOM_BENCH_POSTGRES_URL"))
    parser.add_argument("--commands", type=int, default=3000)
    parser.add_argument("--per-batch", type=int, default=8,
                        help="commands per ShardBatch (the worker's publish batching)")
    parser.add_argument("--rounds", default="1,16,64,256",
                        help="ShardBatches per settlement round, comma-separated")
    parser.add_argument("--via-nats", action="store_true",
                        help="through a local 3-node JetStream cluster and the durable consumer")
    args = parser.parse_args()
    if not args.admin_url:
        print("shard_settle_bench: skipped (no --admin-url / STRONGROOM_BENCH_POSTGRES_URL)")
        return
    admin = args.admin_url.replace("postgresql://", "postgresql+psycopg://", 1)
    name = f"sr_bench_settle_{uuid.uuid4().hex[:8]}"
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp, scratch_postgres_database(admin, name) as url:
        upgrade(url)
        cluster = LocalCluster(Path(tmp), 3).start() if args.via_nats else None
        try:
            for size in (int(s) for s in args.rounds.split(",")):
                r = _run(url, size, args.commands, args.per_batch,
                         cluster.urls if cluster is not None else None)
                print(f"{'via NATS, ' if cluster else ''}round of {size:4d} batches: "
                      f"{r['postings']:6d} postings in {r['seconds']:.2f} s = "
                      f"{r['postings_per_s']:8.0f} postings/s ({r['submissions']} ledger submissions)")
        finally:
            if cluster is not None:
                cluster.stop()
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
