"""Shard settlement over NATS JetStream: the durable consumer, the CLI process, kill -9, voids.

Result batches are produced here by a ShardMachine (what the shard worker
publishes) and published on ``shardevt.<NAME>``; the settlement under test
runs in process or as ``strongroom shard-settlement``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine

from custody.db import make_engine, make_session_factory
from custody.ledger.models import LedgerTransfer
from custody.ledger.service import Ledger
from exchange.stream.cluster import LocalCluster
from exchange.stream.shard.machine import ShardMachine
from exchange.stream.shard.settle import (
    DepositReconciler,
    SettlementRefused,
    ShardSettlement,
    reserve_deposit,
    run_shard_settlement,
)
from exchange.stream.shard.wire import (
    SHARD_EVENTS_STREAM,
    ShardBatch,
    VoidDeposit,
    command_decoder,
    shard_events_subject,
    shard_stream,
    shard_subject,
)
from exchange.stream.topology import ensure_shard_topology
from tests.exchange.helpers import USDC
from tests.exchange.shard.settle_flow import (
    fund_spot,
    funded_flow,
    publish_batches,
    retry_nats,
)

ROOT = Path(__file__).resolve().parents[3]
WAIT_S = 90.0  # bounds a hang only; every wait polls for its condition


@pytest.fixture
def pg(postgres_url: str) -> Iterator[tuple[Ledger, Engine, str]]:
    engine = make_engine(postgres_url)
    yield Ledger(make_session_factory(engine)), engine, postgres_url
    engine.dispose()


def _shard() -> str:
    """A shard name of its own: the cluster (and its streams) outlive a test."""
    return f"T{uuid.uuid4().hex[:10].upper()}"


async def _topology(js: JetStreamContext, shard: str) -> None:
    await retry_nats(lambda: ensure_shard_topology(js, [shard]))


def _rows(engine: Engine, shard: str) -> int:
    with make_session_factory(engine)() as s:
        return s.scalar(select(func.count()).select_from(LedgerTransfer)
                        .where(LedgerTransfer.id.startswith(f"s.{shard}."))) or 0


def _wait_killed_sessions_settled(engine: Engine) -> None:
    """Wait until no other session of the database is inside a transaction.

    A client killed while its COMMIT was on the wire leaves that COMMIT to its server
    backend, which may apply it after the client is gone: count rows only after it did
    (or rolled back) and went idle or away.
    """
    deadline = time.monotonic() + WAIT_S
    while True:
        with engine.connect() as conn:
            busy = conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
                "AND state <> 'idle'")).scalar()
        if not busy:
            return
        assert time.monotonic() < deadline, f"{busy} sessions still mid-transaction"
        time.sleep(0.05)


def _wait_rows(engine: Engine, shard: str, count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while _rows(engine, shard) < count:
        assert time.monotonic() < deadline, f"only {_rows(engine, shard)} of {count} postings"
        time.sleep(0.1)


def _flow(ledger: Ledger, shard: str, n: int, per_batch: int) -> tuple[ShardMachine, list[ShardBatch], int]:
    machine, batches = funded_flow(ledger, shard, 17, n, per_batch)
    postings = {p[0] for b in batches for r in b.results for p in r.postings}
    return machine, batches, len(postings)


def test_shard_settlement_consumer_settles_every_batch_and_ledger_equals_replica(
    nats_cluster: LocalCluster, pg: tuple[Ledger, Engine, str],
) -> None:
    ledger, engine, _ = pg
    shard = _shard()
    machine, batches, expected = _flow(ledger, shard, 200, 5)
    asyncio.run(publish_batches(nats_cluster.urls, shard, batches))
    settlement = ShardSettlement(ledger, shard)

    async def run() -> None:
        nc = await nats.connect(servers=nats_cluster.urls)
        stop = asyncio.Event()
        task = asyncio.create_task(run_shard_settlement(nc.jetstream(), settlement, stop,
                                                        fetch_batch=16))
        try:
            deadline = time.monotonic() + WAIT_S
            while settlement.stats.last_seq < batches[-1].last_seq:
                assert not task.done(), task
                assert time.monotonic() < deadline, settlement.stats
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await task
            await nc.close()

    asyncio.run(run())
    assert _rows(engine, shard) == expected
    assert settlement.stats.batches == len(batches)
    assert settlement.stats.submissions < len(batches)  # queued batches shared submissions
    assert settlement.reconcile(machine) == []


def test_shard_settlement_consumer_undecodable_batch_stops_loudly(
    nats_cluster: LocalCluster, pg: tuple[Ledger, Engine, str],
) -> None:
    ledger, engine, _ = pg
    shard = _shard()

    async def run() -> None:
        nc = await nats.connect(servers=nats_cluster.urls)
        try:
            js = nc.jetstream()
            await _topology(js, shard)
            await retry_nats(lambda: js.publish(shard_events_subject(shard), b'{"shard": 1}'))
            with pytest.raises(SettlementRefused, match="does not decode"):
                await asyncio.wait_for(run_shard_settlement(js, ShardSettlement(ledger, shard),
                                                            asyncio.Event()), WAIT_S)
        finally:
            await nc.close()

    asyncio.run(run())
    assert _rows(engine, shard) == 0


def _cli(shard: str, urls: list[str], database_url: str, log: Path,
         *extra: str) -> subprocess.Popen[bytes]:
    """Start ``strongroom shard-settlement``; its log goes to a file (a pipe could fill up)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STRONGROOM_DATABASE_URL": database_url}
    with log.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, "-c", "from strongroom.cli import main; main()", "shard-settlement",
             "--shard", shard, "--nats", ",".join(urls), *extra],
            env=env, stdout=subprocess.PIPE, stderr=err)


