"""A seeded command flow for a clearing shard worker, and the stream plumbing its tests share.

The flow is what a shard's stream carries in production: collateral deposits
(plain and ledger-funded), withdrawals, makers quoting both sides, takers
crossing the spread with leverage, cancels, and the feeder's quotes and ticks
moving the BTC index (with shocks, so thinly funded takers are liquidated; one such
liquidation is scripted a third of the way in),
plus direct marks (SetMark). Every body is a `ShardCommand` under the message
id a gateway would use.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import msgspec
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext

from exchange.commands import (
    CancelOrder,
    Deposit,
    Place,
    Quote,
    SeedInsurance,
    SetMark,
    Tick,
    Withdraw,
)
from exchange.engine.messages import NewOrder
from exchange.instruments import ExchangeConfig
from exchange.stream.shard.machine import ShardMachine
from exchange.stream.shard.wire import (
    FundedDeposit,
    ShardBatch,
    ShardCommand,
    ShardOp,
    ShardResult,
    batch_decoder,
    encode_command,
    msg_id_of,
)
from exchange.stream.topology import (
    SHARD_EVENTS_STREAM,
    ensure_shard_topology,
    shard_events_subject,
    shard_stream,
    shard_subject,
)
from tests.exchange.helpers import BTC, NOW, SOURCES, USDC
from tests.exchange.scaleout.scaleout_helpers import last_batch_seq, read_all, wait_seq

ROOT = Path(__file__).resolve().parents[3]
PERP = "BTC-PERP"
TICK = 100_000  # BTC-PERP tick size
MAKERS = ("mm1", "mm2")
TAKERS = tuple(f"t{i}" for i in range(8))
APPEND_RETRY_S = 30.0
SETTLE_TIMEOUT_S = 60.0

Flow = list[tuple[str, bytes]]


def _body(op: ShardOp, ts_ms: int) -> bytes:
    return encode_command(ShardCommand(op, ts_ms))


def _price(p: int) -> int:
    return max(TICK, p // TICK * TICK)


def shard_flow(n: int, seed: int, shard: str = "MAIN") -> Flow:
    """Return `n` (message id, body) commands of a busy shard, reproducibly from `seed`."""
    rng = random.Random(seed)
    flow: Flow = []
    ts = NOW
    index = BTC
    live: list[str] = []

    def add(op: ShardOp, msg_id: str | None = None) -> None:
        flow.append((msg_id or msg_id_of(op, f"{seed}.{len(flow)}"), _body(op, ts)))

    def feed() -> None:
        for source in SOURCES:
            add(Quote("BTC", source, index + rng.randint(-3, 3) * TICK, ts))
        add(Tick("BTC", ts))

    add(SeedInsurance(200_000 * USDC))
    for maker in MAKERS:
        add(Deposit(maker, 2_000_000 * USDC))
    for taker in TAKERS:
        add(Deposit(taker, rng.randint(30, 400) * USDC))
    feed()
    episode = n // 3  # a thin, fully levered long, then a shock: a liquidation for sure
    while len(flow) < n:
        ts += rng.randint(20, 120)
        roll = rng.random()
        if episode and len(flow) >= episode:
            episode = 0
            add(Deposit("thin", 40 * USDC))
            add(Place(PERP, NewOrder(f"mm1:{len(flow)}", "mm1", "sell", 30, price=_price(index),  # type: ignore[arg-type]
                                     ts=ts * 1_000_000)))
            add(Place(PERP, NewOrder(f"thin:{len(flow)}", "thin", "buy", 30, price=_price(index),  # type: ignore[arg-type]
                                     ts=ts * 1_000_000)))
            add(Place(PERP, NewOrder(f"mm2:{len(flow)}", "mm2", "buy", 200,  # type: ignore[arg-type]
                                     price=_price(index * 96 // 100), ts=ts * 1_000_000)))
            index = _price(index * 97 // 100)
            feed()
            continue
        if roll < 0.06:  # the feeder: a new index, now and then a shock
            step = rng.choice((-300, -200, 200, 300)) if rng.random() < 0.15 else rng.randint(-40, 40)
            index = _price(index + index * step // 10_000)
            feed()
        elif roll < 0.40:
            maker = rng.choice(MAKERS)
            spread = rng.randint(1, 20) * TICK
            for side, price in (("buy", index - spread), ("sell", index + spread)):
                oid = f"{maker}:{len(flow)}"
                live.append(oid)
                add(Place(PERP, NewOrder(oid, maker, side, rng.randint(5, 80), price=_price(price),  # type: ignore[arg-type]
                                         ts=ts * 1_000_000)))
        elif roll < 0.72:
            taker = rng.choice(TAKERS)
            side = rng.choice(("buy", "sell"))
            price = index * (10_050 if side == "buy" else 9_950) // 10_000
            oid = f"{taker}:{len(flow)}"
            live.append(oid)
            add(Place(PERP, NewOrder(oid, taker, side, rng.randint(1, 60), price=_price(price),  # type: ignore[arg-type]
                                     ts=ts * 1_000_000)))
        elif roll < 0.85 and live:
            oid = live.pop(rng.randrange(len(live)))
            add(CancelOrder(PERP, oid, oid.split(":")[0]))
        elif roll < 0.91:
            ref = f"cdep.{shard}.{rng.getrandbits(128):032x}"
            add(FundedDeposit(rng.choice(TAKERS), rng.randint(10, 100) * USDC, ref))
        elif roll < 0.95:
            add(Deposit(rng.choice(TAKERS), rng.randint(10, 100) * USDC))
        elif roll < 0.98:
            add(Withdraw(rng.choice(TAKERS), rng.randint(10, 100) * USDC))
        else:
            add(SetMark(PERP, _price(index + rng.randint(-5, 5) * TICK), index))
    return flow[:n]


def replay(config: ExchangeConfig, shard: str, bodies: list[bytes]) -> tuple[list[ShardResult], ShardMachine]:
    """Apply `bodies` (commands 1..n) in one process, as a single-process replay would."""
    machine = ShardMachine(config, shard)
    return machine.apply_many(list(enumerate(bodies, 1))), machine


def encoded(results: list[ShardResult]) -> list[bytes]:
    """Canonical bytes of each result (published and replayed results compare by these)."""
    return [msgspec.json.encode(r) for r in results]


async def ready_shards(js: JetStreamContext, shards: list[str]) -> None:
    """Create the shards' R3 streams and stores, retrying while the cluster cannot place them."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        try:
            await ensure_shard_topology(js, shards, 3)
            return
        except (NatsError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


async def append(js: JetStreamContext, shard: str, msg_id: str, body: bytes) -> int:
    """Append one command as a gateway does: retried under the same id until confirmed."""
    deadline = time.monotonic() + APPEND_RETRY_S
    while True:
        try:
            ack = await js.publish(shard_subject(shard), body, stream=shard_stream(shard),
                                   headers={"Nats-Msg-Id": msg_id}, timeout=5.0)
            return ack.seq
        except (NatsError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def command_bodies(js: JetStreamContext, shard: str) -> list[bytes]:
    """Return the shard's command stream, in sequence order."""
    return await read_all(js, shard_stream(shard), shard_subject(shard))


async def batches(js: JetStreamContext, shard: str) -> list[ShardBatch]:
    """Return every batch the shard's workers published, in stream order."""
    return [batch_decoder.decode(b)
            for b in await read_all(js, SHARD_EVENTS_STREAM, shard_events_subject(shard))]


def published_results(all_batches: list[ShardBatch]) -> list[ShardResult]:
    """Flatten batches to their results, in published order."""
    return [r for b in all_batches for r in b.results]


async def last_published(js: JetStreamContext, shard: str) -> int:
    """Return the last command sequence whose results are published (0 if none)."""
    return await last_batch_seq(js, SHARD_EVENTS_STREAM, shard_events_subject(shard),
                                lambda data: batch_decoder.decode(data).last_seq)


async def wait_published(js: JetStreamContext, shard: str, seq: int, timeout_s: float) -> None:
    """Wait until the results of command `seq` are published (polling: a bound, not a pace)."""
    await wait_seq(lambda: last_published(js, shard), seq, timeout_s, f"shard {shard}")


def spawn_shard_worker(shard: str, name: str, urls: list[str], log: Path,
                       *extra: str) -> subprocess.Popen[bytes]:
    """Start `strongroom shard-worker` as its own process (to kill -9 it); stderr to `log`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, "-c", "from strongroom.cli import main; main()", "shard-worker",
             "--shard", shard, "--nats", ",".join(urls), "--name", name, *extra],
            env=env, stdout=subprocess.PIPE, stderr=err)
