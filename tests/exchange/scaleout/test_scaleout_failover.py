"""Engine failover over JetStream: kill -9 the leader mid-stream, the standby carries on exactly."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import msgspec
import nats
from scaleout_helpers import (
    command_bodies,
    event_batches,
    events_by_command,
    lease_holder,
    order_flow,
    ready_topology,
    replay_single_process,
    spawn_engine,
    wait_published,
)

from exchange.engine.instrument import Instrument
from exchange.stream.cluster import LocalCluster
from exchange.stream.publisher import CommandPublisher
from exchange.stream.topology import snapshot_bucket
from exchange.stream.wire import SNAPSHOT_KEY_PREFIX, WorkerSnapshot

ROOT = Path(__file__).resolve().parents[3]
COMMANDS = 2400
KILL_AFTER = 800


async def _failover(cluster: LocalCluster, market: str) -> None:
    nc = await nats.connect(servers=cluster.urls)
    js = nc.jetstream()
    await ready_topology(js, [market])
    leader = spawn_engine(market, "a", cluster.urls, "--snapshot-every", "300")
    assert await lease_holder(js, market, 30.0) == "a"
    standby = spawn_engine(market, "b", cluster.urls, "--snapshot-every", "300")
    try:
        publisher = CommandPublisher(js, {market})
        flow = order_flow(COMMANDS, seed=21)

        async def append_all() -> None:
            for command_id, cmd in flow:
                await publisher.append(market, command_id, cmd)

        # Commands keep flowing in while the leader is killed.
        appending = asyncio.create_task(append_all())
        await wait_published(js, market, KILL_AFTER, 30.0)
        assert not appending.done()
        leader.kill()
        leader.wait()
        await appending
        await wait_published(js, market, COMMANDS, 60.0)
        assert await lease_holder(js, market, 1.0) == "b"

        bodies = await command_bodies(js, market)
        assert len(bodies) == COMMANDS
        expected, state_hash = replay_single_process(Instrument(symbol=market), bodies)
        published = events_by_command(await event_batches(js, market))
        # Every command's events exactly once, in stream order: no lost, no duplicated fill.
        assert [seq for seq, _ in published] == list(range(1, COMMANDS + 1))
        assert [events for _, events in published] == expected
        assert sum(e["type"] == "trade" for events in expected for e in events) > 100

        # The standby snapshots when idle: its book hashes like the single-process replay.
        snaps = await snapshot_bucket(js)
        deadline = time.monotonic() + 60.0
        while True:
            body = msgspec.msgpack.decode((await snaps.get(SNAPSHOT_KEY_PREFIX + market)).value,
                                          type=WorkerSnapshot).book
            if body.command_seq == COMMANDS or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert body.command_seq == COMMANDS
        assert body.state_hash == state_hash
        standby.terminate()
        out, _ = standby.communicate(timeout=20)
        stats = json.loads(out.decode().strip().splitlines()[-1])
        # The standby published the tail after taking over, and nothing before it.
        assert 0 < stats["processed"] < COMMANDS - KILL_AFTER + 1
    finally:
        for proc in (leader, standby):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
        await nc.close()


def test_engine_leader_killed_mid_stream_standby_resumes_without_lost_or_duplicated_fill(
    nats_cluster: LocalCluster,
) -> None:
    asyncio.run(_failover(nats_cluster, "FO1"))
