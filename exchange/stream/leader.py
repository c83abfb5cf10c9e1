"""Leader/standby machinery of one command stream: lease, fencing, exactly-once output, recovery.

A `StreamLeader` applies one durable command stream (its sequence is the
replay order) to a deterministic state machine and publishes what each
command produced as batches on an output stream. Two kinds exist: the
per-market engine worker (exchange/stream/worker.py, an order book) and the
clearing shard worker (exchange/stream/shard/worker.py, a whole venue). The
subclass supplies the machine (apply, batch, snapshot); everything that makes
the output exactly-once lives here, once:

- Leadership: a worker leads while it holds its key in the `ENGINE_LEASE`
  bucket (exchange/stream/lease.py: created only if absent, renewed with
  compare-and-set, expiring after LEASE_TTL_S of silence). Standbys poll for
  the key and take over when it expires.
- Fencing: every batch is published with `Nats-Expected-Last-Subject-Sequence`
  set to the output stream sequence of the previous batch on the subject, so a
  deposed leader that still runs (paused, partitioned) is refused and stops; it
  can never interleave its output with the new leader's. A retry after a lost
  acknowledgement reuses the batch's `Nats-Msg-Id` and is stored once.
- Recovery: load the snapshot (if any), replay the commands after it without
  publishing up to the last command whose output was published, then continue
  publishing. The machine is deterministic, so the rebuilt state is the one
  the old leader had, and no command's output is published twice. Snapshots
  are only ever taken at or behind published output.
- Consumer weather: an ephemeral consumer that skipped a command (lost in
  transit), went away (node loss) or stalls while the stream holds newer
  commands is replaced from the worker's own position; only a command missing
  from the stream itself is corruption.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Generic, Protocol, TypeVar

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from exchange.stream.follower import fetch_ready
from exchange.stream.lease import Lease
from exchange.stream.topology import LEASE_RENEW_S, MAX_MSG_BYTES

log = logging.getLogger("strongroom.stream_leader")

BATCH_MAX_COMMANDS = 256
FETCH_TIMEOUT_S = 0.25
PUBLISH_TIMEOUT_S = 5.0
PUBLISH_DEADLINE_S = 30.0
PUBLISH_RETRY_S = 0.2
DEFAULT_SNAPSHOT_EVERY = 10_000
# Batches are split before they reach the stream's message size limit.
BATCH_MAX_BYTES = MAX_MSG_BYTES // 2
WRONG_LAST_SEQUENCE = (10071, 10164)
STALL_CHECK_S = 1.0

Commands = list[tuple[int, bytes]]


class Fenced(Exception):
    """Another worker leads this stream now: stop without publishing anything more."""


class StreamCorrupt(Exception):
    """The command stream has a gap, or a snapshot does not match the configured machine."""


class ConsumerGap(Exception):
    """The consumer skipped a command: lost in transit, or missing from the stream."""

    def __init__(self, key: str, missing: int, got: int) -> None:
        super().__init__(f"{key}: command {missing} missing, got {got}")
        self.missing = missing


@dataclass
class WorkerStats:
    """Counters of one worker run (read by the benchmarks and tests)."""

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


class Sequenced(Protocol):
    """What one command produced, tagged with the command's stream sequence."""

    @property
    def seq(self) -> int: ...


class Batch(Protocol):
    """The output of the consecutive commands `first_seq..last_seq`."""

    @property
    def first_seq(self) -> int: ...

    @property
    def last_seq(self) -> int: ...


R = TypeVar("R", bound=Sequenced)
B = TypeVar("B", bound=Batch)


@dataclass(frozen=True)
class Streams:
    """Where a leader reads its commands and writes its batches, and its lease key."""

    lease_key: str
    command_stream: str
    command_subject: str
    output_stream: str
    output_subject: str


