"""The engine worker: one market's order book, fed from its command stream in stream order.

Leadership: a worker leads a market while it holds the market's entry in the
`ENGINE_LEASE` bucket (created only if absent, renewed with compare-and-set,
expiring after LEASE_TTL_S of silence). Standbys poll for the entry and take
over when it expires.

Fencing: every event batch is published with
`Nats-Expected-Last-Subject-Sequence` set to the stream sequence of the
previous batch of the market, so a deposed leader that still runs (paused,
partitioned) is refused by the stream and stops; it can never interleave
its output with the new leader's.

Recovery: load the market's snapshot (if any), replay the commands after it
without publishing up to the last command whose events were published, then
continue publishing. The engine is deterministic, so the rebuilt book is the
one the old leader had, and no command's events are published twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, KeyNotFoundError, NotFoundError

from exchange.engine.instrument import Instrument
from exchange.engine.orderbook import OrderBook
from exchange.engine.snapshot import SnapshotBody
from exchange.stream.controls import EngineControls
from exchange.stream.follower import fetch_ready
from exchange.stream.lease import Lease
from exchange.stream.topology import (
    EVENTS_STREAM,
    LEASE_RENEW_S,
    MAX_MSG_BYTES,
    command_stream,
    command_subject,
    events_subject,
    snapshot_bucket,
)
from exchange.stream.wire import (
    SNAPSHOT_KEY_PREFIX,
    CommandEvents,
    EventBatch,
    WorkerSnapshot,
    batch_decoder,
    batch_encoder,
    batch_msg_id,
)

log = logging.getLogger("strongroom.engine_worker")

BATCH_MAX_COMMANDS = 256
FETCH_TIMEOUT_S = 0.25
PUBLISH_TIMEOUT_S = 5.0
PUBLISH_DEADLINE_S = 30.0
PUBLISH_RETRY_S = 0.2
DEFAULT_SNAPSHOT_EVERY = 10_000
# Event batches are split before they reach the stream's message size limit.
BATCH_MAX_BYTES = MAX_MSG_BYTES // 2
WRONG_LAST_SEQUENCE = (10071, 10164)
STALL_CHECK_S = 1.0


class Fenced(Exception):
    """Another worker leads this market now: stop without publishing anything more."""


class StreamCorrupt(Exception):
    """The command stream has a gap, or a snapshot does not match the configured market."""


class ConsumerGap(Exception):
    """The consumer skipped a command: lost in transit, or missing from the stream."""

    def __init__(self, symbol: str, missing: int, got: int) -> None:
        super().__init__(f"{symbol}: command {missing} missing, got {got}")
        self.missing = missing


@dataclass
class WorkerStats:
    """Counters of one worker run (read by the benchmark and tests)."""

    replayed: int = 0
    processed: int = 0
    batches: int = 0
    snapshots: int = 0
    terms_lost: int = 0

    def add(self, other: WorkerStats) -> None:
        """Add the counters of one term of leadership."""
        self.replayed += other.replayed
        self.processed += other.processed
        self.batches += other.batches
        self.snapshots += other.snapshots


class EngineWorker:
    """Lead (or stand by for) one market; process its command stream while leader."""

    def __init__(self, nc: Client, js: JetStreamContext, instrument: Instrument, *, name: str,
                 snapshot_every: int = DEFAULT_SNAPSHOT_EVERY) -> None:
        if snapshot_every < 1:
            raise ValueError(f"snapshot_every was {snapshot_every}, must be positive")
        self.nc = nc
        self.js = js
        self.instrument = instrument
        self.symbol = instrument.symbol
        self.name = name
        self.snapshot_every = snapshot_every
        self.book = OrderBook(instrument)
        self.gate = EngineControls(self.symbol)  # kill switches, in stream order
        self.seq = 0  # last command applied to self.book
        self.published_seq = 0  # last command whose events are in the events stream
        self.snapshot_seq = 0
        self.events_subject_seq = 0  # stream sequence of this market's last event batch
        self.stats = WorkerStats()
        self.lease = Lease(js, self.symbol, name)
        self._lease_lost = self.lease.lost
        self._last_stall_check = 0.0

    # -- leadership -----------------------------------------------------------------------

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this worker holds the market's lease (True) or `stop` is set (False)."""
        return await self.lease.acquire(stop)

    # -- recovery -------------------------------------------------------------------------

    async def recover(self) -> None:
        """Rebuild the book from the snapshot and the commands already published."""
        snaps = await snapshot_bucket(self.js)
        try:
            entry = await snaps.get(SNAPSHOT_KEY_PREFIX + self.symbol)
        except KeyNotFoundError:
            entry = None
        if entry is not None and entry.value:
            try:
                snap = msgspec.msgpack.decode(entry.value, type=WorkerSnapshot)
                body, gate = snap.book, EngineControls.restore(self.symbol, snap.controls)
            except msgspec.ValidationError:  # written before the controls existed
                body = msgspec.msgpack.decode(entry.value, type=SnapshotBody)
                gate = EngineControls(self.symbol)
            if body.state.instrument != self.instrument:
                raise StreamCorrupt(f"snapshot of {self.symbol} is for another instrument spec")
            book = OrderBook.from_state(body.state)
            book.validate_internal_state()
            if book.state_hash() != body.state_hash:
                raise StreamCorrupt(f"snapshot of {self.symbol} does not reproduce its state hash")
            self.book, self.seq, self.snapshot_seq = book, body.command_seq, body.command_seq
            self.gate = gate
        try:
            last = await self.js.get_last_msg(EVENTS_STREAM, events_subject(self.symbol))
            batch = batch_decoder.decode(last.data or b"")
            self.published_seq, self.events_subject_seq = batch.last_seq, last.seq or 0
        except NotFoundError:
            self.published_seq, self.events_subject_seq = 0, 0
        if self.published_seq < self.seq:
            raise StreamCorrupt(f"snapshot of {self.symbol} at {self.seq} is ahead of the "
                                f"published events ({self.published_seq})")
        log.info("worker %s recovering %s: snapshot %d, published %d", self.name, self.symbol,
                 self.seq, self.published_seq)

    # -- processing -----------------------------------------------------------------------

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                opt_start_seq=self.seq + 1, ack_policy=AckPolicy.NONE,
                                inactive_threshold=30.0, mem_storage=True, num_replicas=1)
        return await self.js.pull_subscribe(command_subject(self.symbol),
                                            stream=command_stream(self.symbol), config=config)

    async def _resubscribe(
        self, sub: JetStreamContext.PullSubscription
    ) -> JetStreamContext.PullSubscription:
        with contextlib.suppress(NatsError):
            await sub.unsubscribe()
        while True:
            try:
                return await self._subscribe()
            except NatsError as exc:
                log.warning("resubscribing %s failed: %s", self.symbol, exc)
                await asyncio.sleep(FETCH_TIMEOUT_S)

    async def _consumer_stuck(self) -> bool:
        """Tell whether the stream holds commands our (idle) consumer does not deliver.

        The ephemeral consumer lives on one server; when that server dies the fetches
        only time out, which looks like an idle market. Checked at most once a second.
        """
        now = time.monotonic()
        if now - self._last_stall_check < STALL_CHECK_S:
            return False
        self._last_stall_check = now
        try:
            info = await self.js.stream_info(command_stream(self.symbol))
        except NatsError:
            return False
        return info.state.last_seq > self.seq

    async def _fetch(self, sub: JetStreamContext.PullSubscription) -> list[tuple[int, bytes]]:
        try:
            msgs = await fetch_ready(sub, BATCH_MAX_COMMANDS, FETCH_TIMEOUT_S)
        except TimeoutError:  # nats' own and, on some paths, asyncio's: nothing new
            return []
        out: list[tuple[int, bytes]] = []
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            if seq <= self.seq + len(out):
                continue  # redelivered after a consumer reset
            if seq != self.seq + len(out) + 1:
                raise ConsumerGap(self.symbol, self.seq + len(out) + 1, seq)
            out.append((seq, msg.data))
        return out

    async def _stream_lacks(self, seq: int) -> bool:
        """Tell whether command `seq` is gone from the stream itself (not just undelivered)."""
        try:
            await self.js.get_msg(command_stream(self.symbol), seq)
        except NotFoundError:
            return True
        except NatsError:
            return False  # cannot tell now: resubscribe and look again on the next gap
        return False

    def _apply(self, commands: list[tuple[int, bytes]]) -> list[CommandEvents]:
        book, run = self.book, self.gate.run
        out = [CommandEvents(seq, run(book, seq, data)) for seq, data in commands]
        self.seq = commands[-1][0]
        return out

    async def _publish(self, done: list[CommandEvents]) -> None:
        """Publish events of `done` as batches under the size limit, strictly in order."""
        start = 0
        status = self.gate.status()
        breaker = self.gate.controls.breakers.get(self.symbol)
        while start < len(done):
            end = len(done)
            while True:
                batch = EventBatch(self.symbol, done[start].seq, done[end - 1].seq, done[start:end],
                                   status, breaker)
                data = batch_encoder.encode(batch)
                if len(data) <= BATCH_MAX_BYTES or end - start == 1:
                    break
                end = start + max(1, (end - start) // 2)
            await self._publish_one(batch, data)
            start = end

    async def _publish_one(self, batch: EventBatch, data: bytes) -> None:
        headers = {"Nats-Msg-Id": batch_msg_id(batch),
                   "Nats-Expected-Last-Subject-Sequence": str(self.events_subject_seq)}
        deadline = time.monotonic() + PUBLISH_DEADLINE_S
        attempt = 0
        while True:
            attempt += 1
            if self._lease_lost.is_set():
                raise Fenced(f"{self.name} lost the lease of {self.symbol}")
            try:
                ack = await self.js.publish(events_subject(self.symbol), data,
                                            timeout=PUBLISH_TIMEOUT_S, stream=EVENTS_STREAM,
                                            headers=dict(headers))
            except APIError as exc:
                if exc.err_code in WRONG_LAST_SEQUENCE:
                    raise Fenced(f"{self.symbol}: another worker published events") from None
                log.warning("publish of %s failed (attempt %d): %s", batch_msg_id(batch),
                            attempt, exc)
            except NatsError as exc:
                # No response or a timeout (e.g. the stream is electing a new leader after a
                # node loss). Retrying with the same Nats-Msg-Id is safe: a copy that was
                # stored after all is not stored twice.
                log.warning("publish of %s: %s (attempt %d)", batch_msg_id(batch),
                            type(exc).__name__, attempt)
            else:
                self.events_subject_seq = ack.seq
                self.published_seq = batch.last_seq
                self.stats.batches += 1
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"events of {self.symbol} could not be published")
            await asyncio.sleep(PUBLISH_RETRY_S)

    async def snapshot(self) -> None:
        """Store the book after `self.seq` (only ever at or behind published events)."""
        if self.seq == self.snapshot_seq:
            return
        body = msgspec.msgpack.encode(WorkerSnapshot(
            SnapshotBody(self.seq, self.book.state_hash(), self.book.state()), self.gate.snapshot()))
        if len(body) > MAX_MSG_BYTES:
            log.warning("snapshot of %s is %d bytes, over the bucket limit; skipped",
                        self.symbol, len(body))
            return
        snaps = await snapshot_bucket(self.js)
        await snaps.put(SNAPSHOT_KEY_PREFIX + self.symbol, body)
        self.snapshot_seq = self.seq
        self.stats.snapshots += 1

    async def lead(self, stop: asyncio.Event) -> None:
        """Recover, then process commands until `stop`, fencing or a lost lease."""
        renew = asyncio.create_task(self.lease.keep())
        try:
            await self.recover()
            sub = await self._subscribe()
            while not stop.is_set() and not self._lease_lost.is_set():
                try:
                    commands = await self._fetch(sub)
                except ConsumerGap as gap:
                    # A consumer without acks counts a message lost in transit (a node or
                    # connection lost mid-fetch) as delivered: read again from our position.
                    # Only a command missing from the stream itself is corruption.
                    if await self._stream_lacks(gap.missing):
                        raise StreamCorrupt(str(gap)) from gap
                    log.warning("consumer of %s skipped: %s; resubscribing", self.symbol, gap)
                    sub = await self._resubscribe(sub)
                    continue
                except (APIError, NotFoundError) as exc:
                    # The ephemeral consumer went away (node loss): read on from where we are.
                    log.warning("consumer of %s reset: %s", self.symbol, exc)
                    await asyncio.sleep(FETCH_TIMEOUT_S)
                    sub = await self._resubscribe(sub)
                    continue
                if not commands:
                    if await self._consumer_stuck():
                        log.warning("consumer of %s stalled at %d: resubscribing",
                                    self.symbol, self.seq)
                        sub = await self._resubscribe(sub)
                        continue
                    await self.snapshot()  # idle: bring the snapshot up to date
                    continue
                replay_end = self.published_seq
                done = self._apply(commands)
                fresh = [c for c in done if c.seq > replay_end]
                self.stats.replayed += len(done) - len(fresh)
                if fresh:
                    await self._publish(fresh)
                    self.stats.processed += len(fresh)
                if self.seq - self.snapshot_seq >= self.snapshot_every:
                    await self.snapshot()
            if self._lease_lost.is_set():
                raise Fenced(f"{self.name} lost the lease of {self.symbol}")
        finally:
            renew.cancel()

    async def release(self) -> None:
        """Give the lease up (clean shutdown), so a standby need not wait for it to expire."""
        await self.lease.release()


