"""Shard command flows for the settlement tests: a ShardMachine's results as ShardBatches, published."""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats

from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger
from exchange.commands import CancelOrder, Place, Quote, SeedInsurance, Tick, Withdraw
from exchange.engine.messages import NewOrder
from exchange.instruments import load_instruments
from exchange.postings import PostingWriter
from exchange.stream.shard.machine import ShardMachine
from exchange.stream.shard.settle import reserve_deposit
from exchange.stream.shard.wire import (
    FundedDeposit,
    ShardBatch,
    ShardCommand,
    ShardOp,
    ShardResult,
    batch_encoder,
    batch_msg_id,
    encode_command,
    shard_events_subject,
)
from exchange.stream.topology import ensure_shard_topology
from tests.exchange.helpers import BTC, NOW, SOURCES, USDC

CONFIG = load_instruments()
PRICE = BTC // 1000 * 1000  # a multiple of the BTC-PERP tick
TRADERS = ("alice", "bob", "carol")
NATS_WAIT_S = 90.0  # bounds a hang only
T = TypeVar("T")


def cmd(op: ShardOp, ts_ms: int = NOW) -> bytes:
    return encode_command(ShardCommand(op, ts_ms))


def fund_spot(ledger: Ledger, user: str, amount: int, transfer_id: str) -> None:
    """Credit ``user``'s spot balance from the hot wallet (an on-chain deposit)."""
    w = PostingWriter(ledger)
    ledger.transfer(TransferRequest(id=transfer_id, debit_account=w.account("wallet"),
                                    credit_account=w.account(f"a:{user}"), amount=amount,
                                    asset="USDC"))


def opening(ledger: Ledger, shard: str, deposit: int = 10_000 * USDC) -> list[bytes]:
    """Insurance, each trader's reserved collateral deposit and a fresh BTC index."""
    out = [cmd(SeedInsurance(1_000 * USDC))]
    for user in TRADERS:
        ref = reserve_deposit(ledger, user, deposit, shard)
        out.append(cmd(FundedDeposit(user, deposit, ref)))
    out += [cmd(Quote("BTC", s, BTC, NOW)) for s in SOURCES] + [cmd(Tick("BTC", NOW))]
    return out


def random_flow(seed: int, n: int) -> list[bytes]:
    """``n`` seeded commands: orders around the mark, cancels, mark moves, withdrawals."""
    rng = random.Random(seed)
    out: list[bytes] = []
    ts = NOW
    for i in range(n):
        roll = rng.random()
        if roll < 0.7:
            who, side = rng.choice(TRADERS), rng.choice(("buy", "sell"))
            price = PRICE + rng.randint(-3, 3) * 100_000
            out.append(cmd(Place("BTC-PERP", NewOrder(f"o{seed}.{i}", who, side,  # type: ignore[arg-type]
                                                      rng.randint(1, 4), price=price,
                                                      ts=ts * 1_000_000)), ts))
        elif roll < 0.8:
            out.append(cmd(CancelOrder("BTC-PERP", f"o{seed}.{rng.randrange(max(i, 1))}", None), ts))
        elif roll < 0.95:
            ts += rng.randint(0, 30_000)
            px = BTC + rng.randint(-8, 8) * BTC // 100
            out += [cmd(Quote("BTC", s, px, ts), ts) for s in SOURCES] + [cmd(Tick("BTC", ts), ts)]
        else:
            out.append(cmd(Withdraw(rng.choice(TRADERS), rng.randint(1, 3_000) * USDC), ts))
    return out


def apply_batches(machine: ShardMachine, bodies: list[bytes], per_batch: int) -> list[ShardBatch]:
    """Apply ``bodies`` in order; return their results as ShardBatches of ``per_batch`` commands."""
    out: list[ShardBatch] = []
    for start in range(0, len(bodies), per_batch):
        results: list[ShardResult] = [machine.apply(machine.seq + 1, b)
                                      for b in bodies[start:start + per_batch]]
        out.append(ShardBatch(machine.shard, results[0].seq, results[-1].seq, results,
                              machine.state_hash()))
    return out


def funded_flow(ledger: Ledger, shard: str, seed: int, n: int, per_batch: int,
                spot: int = 50_000 * USDC) -> tuple[ShardMachine, list[ShardBatch]]:
    """Fund every trader's spot (``spot.<shard>.<user>``), then run the opening and
    ``random_flow(seed, n)`` through a fresh machine of ``shard``; return it and its batches."""
    for user in TRADERS:
        fund_spot(ledger, user, spot, f"spot.{shard}.{user}")
    machine = ShardMachine(CONFIG, shard)
    return machine, apply_batches(machine, opening(ledger, shard) + random_flow(seed, n), per_batch)


async def retry_nats(call: Callable[[], Awaitable[T]], wait_s: float = NATS_WAIT_S) -> T:
    """Await ``call()`` until NATS stops refusing it (a loaded cluster), for at most ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await call()
        except (nats.errors.Error, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


async def publish_batches(urls: list[str], shard: str, batches: list[ShardBatch]) -> None:
    """Create the shard's streams and publish ``batches`` as its leader would (deduplicated ids)."""
    nc = await nats.connect(servers=urls)
    try:
        js = nc.jetstream()
        await retry_nats(lambda: ensure_shard_topology(js, [shard]))
        for b in batches:
            await retry_nats(functools.partial(js.publish, shard_events_subject(shard),
                                               batch_encoder.encode(b),
                                               headers={"Nats-Msg-Id": batch_msg_id(b)}))
    finally:
        await nc.close()
