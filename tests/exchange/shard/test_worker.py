"""The clearing shard worker over a 3-node JetStream cluster: exactly-once results, fenced, recoverable.

Every test compares what the worker published with a single-process replay of
the command stream as stored (exchange/stream/shard/machine.py): same results
(events, postings, clearing events, codes), same state hash.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import nats
import pytest

from exchange.commands import Deposit, Place
from exchange.engine.messages import NewOrder
from exchange.instruments import load_instruments
from exchange.stream.cluster import LocalCluster
from exchange.stream.leader import Fenced, StreamCorrupt
from exchange.stream.shard.machine import ShardMachine, ShardSnapshot
from exchange.stream.shard.snapshots import read_snapshot, write_snapshot
from exchange.stream.shard.wire import ShardCommand, encode_command
from exchange.stream.shard.worker import ShardWorker, run_shard_worker
from exchange.stream.topology import MAX_MSG_BYTES, lease_bucket, shard_lease_key
from tests.exchange.helpers import BTC, NOW, USDC
from tests.exchange.shard.worker_flow import (
    PERP,
    TICK,
    append,
    batches,
    command_bodies,
    encoded,
    published_results,
    ready_shards,
    replay,
    shard_flow,
    wait_published,
)

CONFIG = load_instruments()
PUBLISH_TIMEOUT_S = 90.0
WORKER_EXIT_S = 30.0


async def _connect(cluster: LocalCluster, shard: str) -> tuple[nats.NATS, nats.js.JetStreamContext]:
    nc = await nats.connect(servers=cluster.urls, max_reconnect_attempts=-1,
                            reconnect_time_wait=0.1)
    js = nc.jetstream()
    await ready_shards(js, [shard])
    return nc, js


async def _append_flow(js: nats.js.JetStreamContext, shard: str,
                       flow: list[tuple[str, bytes]]) -> None:
    for msg_id, body in flow:
        await append(js, shard, msg_id, body)


async def _assert_equals_replay(js: nats.js.JetStreamContext, shard: str, n: int) -> ShardMachine:
    """The published results are 1..n, once each, equal to a single-process replay's."""
    bodies = await command_bodies(js, shard)
    assert len(bodies) == n
    expected, machine = replay(CONFIG, shard, bodies)
    all_batches = await batches(js, shard)
    got = published_results(all_batches)
    assert [r.seq for r in got] == list(range(1, n + 1))
    assert encoded(got) == encoded(expected)
    posting_ids = [p[0] for r in got for p in r.postings]
    assert len(posting_ids) == len(set(posting_ids)), "a posting published twice"
    return machine


def test_shard_worker_results_equal_single_process_replay_with_hashes_at_snapshot_points(
        nats_cluster: LocalCluster) -> None:
    async def run() -> None:
        shard, n, every = "SW1", 1200, 250
        nc, js = await _connect(nats_cluster, shard)
        stop = asyncio.Event()
        worker = asyncio.create_task(run_shard_worker(nats_cluster.urls, CONFIG, shard,
                                                      name="w", snapshot_every=every, stop=stop))
        try:
            await _append_flow(js, shard, shard_flow(n, seed=3, shard=shard))
            await wait_published(js, shard, n, PUBLISH_TIMEOUT_S)
            stop.set()
            stats = await asyncio.wait_for(worker, WORKER_EXIT_S)
            machine = await _assert_equals_replay(js, shard, n)
            results = published_results(await batches(js, shard))
            assert sum(len(r.postings) for r in results) > 1000
            assert any(ev["type"] == "LiquidationStarted" for r in results for ev in r.risk), \
                "the flow liquidates someone"
            assert (stats.processed, stats.replayed) == (n, 0)

            # Every batch ending at a multiple of `every` carries the venue's hash there.
            bodies = await command_bodies(js, shard)
            hashes = {}
            probe = ShardMachine(CONFIG, shard)
            for seq, body in enumerate(bodies, 1):
                probe.apply(seq, body)
                if seq % every == 0:
                    hashes[seq] = probe.state_hash()
            stamped = {b.last_seq: b.state_hash for b in await batches(js, shard) if b.state_hash}
            assert stamped == hashes

            # Stopped (SIGTERM): snapshot at the last published command, lease released.
            snap = await read_snapshot(js, shard)
            assert snap is not None
            restored = ShardMachine.restore(CONFIG, shard, snap)
            assert (restored.seq, restored.state_hash()) == (n, machine.state_hash())
            kv = await lease_bucket(js)
            with pytest.raises(nats.js.errors.KeyNotFoundError):
                await kv.get(shard_lease_key(shard))
        finally:
            stop.set()
            await nc.close()

    asyncio.run(run())


