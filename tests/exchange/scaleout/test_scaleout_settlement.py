"""Settlement from the events stream: ledger postings with stream-derived ids, written once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scaleout_helpers import event_batches, order_flow, ready_topology, wait_published
from sqlalchemy import func, select

from custody.db import make_engine, make_session_factory
from custody.ledger.codes import LedgerCode, LedgerError
from custody.ledger.entry import AccountKind
from custody.ledger.models import LedgerTransfer
from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger
from exchange.engine.instrument import Instrument
from exchange.engine.messages import Trade
from exchange.stream.cluster import LocalCluster
from exchange.stream.publisher import CommandPublisher
from exchange.stream.settlement import (
    FeeSchedule,
    Settlement,
    SettlementRefused,
    fee_postings,
    run_settlement,
)
from exchange.stream.topology import EVENTS_STREAM
from exchange.stream.wire import CommandEvents, EventBatch
from exchange.stream.worker import run_worker

ROOT = Path(__file__).resolve().parents[3]
FEES = FeeSchedule("USDC", taker_fee_ppm=500, maker_fee_ppm=200)
DRAIN_TIMEOUT_S = 30.0


@pytest.fixture
def pg_ledger(postgres_url: str) -> Iterator[tuple[Ledger, object]]:
    engine = make_engine(postgres_url)
    try:
        yield Ledger(make_session_factory(engine)), engine
    finally:
        engine.dispose()


def _fee_rows(engine: object, market: str) -> tuple[int, int]:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        count, total = conn.execute(select(func.count(), func.coalesce(func.sum(LedgerTransfer.amount), 0))
                                    .where(LedgerTransfer.id.like(f"fee.{market}.%"))).one()
    return int(count), int(total)


async def _settle_all(js: nats.js.JetStreamContext, settlement: Settlement, durable: str,
                      market: str, batches: int) -> None:
    """Run the consumer until it has settled and acknowledged `batches` batches, then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_settlement(js, settlement, stop, durable=durable,
                                              subject=f"evt.{market}"))
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        await asyncio.sleep(0.1)
        if task.done():  # the consumer rides out NATS trouble: it must not have stopped
            task.result()
            raise AssertionError("settlement consumer stopped before it was told to")
        assert time.monotonic() < deadline, ("settlement did not drain", settlement.stats)
        try:
            info = await js.consumer_info(EVENTS_STREAM, durable)
        except (nats.js.errors.NotFoundError, nats.js.errors.ServiceUnavailableError,
                nats.errors.TimeoutError):
            continue
        if settlement.stats.batches >= batches and info.num_ack_pending == 0:
            break
    stop.set()
    await task


def test_settlement_consumer_restarted_writes_no_duplicate_ledger_entries(
    nats_cluster: LocalCluster, pg_ledger: tuple[Ledger, object],
) -> None:
    ledger, engine = pg_ledger
    market = "ST1"

    async def run() -> None:
        nc = await nats.connect(servers=nats_cluster.urls)
        js = nc.jetstream()
        await ready_topology(js, [market])
        try:
            publisher = CommandPublisher(js, {market})
            for command_id, cmd in order_flow(400, seed=3):
                await publisher.append(market, command_id, cmd)
            stop = asyncio.Event()
            worker = asyncio.create_task(run_worker(nats_cluster.urls, Instrument(symbol=market),
                                                    name="w", stop=stop))
            await wait_published(js, market, 400, 30.0)
            stop.set()
            await worker
            batches = await event_batches(js, market)
            expected = [p for b in batches for p in fee_postings(b, FEES)]
            assert len(expected) > 50

            first = Settlement(ledger, FEES)
            await _settle_all(js, first, "st1", market, len(batches))
            assert first.stats.created == len(expected)
            assert _fee_rows(engine, market) == (len(expected), sum(p.amount for p in expected))

            # Worst case of a crash between the ledger commit and the acks: the consumer
            # starts over and every batch is delivered again.
            await js.delete_consumer(EVENTS_STREAM, "st1")
            restarted = Settlement(ledger, FEES)
            await _settle_all(js, restarted, "st1", market, len(batches))
            assert (restarted.stats.created, restarted.stats.existing) == (0, len(expected))
            assert _fee_rows(engine, market) == (len(expected), sum(p.amount for p in expected))
            fees_account = ledger.find_account("platform", "USDC", AccountKind.FEES.value)
            assert fees_account is not None
            assert fees_account.balance.credit_balance_posted >= sum(p.amount for p in expected)
        finally:
            await nc.close()

    asyncio.run(run())