def _wait_consuming(proc: subprocess.Popen[bytes], log: Path, times: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while log.read_bytes().count(b"shard settlement consuming") < times:
        assert proc.poll() is None, f"shard-settlement exited: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)


def test_shard_settlement_process_killed_mid_stream_and_restarted_writes_every_posting_once(
    nats_cluster: LocalCluster, pg: tuple[Ledger, Engine, str], tmp_path: Path,
) -> None:
    ledger, engine, url = pg
    shard = _shard()
    machine, batches, expected = _flow(ledger, shard, 600, 3)
    asyncio.run(publish_batches(nats_cluster.urls, shard, batches))
    args = ("--fetch-batch", "2", "--void-deposits-after-s", "0")
    log = tmp_path / "settle.log"
    first = _cli(shard, nats_cluster.urls, url, log, *args)
    second = None
    try:
        _wait_rows(engine, shard, 1)
        first.kill()  # SIGKILL: no clean shutdown, a round possibly committed but not acked
        first.wait()
        _wait_killed_sessions_settled(engine)
        killed_at = _rows(engine, shard)
        assert killed_at < expected, "the first process finished before it was killed"
        second = _cli(shard, nats_cluster.urls, url, log, *args)
        _wait_consuming(second, log, 2)
        _wait_rows(engine, shard, expected)
        second.terminate()
        out, _ = second.communicate(timeout=WAIT_S)
        assert second.returncode == 0, log.read_text()[-2000:]
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert _rows(engine, shard) == expected
    stats = json.loads(out.decode().strip().splitlines()[-1])
    # The restarted process wrote what was missing and found the rest: nothing twice.
    assert stats["created"] == expected - killed_at
    assert stats["created"] + stats["existing"] == stats["postings"]
    assert ShardSettlement(ledger, shard).reconcile(machine) == []


def test_shard_settlement_process_posting_reused_with_other_body_exits_non_zero(
    nats_cluster: LocalCluster, pg: tuple[Ledger, Engine, str], tmp_path: Path,
) -> None:
    ledger, engine, url = pg
    shard = _shard()
    _, batches, _ = _flow(ledger, shard, 20, 50)
    first = batches[0]
    ShardSettlement(ledger, shard).settle([first])
    written = _rows(engine, shard)
    # A diverged leader republishes the same range with one posting's amount changed.
    results = list(first.results)
    r = next(i for i, res in enumerate(results) if any(p[1] == "single" for p in res.postings))
    tid, kind, debit, credit, amount, pending = next(p for p in results[r].postings if p[1] == "single")
    results[r] = msgspec.structs.replace(results[r], postings=[(tid, kind, debit, credit, amount + 1,
                                                                 pending)])
    forged = msgspec.structs.replace(first, results=results, state_hash=None)
    asyncio.run(publish_batches(nats_cluster.urls, shard, [forged]))
    log = tmp_path / "settle.log"
    proc = _cli(shard, nats_cluster.urls, url, log, "--void-deposits-after-s", "0")
    try:
        proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2
    report = json.loads(log.read_text().strip().splitlines()[-1])
    assert report["error"] == "settlement_refused" and tid in report["message"]
    assert _rows(engine, shard) == written


def test_deposit_reconciler_appends_void_deposit_for_a_lost_append_once(
    nats_cluster: LocalCluster, pg: tuple[Ledger, Engine, str],
) -> None:
    ledger, engine, _ = pg
    shard = _shard()
    fund_spot(ledger, "alice", 100 * USDC, f"spot.{shard}")
    lost = reserve_deposit(ledger, "alice", 40 * USDC, shard)
    reconciler = DepositReconciler(make_session_factory(engine), shard, void_after_ms=0)

    async def run() -> list[tuple[str, bytes]]:
        nc = await nats.connect(servers=nats_cluster.urls)
        try:
            js = nc.jetstream()
            await _topology(js, shard)
            stop = asyncio.Event()
            task = asyncio.create_task(reconciler.run(js, stop, every_s=0.1))
            deadline = time.monotonic() + WAIT_S
            while reconciler.appended < 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # several more rounds: it must not append again
            stop.set()
            await task
            sub = await js.pull_subscribe(shard_subject(shard), stream=shard_stream(shard), config=
                                          ConsumerConfig(deliver_policy=DeliverPolicy.ALL,
                                                         ack_policy=AckPolicy.NONE,
                                                         inactive_threshold=10.0))
            msgs = await retry_nats(lambda: sub.fetch(10, timeout=2.0))
            return [(m.headers.get("Nats-Msg-Id", "") if m.headers else "", m.data) for m in msgs]
        finally:
            await nc.close()

    appended = asyncio.run(run())
    assert reconciler.appended == 1 and len(appended) == 1
    msg_id, body = appended[0]
    assert msg_id.endswith(lost)
    assert command_decoder.decode(body).cmd == VoidDeposit(lost)


async def _settle_until(urls: list[str], settlement: ShardSettlement, last_seq: int) -> None:
    """Run the consumer in process until it has settled command `last_seq`, then stop it."""
    nc = await nats.connect(servers=urls, max_reconnect_attempts=-1)
    stop = asyncio.Event()
    task = asyncio.create_task(run_shard_settlement(nc.jetstream(), settlement, stop, fetch_batch=8))
    try:
        deadline = time.monotonic() + WAIT_S
        while settlement.stats.last_seq < last_seq:
            if task.done():
                task.result()
            assert time.monotonic() < deadline, settlement.stats
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
        await nc.close()


def test_shard_settlement_batch_deleted_from_stream_stops_loudly_across_a_restart(
    nats_cluster: LocalCluster, pg: tuple[Ledger, Engine, str],
) -> None:
    ledger, engine, _ = pg
    shard = _shard()
    _, batches, _ = _flow(ledger, shard, 60, 4)
    half = len(batches) // 2
    asyncio.run(publish_batches(nats_cluster.urls, shard, batches[:half]))
    asyncio.run(_settle_until(nats_cluster.urls, ShardSettlement(ledger, shard),
                              batches[half - 1].last_seq))
    written = _rows(engine, shard)

    async def tamper_and_restart() -> None:
        await publish_batches(nats_cluster.urls, shard, batches[half:])
        nc = await nats.connect(servers=nats_cluster.urls)
        try:
            js = nc.jetstream()
            # An insider deletes the next unsettled batch from SHARDEVT.
            seq = (await js.get_last_msg(SHARD_EVENTS_STREAM, shard_events_subject(shard))).seq
            await js.delete_msg(SHARD_EVENTS_STREAM, seq - (len(batches) - half - 1))
            # A new process (nothing in memory) resumes at the ack floor and sees the hole.
            with pytest.raises(SettlementRefused, match="missing"):
                await asyncio.wait_for(run_shard_settlement(js, ShardSettlement(ledger, shard),
                                                            asyncio.Event()), WAIT_S)
        finally:
            await nc.close()

    asyncio.run(tamper_and_restart())
    assert _rows(engine, shard) == written


def test_shard_settlement_nats_node_lost_mid_stream_writes_every_posting_once(
    nats_cluster: LocalCluster, pg: tuple[Ledger, Engine, str],
) -> None:
    ledger, engine, _ = pg
    shard = _shard()
    machine, batches, expected = _flow(ledger, shard, 300, 2)
    asyncio.run(publish_batches(nats_cluster.urls, shard, batches))
    settlement = ShardSettlement(ledger, shard)
    victim = nats_cluster.nodes[0]

    async def run() -> None:
        nc = await nats.connect(servers=nats_cluster.urls, max_reconnect_attempts=-1)
        stop = asyncio.Event()
        task = asyncio.create_task(run_shard_settlement(nc.jetstream(), settlement, stop,
                                                        fetch_batch=4))
        try:
            deadline = time.monotonic() + WAIT_S
            while settlement.stats.last_seq < batches[len(batches) // 4].last_seq:
                assert not task.done() and time.monotonic() < deadline, settlement.stats
                await asyncio.sleep(0.02)
            nats_cluster.kill_node(victim)
            while settlement.stats.last_seq < batches[-1].last_seq:
                if task.done():
                    task.result()
                assert time.monotonic() < deadline, settlement.stats
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT_S)
            await nc.close()

    try:
        asyncio.run(run())
    finally:
        if victim.process is None or victim.process.poll() is not None:
            nats_cluster.start_node(victim)
    assert _rows(engine, shard) == expected
    assert settlement.reconcile(machine) == []