def test_shard_worker_crashed_then_restarted_replays_silently_and_publishes_nothing_twice(
        nats_cluster: LocalCluster) -> None:
    async def run() -> None:
        shard, every = "SW2", 200
        nc, js = await _connect(nats_cluster, shard)
        flow = shard_flow(900, seed=4, shard=shard)
        try:
            first = asyncio.create_task(run_shard_worker(nats_cluster.urls, CONFIG, shard,
                                                         name="a", snapshot_every=every))
            await _append_flow(js, shard, flow[:500])
            await wait_published(js, shard, 500, PUBLISH_TIMEOUT_S)
            first.cancel()  # a crash: no snapshot at exit, no lease release
            with pytest.raises(asyncio.CancelledError):
                await first
            snap = await read_snapshot(js, shard)
            assert snap is not None
            snap_seq = msgspec.msgpack.decode(snap, type=ShardSnapshot).seq
            assert 0 < snap_seq <= 500

            await _append_flow(js, shard, flow[500:])
            stop = asyncio.Event()
            second = asyncio.create_task(run_shard_worker(nats_cluster.urls, CONFIG, shard,
                                                          name="b", snapshot_every=every,
                                                          stop=stop))
            await wait_published(js, shard, 900, PUBLISH_TIMEOUT_S)
            stop.set()
            stats = await asyncio.wait_for(second, WORKER_EXIT_S)
            # From the snapshot, the commands already published are replayed, never republished.
            assert stats.replayed == 500 - snap_seq
            assert stats.processed == 400
            await _assert_equals_replay(js, shard, 900)
        finally:
            await nc.close()

    asyncio.run(run())


async def _lead_until(cluster: LocalCluster, js: nats.js.JetStreamContext, shard: str, seq: int,
                      stop: asyncio.Event) -> None:
    """Run a worker until the results of command `seq` are published, then stop it cleanly."""
    task = asyncio.create_task(run_shard_worker(cluster.urls, CONFIG, shard, name="leader",
                                                stop=stop))
    await wait_published(js, shard, seq, PUBLISH_TIMEOUT_S)
    stop.set()
    await asyncio.wait_for(task, WORKER_EXIT_S)


def test_shard_worker_deposed_leader_publishing_is_fenced(nats_cluster: LocalCluster) -> None:
    async def run() -> None:
        shard = "SW3"
        nc, js = await _connect(nats_cluster, shard)
        flow = shard_flow(120, seed=5, shard=shard)
        try:
            await _append_flow(js, shard, flow[:60])
            await _lead_until(nats_cluster, js, shard, 60, asyncio.Event())
            # A leader that published up to 60, then stalled (GC pause, partition) while its
            # lease expired and a new leader took the shard over.
            zombie = ShardWorker(nc, js, CONFIG, shard, name="zombie")
            await zombie.recover()
            assert zombie.published_seq == 60
            await _append_flow(js, shard, flow[60:])
            await _lead_until(nats_cluster, js, shard, 120, asyncio.Event())
            # The zombie wakes up, applies the next commands and tries to publish them.
            bodies = await command_bodies(js, shard)
            done = zombie.apply(list(enumerate(bodies[60:90], 61)))
            batch = zombie.make_batch(done)
            with pytest.raises(Fenced):
                await zombie._publish_one(batch, zombie.encode_batch(batch))
            await _assert_equals_replay(js, shard, 120)
        finally:
            await nc.close()

    asyncio.run(run())


