"""Shard worker failover between `strongroom shard-worker` processes: kill -9 and SIGTERM.

The leader process dies (SIGKILL) while commands keep flowing in; the standby
process takes the lease once it expires, restores the snapshot from the object
store, replays silently up to the last published batch and carries on: every
command's results (events, postings, clearing events) are published exactly
once, equal to a single-process replay of the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
from nats.js.client import JetStreamContext

from exchange.instruments import load_instruments
from exchange.stream.cluster import LocalCluster
from exchange.stream.shard.machine import ShardSnapshot
from exchange.stream.shard.snapshots import read_snapshot
from exchange.stream.topology import shard_lease_key
from tests.exchange.scaleout.scaleout_helpers import lease_holder
from tests.exchange.shard.worker_flow import (
    ROOT,
    append,
    batches,
    command_bodies,
    encoded,
    last_published,
    published_results,
    ready_shards,
    replay,
    shard_flow,
    spawn_shard_worker,
    wait_published,
)

log = logging.getLogger(__name__)
INSTRUMENTS = ROOT / "exchange" / "data" / "instruments.toml"
CONFIG = load_instruments(INSTRUMENTS)
COMMANDS = 2000
KILL_AFTER = 700
LEASE_WAIT_S = 60.0
PUBLISH_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = 30.0


@contextlib.asynccontextmanager
async def _leader_and_standby(
    cluster: LocalCluster, shard: str, logs: Path, snapshot_every: int,
) -> AsyncIterator[tuple[JetStreamContext, subprocess.Popen[bytes], subprocess.Popen[bytes]]]:
    """Start worker process "a", wait until it leads `shard`, start standby "b"; kill both after."""
    nc = await nats.connect(servers=cluster.urls, max_reconnect_attempts=-1)
    js = nc.jetstream()
    await ready_shards(js, [shard])
    args = ("--instruments", str(INSTRUMENTS), "--snapshot-every", str(snapshot_every))
    procs = [spawn_shard_worker(shard, "a", cluster.urls, logs / "a.log", *args)]
    try:
        assert await lease_holder(js, shard_lease_key(shard), LEASE_WAIT_S) == "a"
        procs.append(spawn_shard_worker(shard, "b", cluster.urls, logs / "b.log", *args))
        yield js, procs[0], procs[1]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=EXIT_TIMEOUT_S)
        await nc.close()


def _stats(out: bytes) -> dict[str, int]:
    return json.loads(out.decode().strip().splitlines()[-1])


async def _failover(cluster: LocalCluster, shard: str, logs: Path) -> None:
    async with _leader_and_standby(cluster, shard, logs, 250) as (js, leader, standby):
        flow = shard_flow(COMMANDS, seed=21, shard=shard)

        async def append_all() -> None:
            for msg_id, body in flow:
                await append(js, shard, msg_id, body)

        # Commands keep flowing in while the leader is killed.
        appending = asyncio.create_task(append_all())
        await wait_published(js, shard, KILL_AFTER, PUBLISH_TIMEOUT_S)
        assert not appending.done()
        leader.kill()
        killed_at = time.monotonic()
        leader.wait()
        at_kill = await last_published(js, shard)  # the dead leader's last batch
        while await last_published(js, shard) == at_kill:
            assert time.monotonic() - killed_at < PUBLISH_TIMEOUT_S
            await asyncio.sleep(0.02)
        # kill -9 to the standby's first batch (lease TTL + standby poll + recovery).
        log.warning("shard failover: %.2f s", time.monotonic() - killed_at)
        await appending
        await wait_published(js, shard, COMMANDS, PUBLISH_TIMEOUT_S)
        assert await lease_holder(js, shard_lease_key(shard), 1.0) == "b"

        bodies = await command_bodies(js, shard)
        assert len(bodies) == COMMANDS
        expected, machine = replay(CONFIG, shard, bodies)
        got = published_results(await batches(js, shard))
        # Every command's results exactly once, in stream order: no lost, no duplicated
        # result or posting.
        assert [r.seq for r in got] == list(range(1, COMMANDS + 1))
        assert encoded(got) == encoded(expected)
        posting_ids = [p[0] for r in got for p in r.postings]
        assert len(posting_ids) == len(set(posting_ids)) > 1000
        assert any(ev["type"] == "LiquidationStarted" for r in got for ev in r.risk)

        # SIGTERM: the standby snapshots at the last published command, releases, exits.
        standby.send_signal(signal.SIGTERM)
        out, _ = standby.communicate(timeout=EXIT_TIMEOUT_S)
        stats = _stats(out)
        assert 0 < stats["processed"] <= COMMANDS - at_kill
        # It restored the leader's last snapshot (every 250 commands): at most 250 to replay.
        assert stats["replayed"] <= 250
        snap = await read_snapshot(js, shard)
        assert snap is not None
        assert msgspec.msgpack.decode(snap, type=ShardSnapshot).seq == COMMANDS
        restored = machine.restore(CONFIG, shard, snap)
        assert restored.state_hash() == machine.state_hash()


def test_shard_worker_leader_killed_mid_stream_standby_resumes_without_lost_or_duplicated_result(
        nats_cluster: LocalCluster, tmp_path: Path) -> None:
    asyncio.run(_failover(nats_cluster, "FO1", tmp_path))


async def _planned(cluster: LocalCluster, shard: str, logs: Path) -> None:
    async with _leader_and_standby(cluster, shard, logs, 100_000) as (js, leader, standby):
        flow = shard_flow(600, seed=22, shard=shard)
        for msg_id, body in flow[:400]:
            await append(js, shard, msg_id, body)
        await wait_published(js, shard, 400, PUBLISH_TIMEOUT_S)
        leader.send_signal(signal.SIGTERM)
        out, _ = leader.communicate(timeout=EXIT_TIMEOUT_S)
        assert leader.returncode == 0
        assert _stats(out)["processed"] == 400
        # Snapshotted at exit (or when idle; no snapshot point was reached): at the last
        # published command, and the standby restores it.
        snap = await read_snapshot(js, shard)
        assert snap is not None
        assert msgspec.msgpack.decode(snap, type=ShardSnapshot).seq == 400
        for msg_id, body in flow[400:]:
            await append(js, shard, msg_id, body)
        await wait_published(js, shard, 600, PUBLISH_TIMEOUT_S)
        assert await lease_holder(js, shard_lease_key(shard), 1.0) == "b"
        standby.send_signal(signal.SIGTERM)
        out, _ = standby.communicate(timeout=EXIT_TIMEOUT_S)
        # The standby started from the leader's exit snapshot: nothing replayed.
        assert (_stats(out)["replayed"], _stats(out)["processed"]) == (0, 200)
        expected, _ = replay(CONFIG, shard, await command_bodies(js, shard))
        assert encoded(published_results(await batches(js, shard))) == encoded(expected)


def test_shard_worker_sigterm_snapshots_releases_lease_standby_resumes_with_no_replay(
        nats_cluster: LocalCluster, tmp_path: Path) -> None:
    asyncio.run(_planned(nats_cluster, "PL1", tmp_path))