class StreamLeader(ABC, Generic[R, B]):
    """Lead (or stand by for) one command stream; apply it and publish its output while leader.

    Subclasses hold the machine and implement the hooks below; `self.seq` is the last
    command applied to the machine.
    """

    # A snapshot is taken once the worker has been idle this long (and at shutdown), but not
    # sooner than idle_snapshot_interval_s after the previous one (a quiet stream with a
    # trickle of commands must not snapshot after each).
    idle_snapshot_s: ClassVar[float] = 0.0
    idle_snapshot_interval_s: ClassVar[float] = 0.0

    def __init__(self, nc: Client, js: JetStreamContext, streams: Streams, *, name: str,
                 snapshot_every: int = DEFAULT_SNAPSHOT_EVERY) -> None:
        if snapshot_every < 1:
            raise ValueError(f"snapshot_every was {snapshot_every}, must be positive")
        self.nc = nc
        self.js = js
        self.streams = streams
        self.key = streams.lease_key
        self.name = name
        self.snapshot_every = snapshot_every
        self.seq = 0  # last command applied to the machine
        self.published_seq = 0  # last command whose output is in the output stream
        self.snapshot_seq = 0
        self.events_subject_seq = 0  # output stream sequence of the last batch on our subject
        self.stream_last_seq = 0  # the command stream's last sequence, as last seen
        self.stats = WorkerStats()
        self.lease = Lease(js, self.key, name)
        self._lease_lost = self.lease.lost
        self._last_stall_check = 0.0
        self._last_command_at = time.monotonic()
        self._last_snapshot_at = float("-inf")

    # -- the machine (subclass hooks) -------------------------------------------------------

    @abstractmethod
    async def load_snapshot(self) -> None:
        """Replace the machine by the stored snapshot, if any, and set `seq` (=`snapshot_seq`)."""

    @abstractmethod
    async def store_snapshot(self) -> bool:
        """Store the machine after `seq`; False if skipped (e.g. too large for its store)."""

    @abstractmethod
    def apply(self, commands: Commands) -> list[R]:
        """Apply consecutive commands (the first is `seq + 1`) and return each one's output."""

    @abstractmethod
    def make_batch(self, results: list[R]) -> B:
        """Return the batch of consecutive `results` (the machine is after the last command
        applied, which may be later than the batch's last when a batch is split)."""

    @abstractmethod
    def encode_batch(self, batch: B) -> bytes:
        """Return the output message body of `batch`."""

    @abstractmethod
    def batch_msg_id(self, batch: B) -> str:
        """Return the Nats-Msg-Id of `batch` (a function of its key and command range)."""

    @abstractmethod
    def published_last_seq(self, data: bytes) -> int:
        """Return the last command sequence of a published batch body."""

    def pieces(self, commands: Commands) -> list[Commands]:
        """Cut fetched commands into the runs applied and published before the next snapshot
        check (default: all at once)."""
        return [commands]

    def snapshot_due(self) -> bool:
        """Tell whether to snapshot now, after a run of commands was applied and published."""
        return self.seq - self.snapshot_seq >= self.snapshot_every

    # -- observation hooks (metrics; default: nothing) --------------------------------------

    def on_leading(self, leading: bool) -> None:
        """This worker took the lease (True) or its term ended (False)."""

    def on_term_lost(self) -> None:
        """A term ended by fencing, a lost lease or NATS trouble (not a clean stop)."""

    def on_position(self, stream_last_seq: int) -> None:
        """The command stream's last sequence as last seen, after applying up to `seq`."""

    def on_applied(self, fresh: list[R]) -> None:
        """`fresh` results were applied and are about to be published (not silent replays)."""

    def on_published(self, batch: B, seconds: float) -> None:
        """`batch` is in the output stream; its publish took `seconds` (retries included)."""

    # -- leadership -----------------------------------------------------------------------

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this worker holds the lease (True) or `stop` is set (False)."""
        return await self.lease.acquire(stop)

    async def release(self) -> None:
        """Give the lease up (clean shutdown), so a standby need not wait for it to expire."""
        await self.lease.release()

    # -- recovery -------------------------------------------------------------------------

    async def recover(self) -> None:
        """Rebuild the machine from the snapshot; learn what was published already."""
        await self.load_snapshot()
        try:
            last = await self.js.get_last_msg(self.streams.output_stream,
                                              self.streams.output_subject)
            self.published_seq = self.published_last_seq(last.data or b"")
            self.events_subject_seq = last.seq or 0
        except NotFoundError:
            self.published_seq, self.events_subject_seq = 0, 0
        if self.published_seq < self.seq:
            raise StreamCorrupt(f"snapshot of {self.key} at {self.seq} is ahead of the "
                                f"published output ({self.published_seq})")
        log.info("worker %s recovering %s: snapshot %d, published %d", self.name, self.key,
                 self.seq, self.published_seq)

    # -- consuming ------------------------------------------------------------------------

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                opt_start_seq=self.seq + 1, ack_policy=AckPolicy.NONE,
                                inactive_threshold=30.0, mem_storage=True, num_replicas=1)
        return await self.js.pull_subscribe(self.streams.command_subject,
                                            stream=self.streams.command_stream, config=config)

    async def _resubscribe(
        self, sub: JetStreamContext.PullSubscription
    ) -> JetStreamContext.PullSubscription:
        with contextlib.suppress(NatsError):
            await sub.unsubscribe()
        while True:
            try:
                return await self._subscribe()
            except NatsError as exc:
                log.warning("resubscribing %s failed: %s", self.key, exc)
                await asyncio.sleep(FETCH_TIMEOUT_S)

    async def _consumer_stuck(self) -> bool:
        """Tell whether the stream holds commands our (idle) consumer does not deliver.

        The ephemeral consumer lives on one server; when that server dies the fetches
        only time out, which looks like an idle stream. Checked at most once a second.
        """
        now = time.monotonic()
        if now - self._last_stall_check < STALL_CHECK_S:
            return False
        self._last_stall_check = now
        try:
            info = await self.js.stream_info(self.streams.command_stream)
        except NatsError:
            return False
        self.stream_last_seq = info.state.last_seq
        self.on_position(self.stream_last_seq)
        return info.state.last_seq > self.seq

    async def _fetch(self, sub: JetStreamContext.PullSubscription) -> Commands:
        try:
            msgs = await fetch_ready(sub, BATCH_MAX_COMMANDS, FETCH_TIMEOUT_S)
        except TimeoutError:  # nats' own and, on some paths, asyncio's: nothing new
            return []
        out: Commands = []
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            if seq <= self.seq + len(out):
                continue  # redelivered after a consumer reset
            if seq != self.seq + len(out) + 1:
                raise ConsumerGap(self.key, self.seq + len(out) + 1, seq)
            out.append((seq, msg.data))
        if msgs:  # commands still waiting after this fetch: the stream's end, for the lag
            last = msgs[-1].metadata
            self.stream_last_seq = max(self.stream_last_seq, last.sequence.stream + last.num_pending)
        return out

    async def _stream_lacks(self, seq: int) -> bool:
        """Tell whether command `seq` is gone from the stream itself (not just undelivered)."""
        try:
            await self.js.get_msg(self.streams.command_stream, seq)
        except NotFoundError:
            return True
        except NatsError:
            return False  # cannot tell now: resubscribe and look again on the next gap
        return False

    # -- publishing -----------------------------------------------------------------------

    async def _publish(self, done: list[R]) -> None:
        """Publish the output of `done` as batches under the size limit, strictly in order."""
        start = 0
        while start < len(done):
            end = len(done)
            while True:
                batch = self.make_batch(done[start:end])
                data = self.encode_batch(batch)
                if len(data) <= BATCH_MAX_BYTES or end - start == 1:
                    break
                end = start + max(1, (end - start) // 2)
            started = time.monotonic()
            await self._publish_one(batch, data)
            self.on_published(batch, time.monotonic() - started)
            start = end

    async def _publish_one(self, batch: B, data: bytes) -> None:
        msg_id = self.batch_msg_id(batch)
        headers = {"Nats-Msg-Id": msg_id,
                   "Nats-Expected-Last-Subject-Sequence": str(self.events_subject_seq)}
        deadline = time.monotonic() + PUBLISH_DEADLINE_S
        attempt = 0
        while True:
            attempt += 1
            if self._lease_lost.is_set():
                raise Fenced(f"{self.name} lost the lease of {self.key}")
            try:
                ack = await self.js.publish(self.streams.output_subject, data,
                                            timeout=PUBLISH_TIMEOUT_S,
                                            stream=self.streams.output_stream,
                                            headers=dict(headers))
            except APIError as exc:
                if exc.err_code in WRONG_LAST_SEQUENCE:
                    raise Fenced(f"{self.key}: another worker published output") from None
                log.warning("publish of %s failed (attempt %d): %s", msg_id, attempt, exc)
            except NatsError as exc:
                # No response or a timeout (e.g. the stream is electing a new leader after a
                # node loss). Retrying with the same Nats-Msg-Id is safe: a copy that was
                # stored after all is not stored twice.
                log.warning("publish of %s: %s (attempt %d)", msg_id, type(exc).__name__, attempt)
            else:
                self.events_subject_seq = ack.seq
                self.published_seq = batch.last_seq
                self.stats.batches += 1
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"output of {self.key} could not be published")
            await asyncio.sleep(PUBLISH_RETRY_S)

    async def snapshot(self) -> None:
        """Store the machine after `seq` (only ever at or behind published output).

        A snapshot only shortens the next recovery: one that cannot be stored now (NATS
        trouble) is logged and left for the next snapshot point.
        """
        if self.seq == self.snapshot_seq:
            return
        assert self.seq <= self.published_seq, (self.seq, self.published_seq)
        try:
            stored = await self.store_snapshot()
        except (NatsError, TimeoutError) as exc:
            log.warning("snapshot of %s at %d not stored: %s", self.key, self.seq,
                        type(exc).__name__)
            return
        self._last_snapshot_at = time.monotonic()
        if stored:
            self.snapshot_seq = self.seq
            self.stats.snapshots += 1

    # -- the term of leadership -------------------------------------------------------------

    async def lead(self, stop: asyncio.Event) -> None:
        """Recover, then process commands until `stop`, fencing or a lost lease."""
        renew = asyncio.create_task(self.lease.keep())
        try:
            await self.recover()
            sub = await self._subscribe()
            while not stop.is_set() and not self._lease_lost.is_set():
                if renew.done():
                    # The renewal task died (e.g. the lease bucket was unreachable when it
                    # started): the lease will lapse; end the term now rather than be fenced.
                    raise Fenced(f"{self.name}: renewing the lease of {self.key} stopped: "
                                 f"{renew.exception()!r}")
                try:
                    commands = await self._fetch(sub)
                except ConsumerGap as gap:
                    # A consumer without acks counts a message lost in transit (a node or
                    # connection lost mid-fetch) as delivered: read again from our position.
                    # Only a command missing from the stream itself is corruption.
                    if await self._stream_lacks(gap.missing):
                        raise StreamCorrupt(str(gap)) from gap
                    log.warning("consumer of %s skipped: %s; resubscribing", self.key, gap)
                    sub = await self._resubscribe(sub)
                    continue
                except (APIError, NotFoundError) as exc:
                    # The ephemeral consumer went away (node loss): read on from where we are.
                    log.warning("consumer of %s reset: %s", self.key, exc)
                    await asyncio.sleep(FETCH_TIMEOUT_S)
                    sub = await self._resubscribe(sub)
                    continue
                if not commands:
                    if await self._consumer_stuck():
                        log.warning("consumer of %s stalled at %d: resubscribing", self.key,
                                    self.seq)
                        sub = await self._resubscribe(sub)
                    elif self._idle_snapshot_due():
                        await self.snapshot()  # idle: bring the snapshot up to date
                    continue
                self._last_command_at = time.monotonic()
                for piece in self.pieces(commands):
                    await self._run(piece)
            if self._lease_lost.is_set():
                raise Fenced(f"{self.name} lost the lease of {self.key}")
        finally:
            renew.cancel()

    def _idle_snapshot_due(self) -> bool:
        now = time.monotonic()
        return (now - self._last_command_at >= self.idle_snapshot_s
                and now - self._last_snapshot_at >= self.idle_snapshot_interval_s)

    async def _run(self, commands: Commands) -> None:
        """Apply a run of commands, publish the output not yet published, snapshot if due."""
        replay_end = self.published_seq
        done = self.apply(commands)
        assert self.seq == commands[-1][0], (self.seq, commands[-1][0])
        fresh = [r for r in done if r.seq > replay_end]
        self.stats.replayed += len(done) - len(fresh)
        if fresh:
            self.on_applied(fresh)
            await self._publish(fresh)
            self.stats.processed += len(fresh)
        self.on_position(self.stream_last_seq)
        if self.snapshot_due():
            await self.snapshot()


async def serve(urls: list[str], make: Callable[[Client, JetStreamContext], StreamLeader[R, B]],
                *, connection_name: str, stop: asyncio.Event | None = None) -> WorkerStats:
    """Connect and serve one command stream until `stop`: stand by, lead, repeat.

    `make` builds a fresh worker (an empty machine) for each term. A term of leadership
    ends when the worker is fenced, loses its lease (e.g. the lease bucket was unreachable
    for longer than its TTL during a NATS node loss) or cannot publish; the worker then
    drops its machine and stands by again, so it takes the stream back (rebuilding from
    snapshot + stream) if no other worker did. On `stop` the leader snapshots and releases
    its lease, so a standby takes over at once. A corrupt stream or snapshot
    (StreamCorrupt) is not retried: it stops the worker.
    """
    import nats

    stop = stop or asyncio.Event()
    total = WorkerStats()
    nc = await nats.connect(servers=urls, name=connection_name, max_reconnect_attempts=-1,
                            reconnect_time_wait=0.2)
    try:
        js = nc.jetstream()
        while not stop.is_set():
            worker = make(nc, js)
            if not await worker.acquire(stop):
                break
            worker.on_leading(True)
            try:
                await worker.lead(stop)
                await worker.snapshot()
            except (Fenced, NatsError, TimeoutError) as exc:
                log.warning("worker %s stops leading %s: %s: %s; standing by", worker.name,
                            worker.key, type(exc).__name__, exc, exc_info=True)
                total.terms_lost += 1
                worker.on_term_lost()
                await asyncio.sleep(LEASE_RENEW_S)
            finally:
                worker.on_leading(False)
                if stop.is_set():
                    await worker.release()
                total.add(worker.stats)
        return total
    finally:
        await nc.close()