def test_shard_worker_nats_node_lost_mid_stream_results_survive(nats_cluster: LocalCluster) -> None:
    async def run() -> None:
        shard = "SW4"
        nc, js = await _connect(nats_cluster, shard)
        stop = asyncio.Event()
        worker = asyncio.create_task(run_shard_worker(nats_cluster.urls, CONFIG, shard, name="w",
                                                      snapshot_every=150, stop=stop))
        victim = nats_cluster.nodes[0]
        try:
            flow = shard_flow(600, seed=6, shard=shard)
            await _append_flow(js, shard, flow[:300])
            nats_cluster.kill_node(victim)
            await _append_flow(js, shard, flow[300:])
            await wait_published(js, shard, 600, PUBLISH_TIMEOUT_S)
            await _assert_equals_replay(js, shard, 600)
        finally:
            stop.set()
            # The worker survives the node loss (it may stand by and take the shard back).
            await asyncio.wait_for(worker, WORKER_EXIT_S)
            await nc.close()
            if victim.process is None:
                nats_cluster.start_node(victim)

    asyncio.run(run())


def _resting_orders(n: int) -> list[tuple[str, bytes]]:
    """A whale resting `n` one-lot orders on both sides, away from the mark (a large venue)."""
    opening = shard_flow(20, seed=7, shard="SW5")
    out = [*opening, ("r.whale", encode_command(ShardCommand(Deposit("whale", 10**8 * USDC), NOW)))]
    for i in range(n):
        side = "buy" if i % 2 else "sell"
        offset = (i // 2 + 200) * TICK
        price = BTC - offset if side == "buy" else BTC + offset
        oid = f"whale:{i:0>58}"  # long ids: a big book in few commands
        order = NewOrder(oid, "whale", side, 1, price=price, ts=NOW * 1_000_000)  # type: ignore[arg-type]
        out.append((oid, encode_command(ShardCommand(Place(PERP, order), NOW))))
    return out


def test_shard_worker_snapshot_over_one_mib_restores_through_object_store(
        nats_cluster: LocalCluster) -> None:
    async def run() -> None:
        shard = "SW5"
        nc, js = await _connect(nats_cluster, shard)
        flow = _resting_orders(8_000)
        try:
            for start in range(0, len(flow), 200):  # appended concurrently: order is the stream's
                await asyncio.gather(*(append(js, shard, i, b) for i, b in flow[start:start + 200]))
            n = len(flow)
            await _lead_until(nats_cluster, js, shard, n, asyncio.Event())
            snap = await read_snapshot(js, shard)
            assert snap is not None and len(snap) > MAX_MSG_BYTES
            assert msgspec.msgpack.decode(snap, type=ShardSnapshot).seq == n

            # A new leader starts from that snapshot: nothing to replay, and it carries on.
            tail = shard_flow(60, seed=8, shard=shard)[20:]
            await _append_flow(js, shard, tail)
            stop = asyncio.Event()
            task = asyncio.create_task(run_shard_worker(nats_cluster.urls, CONFIG, shard,
                                                        name="next", stop=stop))
            await wait_published(js, shard, n + len(tail), PUBLISH_TIMEOUT_S)
            stop.set()
            stats = await asyncio.wait_for(task, WORKER_EXIT_S)
            assert (stats.replayed, stats.processed) == (0, len(tail))
            await _assert_equals_replay(js, shard, n + len(tail))
        finally:
            await nc.close()

    asyncio.run(run())


def test_shard_worker_snapshot_with_forged_hash_stops_as_corrupt(nats_cluster: LocalCluster) -> None:
    # An insider with write access to the store edits a snapshot (or the state under its
    # hash): the worker must refuse to lead from it, not publish results of a forged venue.
    async def run() -> None:
        shard = "SW6"
        nc, js = await _connect(nats_cluster, shard)
        try:
            flow = shard_flow(80, seed=9, shard=shard)
            await _append_flow(js, shard, flow)
            await _lead_until(nats_cluster, js, shard, 80, asyncio.Event())
            snap = await read_snapshot(js, shard)
            assert snap is not None
            decoded = msgspec.msgpack.decode(snap, type=ShardSnapshot)
            forged = msgspec.structs.replace(decoded, venue=msgspec.structs.replace(
                decoded.venue, state_hash="0" * 64))
            await write_snapshot(js, shard, msgspec.msgpack.encode(forged))
            with pytest.raises(StreamCorrupt, match="state hash"):
                await asyncio.wait_for(run_shard_worker(nats_cluster.urls, CONFIG, shard,
                                                        name="w"), WORKER_EXIT_S)
        finally:
            await nc.close()

    asyncio.run(run())


@pytest.mark.parametrize(("args", "message"), [
    (["--shard", "main.x"], "shard name was"),
    (["--shard", "MAIN", "--snapshot-every", "0"], "snapshot-every"),
    (["--shard", "MAIN", "--instruments", "missing.toml"], "does not exist"),
])
def test_cli_shard_worker_invalid_options_refused_before_connecting(
        args: list[str], message: str) -> None:
    from click.testing import CliRunner

    from strongroom.cli import main

    result = CliRunner().invoke(main, ["shard-worker", "--nats", "nats://127.0.0.1:1", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_cli_shard_worker_inconsistent_instrument_file_refused(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from strongroom.cli import main

    bad = tmp_path / "instruments.toml"
    for text, message in (("[[instrument]]\nsymbol = 'X-PERP'\nkind = 'swap'\n", "kind was 'swap'"),
                          ("[[instrument]]\nsymbol = 'X-PERP'\nkind = 'option'\n", "missing"),
                          ("[[instrument]\n", "TOML")):
        bad.write_text(text)
        result = CliRunner().invoke(main, ["shard-worker", "--nats", "nats://127.0.0.1:1",
                                           "--instruments", str(bad)])
        assert result.exit_code == 2, result.output
        assert message in result.output


def test_shard_worker_metrics_count_applied_published_and_no_lag_when_caught_up(
        nats_cluster: LocalCluster) -> None:
    from exchange.stream.shard.metrics import ShardMetrics

    metrics = ShardMetrics()

    def value(name: str, **labels: str) -> float | None:
        for family in metrics.registry.collect():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return None

    async def run() -> None:
        shard, n = "SW7", 300
        nc, js = await _connect(nats_cluster, shard)
        stop = asyncio.Event()
        worker = asyncio.create_task(run_shard_worker(nats_cluster.urls, CONFIG, shard, name="m",
                                                      snapshot_every=100, stop=stop,
                                                      metrics=metrics))
        try:
            await _append_flow(js, shard, shard_flow(n, seed=10, shard=shard))
            await wait_published(js, shard, n, PUBLISH_TIMEOUT_S)
            assert value("strongroom_shard_leader", shard=shard, worker="m") == 1
            deadline = asyncio.get_running_loop().time() + PUBLISH_TIMEOUT_S
            while value("strongroom_shard_engine_lag_commands", shard=shard) != 0:
                assert asyncio.get_running_loop().time() < deadline, "lag never reached 0"
                await asyncio.sleep(0.05)
            results = published_results(await batches(js, shard))
            refused = sum(1 for r in results if r.code)
            assert value("strongroom_shard_commands_applied_total", shard=shard) == n
            refused_total = sum(float(s.value) for f in metrics.registry.collect()
                                for s in f.samples
                                if s.name == "strongroom_shard_commands_refused_total"
                                and s.labels.get("shard") == shard)
            assert refused_total == refused
            assert value("strongroom_shard_published_seq", shard=shard) == n
            assert value("strongroom_shard_stream_last_seq", shard=shard) == n
            assert value("strongroom_shard_batches_published_total", shard=shard) == len(
                await batches(js, shard))
            assert (value("strongroom_shard_snapshots_total", shard=shard) or 0) >= 3
        finally:
            stop.set()
            await asyncio.wait_for(worker, WORKER_EXIT_S)
            await nc.close()
        # The term ended: the standby's leader-only gauges are dropped.
        assert value("strongroom_shard_leader", shard=shard, worker="m") == 0
        assert value("strongroom_shard_engine_lag_commands", shard=shard) is None

    asyncio.run(run())


def test_shard_worker_snapshot_under_another_instrument_config_stops_as_corrupt(
        nats_cluster: LocalCluster) -> None:
    # The instruments of a shard change through its stream (ListInstrument), never by
    # editing the file under a running shard: a worker started with another file refuses
    # the snapshot instead of publishing results its predecessors would not have.
    from tests.exchange.helpers import config

    async def run() -> None:
        shard = "SW8"
        nc, js = await _connect(nats_cluster, shard)
        try:
            await _append_flow(js, shard, shard_flow(40, seed=11, shard=shard))
            await _lead_until(nats_cluster, js, shard, 40, asyncio.Event())
            other = config(taker_fee_ppm=700)
            with pytest.raises(StreamCorrupt, match="another instrument config"):
                await asyncio.wait_for(run_shard_worker(nats_cluster.urls, other, shard,
                                                        name="w"), WORKER_EXIT_S)
        finally:
            await nc.close()

    asyncio.run(run())


def test_shard_worker_idle_snapshot_once_quiet_then_not_after_every_trickle(
        nats_cluster: LocalCluster) -> None:
    async def snapshot_seq(js: nats.js.JetStreamContext, shard: str) -> int:
        data = await read_snapshot(js, shard)
        return 0 if data is None else msgspec.msgpack.decode(data, type=ShardSnapshot).seq

    async def run() -> None:
        shard = "SW9"
        nc, js = await _connect(nats_cluster, shard)
        stop = asyncio.Event()
        worker = asyncio.create_task(run_shard_worker(nats_cluster.urls, CONFIG, shard, name="w",
                                                      snapshot_every=100_000, stop=stop))
        try:
            flow = shard_flow(51, seed=12, shard=shard)
            await _append_flow(js, shard, flow[:50])
            await wait_published(js, shard, 50, PUBLISH_TIMEOUT_S)
            deadline = asyncio.get_running_loop().time() + PUBLISH_TIMEOUT_S
            while await snapshot_seq(js, shard) != 50:  # a quiet second: snapshot
                assert asyncio.get_running_loop().time() < deadline, "no idle snapshot"
                await asyncio.sleep(0.1)
            await _append_flow(js, shard, flow[50:])
            await wait_published(js, shard, 51, PUBLISH_TIMEOUT_S)
            await asyncio.sleep(1.5)  # quiet again, but the last idle snapshot is recent
            assert await snapshot_seq(js, shard) == 50
        finally:
            stop.set()
            await asyncio.wait_for(worker, WORKER_EXIT_S)
            await nc.close()

    asyncio.run(run())


def test_shard_worker_snapshot_with_lost_chunk_recovers_by_replaying_the_whole_stream(
        nats_cluster: LocalCluster) -> None:
    # A snapshot object that no longer matches its meta record (a chunk lost) is no
    # snapshot: the stream is the source of truth, so the next leader replays it all.
    from exchange.stream.shard.snapshots import OBJECT_STREAM
    from exchange.stream.topology import shard_snapshot_store

    async def run() -> None:
        shard = "SW10"
        nc, js = await _connect(nats_cluster, shard)
        try:
            flow = shard_flow(150, seed=13, shard=shard)
            await _append_flow(js, shard, flow[:100])
            await _lead_until(nats_cluster, js, shard, 100, asyncio.Event())
            info = await (await shard_snapshot_store(js)).get_info(shard)
            chunk = await js.get_msg(OBJECT_STREAM, seq=1,
                                     subject=f"$O.SHARD_SNAPSHOT.C.{info.nuid}", next=True)
            await js.delete_msg(OBJECT_STREAM, chunk.seq)
            await _append_flow(js, shard, flow[100:])
            stop = asyncio.Event()
            task = asyncio.create_task(run_shard_worker(nats_cluster.urls, CONFIG, shard,
                                                        name="next", stop=stop))
            await wait_published(js, shard, 150, PUBLISH_TIMEOUT_S)
            stop.set()
            stats = await asyncio.wait_for(task, WORKER_EXIT_S)
            assert (stats.replayed, stats.processed) == (100, 50)
            await _assert_equals_replay(js, shard, 150)
        finally:
            await nc.close()

    asyncio.run(run())
