"""Command gateway, fencing and NATS node loss of the scale-out mode."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest
from scaleout_helpers import (
    command_bodies,
    event_batches,
    events_by_command,
    order_flow,
    ready_topology,
    replay_single_process,
    wait_published,
)

from exchange.engine.instrument import Instrument
from exchange.engine.messages import NewOrder
from exchange.engine.replay import parse_line
from exchange.stream.cluster import LocalCluster
from exchange.stream.publisher import CommandPublisher, StreamCode, StreamRefused
from exchange.stream.topology import command_stream
from exchange.stream.wire import CommandEvents, EventBatch, batch_encoder
from exchange.stream.worker import EngineWorker, Fenced, StreamCorrupt, run_worker

APPEND_RETRY_S = 20.0


async def _connect(cluster: LocalCluster, market: str) -> tuple[nats.NATS, nats.js.JetStreamContext]:
    nc = await nats.connect(servers=cluster.urls, max_reconnect_attempts=-1,
                            reconnect_time_wait=0.1)
    js = nc.jetstream()
    await ready_topology(js, [market])
    return nc, js


async def _append_retrying(publisher: CommandPublisher, market: str, command_id: str,
                           cmd: NewOrder) -> None:
    # A client retries an unconfirmed append with the same id: the stream stores it once.
    deadline = time.monotonic() + APPEND_RETRY_S
    while True:
        try:
            await publisher.append(market, command_id, cmd)
            return
        except StreamRefused as exc:
            if exc.code is not StreamCode.STREAM_UNAVAILABLE or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def test_publisher_same_command_id_twice_stored_once(nats_cluster: LocalCluster) -> None:
    async def run() -> None:
        nc, js = await _connect(nats_cluster, "PUB1")
        try:
            publisher = CommandPublisher(js, {"PUB1"})
            order = NewOrder(id="o1", account="alice", side="buy", qty=1, price=100)
            first = await publisher.append("PUB1", "req-1", order)
            again = await publisher.append("PUB1", "req-1", order)
            assert (again.seq, again.duplicate) == (first.seq, True)
            info = await js.stream_info(command_stream("PUB1"))
            assert info.state.messages == 1
        finally:
            await nc.close()

    asyncio.run(run())


@pytest.mark.parametrize(("market", "command_id", "raw", "code"), [
    ("NOPE", "req-1", b'{"op":"cancel","id":"x"}', StreamCode.UNKNOWN_MARKET),
    ("PUB2", "bad id", b'{"op":"cancel","id":"x"}', StreamCode.BAD_COMMAND_ID),
    ("PUB2", "req-1", b'{"op":"new","id":"x"', StreamCode.BAD_COMMAND),
    ("PUB2", "req-1", b'{"op":"launch"}', StreamCode.BAD_COMMAND),
    ("PUB2", "req-1", b'{"op":"new","id":"x","account":"bad account!","side":"buy","qty":1,'
                      b'"price":1}', StreamCode.BAD_COMMAND),
    ("PUB2", "req-1", b'{"op":"malformed","line":1,"error":"x"}', StreamCode.BAD_COMMAND),
])
def test_publisher_invalid_command_refused_nothing_stored(
    nats_cluster: LocalCluster, market: str, command_id: str, raw: bytes, code: StreamCode,
) -> None:
    async def run() -> None:
        nc, js = await _connect(nats_cluster, "PUB2")
        try:
            publisher = CommandPublisher(js, {"PUB2"})
            before = (await js.stream_info(command_stream("PUB2"))).state.messages
            with pytest.raises(StreamRefused) as refused:
                await publisher.append(market, command_id, raw)
            assert refused.value.code is code
            assert (await js.stream_info(command_stream("PUB2"))).state.messages == before
        finally:
            await nc.close()

    asyncio.run(run())


def test_engine_deposed_leader_publishing_is_fenced(nats_cluster: LocalCluster) -> None:
    async def run() -> None:
        market = "FEN1"
        nc, js = await _connect(nats_cluster, market)
        instrument = Instrument(symbol=market)
        try:
            publisher = CommandPublisher(js, {market})
            flow = order_flow(60, seed=5)
            for command_id, cmd in flow[:30]:
                await publisher.append(market, command_id, cmd)
            stop = asyncio.Event()
            await _lead_until(nats_cluster, instrument, js, 30, stop)
            # A worker that led up to 30, then stalled (GC pause, partition) while its lease
            # expired and a new leader took the market over.
            zombie = EngineWorker(nc, js, instrument, name="zombie")
            await zombie.recover()
            assert zombie.published_seq == 30
            for command_id, cmd in flow[30:]:
                await publisher.append(market, command_id, cmd)
            await _lead_until(nats_cluster, instrument, js, 60, asyncio.Event())
            # The zombie wakes up, processes the next commands and tries to publish them.
            bodies = await command_bodies(js, market)
            zombie.book.process_many(parse_line(i, b, skip_invalid=True)
                                     for i, b in enumerate(bodies[30:45], 31))
            batch = EventBatch(market, 31, 45, [CommandEvents(45, zombie.book.take_events())])
            with pytest.raises(Fenced):
                await zombie._publish_one(batch, batch_encoder.encode(batch))
            published = events_by_command(await event_batches(js, market))
            assert [seq for seq, _ in published] == list(range(1, 61))
        finally:
            await nc.close()

    asyncio.run(run())


async def _lead_until(cluster: LocalCluster, instrument: Instrument,
                      js: nats.js.JetStreamContext, seq: int, stop: asyncio.Event) -> None:
    """Run a worker until the events of command `seq` are published, then stop it cleanly."""
    task = asyncio.create_task(run_worker(cluster.urls, instrument, name="leader", stop=stop))
    await wait_published(js, instrument.symbol, seq, 20.0)
    stop.set()
    await task


def test_engine_nats_node_lost_mid_stream_commands_and_events_survive(
    nats_cluster: LocalCluster,
) -> None:
    async def run() -> None:
        market = "NL1"
        nc, js = await _connect(nats_cluster, market)
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(nats_cluster.urls, Instrument(symbol=market),
                                                name="w", stop=stop))
        victim = nats_cluster.nodes[0]
        try:
            publisher = CommandPublisher(js, {market})
            flow = order_flow(600, seed=7)
            for command_id, cmd in flow[:300]:
                await _append_retrying(publisher, market, command_id, cmd)
            nats_cluster.kill_node(victim)
            for command_id, cmd in flow[300:]:
                await _append_retrying(publisher, market, command_id, cmd)
            await wait_published(js, market, 600, 40.0)
            bodies = await command_bodies(js, market)
            assert len(bodies) == 600
            expected, _ = replay_single_process(Instrument(symbol=market), bodies)
            published = events_by_command(await event_batches(js, market))
            assert [seq for seq, _ in published] == list(range(1, 601))
            assert [events for _, events in published] == expected
        finally:
            stop.set()
            # The worker survives the node loss (it may stand by and take the market back).
            await asyncio.wait_for(worker, 15.0)
            await nc.close()
            if victim.process is None:
                nats_cluster.start_node(victim)

    asyncio.run(run())


def test_engine_command_deleted_from_stream_stops_worker_as_corrupt(
    nats_cluster: LocalCluster,
) -> None:
    # A hole in the command stream itself (an insider deleted command 3) is corruption:
    # the worker must stop rather than skip it or resubscribe forever.
    async def run() -> None:
        nc, js = await _connect(nats_cluster, "GAP1")
        try:
            publisher = CommandPublisher(js, {"GAP1"})
            for command_id, cmd in order_flow(6, seed=5):
                await _append_retrying(publisher, "GAP1", command_id, cmd)  # type: ignore[arg-type]
            await js.delete_msg(command_stream("GAP1"), 3)
            with pytest.raises(StreamCorrupt, match="command 3 missing"):
                await asyncio.wait_for(run_worker(nats_cluster.urls, Instrument(symbol="GAP1"),
                                                  name="w"), 30.0)
        finally:
            await nc.close()

    asyncio.run(run())


def test_engine_restarted_from_snapshot_keeps_market_halted_and_refuses_in_stream_order(
        nats_cluster: LocalCluster) -> None:
    from exchange.stream.controls import SetStatus
    from exchange.stream.wire import batch_decoder

    market = "HALT" + str(time.time_ns() % 10**9)

    async def run() -> None:
        nc, js = await _connect(nats_cluster, market)
        try:
            publisher = CommandPublisher(js, {market})
            await publisher.append(market, "c1", NewOrder(id="o1", account="a", side="buy", qty=1,
                                                          price=100, ts=1_000_000))
            await publisher.append_control(market, "ctl.1", SetStatus("halted", 0, "test",
                                                                       2_000_000))
            stop = asyncio.Event()
            first = asyncio.create_task(run_worker(nats_cluster.urls, Instrument(market),
                                                   name="w1", snapshot_every=1, stop=stop))
            await wait_published(js, market, 2, 60.0)
            stop.set()
            stats = await first
            assert stats.snapshots >= 1
            # The standby starts from the snapshot (taken after the halt), not from the start.
            await publisher.append(market, "c3", NewOrder(id="o3", account="b", side="sell",
                                                          qty=1, price=100, ts=3_000_000))
            stop = asyncio.Event()
            second = asyncio.create_task(run_worker(nats_cluster.urls, Instrument(market),
                                                    name="w2", stop=stop))
            await wait_published(js, market, 3, 60.0)
            stop.set()
            assert (await second).replayed == 0
            batches = await event_batches(js, market)
            last = batches[-1]
            assert [(type(e).__name__, getattr(e, "code", None))
                    for e in last.commands[-1].events] == [("Rejected", 2021)]
            assert last.status is not None and last.status.mode == "halted"
            assert batch_decoder.decode(batch_encoder.encode(last)) == last
        finally:
            await nc.close()

    asyncio.run(run())
