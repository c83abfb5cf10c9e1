"""Shard settlement behind a real shard worker: commands in, ledger equal to a replica out.

Commands are appended to ``SHARD_<NAME>`` as a gateway does; the shard worker
(exchange/stream/shard/worker.py) applies them and publishes result batches;
settlement writes their postings to PostgreSQL; the deposit reconciler voids
a reservation whose FundedDeposit was never appended. The ledger is then
compared with a single-process replay of the command stream as stored.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import nats
import pytest
from nats.js.client import JetStreamContext
from sqlalchemy.engine import Engine

from custody.db import make_engine, make_session_factory
from custody.ledger.entry import AccountKind
from custody.ledger.service import Ledger
from exchange.instruments import load_instruments
from exchange.stream.cluster import LocalCluster
from exchange.stream.shard.machine import DEPOSIT_VOIDED
from exchange.stream.shard.settle import (
    DepositReconciler,
    ShardSettlement,
    reserve_deposit,
    run_shard_settlement,
)
from exchange.stream.shard.wire import FundedDeposit, ShardCommand, encode_command, msg_id_of
from exchange.stream.shard.worker import run_shard_worker
from tests.exchange.helpers import NOW, USDC
from tests.exchange.shard.settle_flow import TRADERS, fund_spot, opening, random_flow
from tests.exchange.shard.worker_flow import (
    append,
    batches,
    command_bodies,
    ready_shards,
    replay,
    wait_published,
)

CONFIG = load_instruments()
WAIT_S = 90.0  # bounds a hang only; every wait polls for its condition


@pytest.fixture
def pg(postgres_url: str) -> Iterator[tuple[Ledger, Engine]]:
    engine = make_engine(postgres_url)
    yield Ledger(make_session_factory(engine)), engine
    engine.dispose()


def _spot(ledger: Ledger, user: str) -> int:
    found = ledger.find_account(user, "USDC", AccountKind.USER_AVAILABLE.value)
    return 0 if found is None else ledger.balance(found.id).credit_balance_available


async def _until(check, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT_S
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def _append_all(js: JetStreamContext, shard: str, bodies: list[bytes]) -> None:
    for i, body in enumerate(bodies):
        await append(js, shard, f"r.{shard}.{i}", body)


def test_shard_worker_to_settlement_ledger_equals_replay_and_lost_deposit_is_voided(
    nats_cluster: LocalCluster, pg: tuple[Ledger, Engine],
) -> None:
    ledger, engine = pg
    shard = f"E{uuid.uuid4().hex[:8].upper()}"
    for user in TRADERS:
        fund_spot(ledger, user, 50_000 * USDC, f"spot.{shard}.{user}")
    bodies = opening(ledger, shard) + random_flow(23, 250)
    # A deposit reserved in the ledger whose append never happened (the gateway died).
    lost = reserve_deposit(ledger, "alice", 5_000 * USDC, shard)
    settlement = ShardSettlement(ledger, shard)
    reconciler = DepositReconciler(make_session_factory(engine), shard, void_after_ms=0)

    async def run() -> None:
        nc = await nats.connect(servers=nats_cluster.urls, max_reconnect_attempts=-1)
        js = nc.jetstream()
        await ready_shards(js, [shard])
        stop = asyncio.Event()
        tasks = [asyncio.create_task(run_shard_worker(nats_cluster.urls, CONFIG, shard, name="w",
                                                      stop=stop)),
                 asyncio.create_task(run_shard_settlement(js, settlement, stop, fetch_batch=32))]
        try:
            await _append_all(js, shard, bodies)
            n = len(bodies)
            await wait_published(js, shard, n, WAIT_S)

            async def settled_to(seq: int) -> bool:
                assert not any(t.done() for t in tasks), [t for t in tasks if t.done()]
                return settlement.stats.last_seq >= seq

            await _until(lambda: settled_to(n), "settlement behind the worker")
            spot_before = _spot(ledger, "alice")  # the flow's withdrawals credited spot too
            # The reconciler finds the lost reservation and appends its VoidDeposit.
            tasks.append(asyncio.create_task(reconciler.run(js, stop, every_s=0.2)))

            async def voided() -> bool:
                return reconciler.appended >= 1

            await _until(voided, "no void appended")
            await wait_published(js, shard, n + 1, WAIT_S)
            await _until(lambda: settled_to(n + 1), "void not settled")
            assert _spot(ledger, "alice") == spot_before + 5_000 * USDC
            # The late append of the lost deposit: refused in stream order, spot unchanged.
            late = FundedDeposit("alice", 5_000 * USDC, lost)
            await append(js, shard, msg_id_of(late, ""),
                         encode_command(ShardCommand(late, NOW)))
            await wait_published(js, shard, n + 2, WAIT_S)
            await _until(lambda: settled_to(n + 2), "late deposit not settled")
            published = [r for b in await batches(js, shard) for r in b.results]
            assert published[-1].code == DEPOSIT_VOIDED and not published[-1].postings
            assert _spot(ledger, "alice") == spot_before + 5_000 * USDC
            stored = await command_bodies(js, shard)
        finally:
            stop.set()
            for t in tasks:
                await asyncio.wait_for(t, WAIT_S)
            await nc.close()
        _, replica = replay(CONFIG, shard, stored)
        assert settlement.reconcile(replica) == []
        assert replica.venue.clearing.accounts["alice"].cash > 0

    asyncio.run(run())