def _trade(price: int, qty: int, taker: str = "bob", maker: str = "alice") -> Trade:
    return Trade(seq=1, maker="m", taker="t", price=price, qty=qty, taker_side="buy",
                 maker_account=maker, taker_account=taker, ts=0)


def test_settlement_transfer_id_taken_with_other_amount_refused(
    pg_ledger: tuple[Ledger, object],
) -> None:
    ledger, _ = pg_ledger
    settlement = Settlement(ledger, FEES)
    batch = EventBatch("ST2", 7, 7, [CommandEvents(7, [_trade(10_000, 3)])])
    # An insider (or a bug) wrote a different transfer under the id settlement derives.
    payer = ledger.ensure_account("bob", "USDC", AccountKind.USER_MARGIN.value).id
    fees = ledger.ensure_account("platform", "USDC", AccountKind.FEES.value).id
    ledger.transfer(TransferRequest(id="fee.ST2.7.0.t", debit_account=payer, credit_account=fees,
                                    amount=1, asset="USDC"))
    with pytest.raises(SettlementRefused):
        settlement.settle(batch)
    # Linked batch: the maker fee of the same trade was not written either.
    with pytest.raises(LedgerError) as missing:
        ledger.get_transfer("fee.ST2.7.0.m")
    assert missing.value.code is LedgerCode.TRANSFER_NOT_FOUND


@settings(deadline=None, max_examples=50)
@given(st.lists(st.lists(st.tuples(st.integers(1, 10**9), st.integers(1, 10**6)), max_size=5),
                min_size=1, max_size=8))
def test_fee_postings_any_trades_ids_unique_and_amounts_floored(
    trades: list[list[tuple[int, int]]],
) -> None:
    commands = [CommandEvents(seq, [_trade(p, q) for p, q in cmd])
                for seq, cmd in enumerate(trades, 1)]
    postings = fee_postings(EventBatch("PROP", 1, len(trades), commands), FEES)
    ids = [p.transfer_id for p in postings]
    assert len(ids) == len(set(ids))
    expected = sum(p * q * FEES.taker_fee_ppm // 1_000_000 + p * q * FEES.maker_fee_ppm // 1_000_000
                   for cmd in trades for p, q in cmd)
    assert sum(p.amount for p in postings) == expected
    assert all(p.amount > 0 for p in postings)


def _wait_rows(engine: object, market: str, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while _fee_rows(engine, market)[0] < count:
        assert time.monotonic() < deadline, f"only {_fee_rows(engine, market)[0]} of {count} rows"
        time.sleep(0.1)


def test_settlement_worker_process_killed_and_restarted_writes_each_fee_once(
    nats_cluster: LocalCluster, pg_ledger: tuple[Ledger, object], postgres_url: str,
) -> None:
    _, engine = pg_ledger
    market = "ST3"

    async def produce() -> list[int]:
        nc = await nats.connect(servers=nats_cluster.urls)
        js = nc.jetstream()
        await ready_topology(js, [market])
        try:
            publisher = CommandPublisher(js, {market})
            for command_id, cmd in order_flow(300, seed=11):
                await publisher.append(market, command_id, cmd)
            stop = asyncio.Event()
            worker = asyncio.create_task(run_worker(nats_cluster.urls, Instrument(symbol=market),
                                                    name="w", stop=stop))
            await wait_published(js, market, 300, 30.0)
            stop.set()
            await worker
            return [p.amount for b in await event_batches(js, market)
                    for p in fee_postings(b, FEES)]
        finally:
            await nc.close()

    amounts = asyncio.run(produce())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STRONGROOM_DATABASE_URL": postgres_url}
    args = [sys.executable, "-c", "from strongroom.cli import main; main()", "settlement-worker",
            "--market", market, "--nats", ",".join(nats_cluster.urls)]
    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_rows(engine, market, 1, 60.0)
        first.kill()  # mid-stream or after: either way nothing may be written twice
        first.wait()
        second = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert second.stderr is not None
        while b"settlement consuming" not in second.stderr.readline():
            assert second.poll() is None, "settlement worker exited"
        _wait_rows(engine, market, len(amounts), 60.0)
        time.sleep(1.0)  # let any redelivered batch land
        second.terminate()
        out, _ = second.communicate(timeout=30)
        assert second.returncode == 0
        assert _fee_rows(engine, market) == (len(amounts), sum(amounts))
        # What the restarted worker wrote anew plus what it found written is all of it.
        stats = json.loads(out.decode().strip().splitlines()[-1])
        assert stats["created"] <= len(amounts)
    finally:
        for proc in (first,):
            if proc.poll() is None:
                proc.kill()