async def run_worker(urls: list[str], instrument: Instrument, *, name: str,
                     snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
                     stop: asyncio.Event | None = None) -> WorkerStats:
    """Connect and serve `instrument`'s market until `stop`: stand by, lead, repeat.

    A term of leadership ends when the worker is fenced, loses its lease (e.g. the
    lease bucket was unreachable for longer than its TTL during a NATS node loss) or
    cannot publish; the worker then drops its book and stands by again, so it takes
    the market back (rebuilding from snapshot + stream) if no other worker did.
    A corrupt stream or snapshot (StreamCorrupt) is not retried: it stops the worker.
    """
    import nats

    stop = stop or asyncio.Event()
    total = WorkerStats()
    nc = await nats.connect(servers=urls, name=f"engine-{instrument.symbol}-{name}",
                            max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        js = nc.jetstream()
        while not stop.is_set():
            worker = EngineWorker(nc, js, instrument, name=name, snapshot_every=snapshot_every)
            if not await worker.acquire(stop):
                break
            try:
                await worker.lead(stop)
                await worker.snapshot()
            except (Fenced, NatsError, TimeoutError) as exc:
                log.warning("worker %s stops leading %s: %s: %s; standing by", name,
                            instrument.symbol, type(exc).__name__, exc, exc_info=True)
                total.terms_lost += 1
                await asyncio.sleep(LEASE_RENEW_S)
            finally:
                if stop.is_set():
                    await worker.release()
                total.add(worker.stats)
        return total
    finally:
        await nc.close()
