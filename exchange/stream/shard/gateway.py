"""The API side of the clearing shards: a replica per shard, append, wait for its own replica.

Each API worker process (created lazily after gunicorn forks, like the
per-market `Gateway`) runs an asyncio loop in a daemon thread with one NATS
connection. For every shard it serves it keeps a **replica** `ShardMachine`:
bootstrapped from the shard's latest snapshot (object store `SHARD_SNAPSHOT`,
object `<NAME>`) if there is one, then following the command stream
`shard.cmd.<NAME>` in stream order (ephemeral pull consumer, no acks).

`submit(shard, msg_id, command)` appends a `ShardCommand` under its
Nats-Msg-Id (the stream stores a retried append once) and waits until this
process's replica has applied that sequence: the answer is the replica's
`ShardResult`, identical to the shard leader's (the machine is deterministic).
No database and no leader is on that path; margin, entitlements and kill
switches are decided by the machine in stream order, so two gateways can never
jointly over-reserve an account. `read(shard, view)` runs a view function on the
replica's venue under its lock: the hot reads.

A replica that cannot follow (a gap the stream really has, an exception in the
machine) stops answering (`StreamRefused` 3104 after the wait): a diverged
replica must never serve reads or answers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import msgspec
import nats
import nats.aio.client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from exchange.instruments import ExchangeConfig, load_instruments
from exchange.marketdata import MarketData, Message
from exchange.stream.follower import fetch_ready, follow_resubscribing
from exchange.stream.publisher import StreamCode, StreamRefused, append_to
from exchange.stream.shard.machine import ShardMachine
from exchange.stream.shard.metrics import ShardMetrics
from exchange.stream.shard.snapshots import read_snapshot
from exchange.stream.shard.wire import (
    DEFAULT_SHARD,
    SHARD_EVENTS_STREAM,
    ShardBatch,
    ShardCommand,
    ShardResult,
    batch_decoder,
    encode_command,
    shard_events_subject,
    shard_stream,
    shard_subject,
)
from exchange.stream.shard.worker import DEFAULT_SHARD_SNAPSHOT_EVERY
from exchange.stream.topology import check_symbol
from exchange.venue import Venue

log = logging.getLogger("strongroom.shard.gateway")

T = TypeVar("T")
DEFAULT_WAIT_S = 5.0
CONNECT_TIMEOUT_S = 10.0
APPEND_SLACK_S = 15.0  # an append retries inside nats for at most its own timeout
RECENT_MAX = 20_000  # results (and bodies) kept per shard for a waiter that registers late
FETCH_MAX = 512
FETCH_TIMEOUT_S = 0.25
RETRY_S = 0.3
STALL_CHECK_S = 1.0
CATCH_UP_TIMEOUT_S = 60.0  # a process's first request waits at most this for its replicas
CATCH_UP_POLL_S = 0.01
# The replica hashes its state at the leader's snapshot points (`strongroom shard-worker
# --snapshot-every`, whose batches there carry the leader's hash), keeping the last few.
DEFAULT_HASH_EVERY = DEFAULT_SHARD_SNAPSHOT_EVERY
HASHES_KEPT = 16


@dataclass(frozen=True)
class Submitted:
    """Where a command went: its sequence, the replica's result (None: not applied in time).

    `duplicate`: the stream already held a command under that id (a retry); `stored`
    is then the body the stream holds, so the caller can tell a retry from a reuse.
    """

    seq: int
    result: ShardResult | None
    duplicate: bool
    stored: bytes | None


class Replica:
    """One shard's replica in this process: the machine, its lock, recent results, waiters.

    It also checks itself against the shard leader's published results (see
    `ResultCheck`): every result of a command it applied must equal the leader's, and
    its state hash must equal the one the leader put on a batch at a snapshot point. A
    difference means determinism broke: it is logged and counted
    (strongroom_shard_state_divergence_total), and the replica stops answering.
    """

    def __init__(self, name: str, machine: ShardMachine, metrics: ShardMetrics | None = None,
                 hash_every: int = DEFAULT_HASH_EVERY) -> None:
        assert hash_every > 0, f"hash_every was {hash_every}"
        self.name = name
        self.machine = machine
        self.metrics = metrics
        self.hash_every = hash_every
        self.own_hashes: OrderedDict[int, str] = OrderedDict()  # at multiples of hash_every
        self.lock = threading.Lock()  # guards the machine against request threads' reads
        self.results: OrderedDict[int, ShardResult] = OrderedDict()
        self.bodies: OrderedDict[int, bytes] = OrderedDict()
        self.waiters: dict[int, asyncio.Future[ShardResult]] = {}
        self.failed: str | None = None  # why the replica stopped following (never serves then)
        self.known_seq = machine.seq  # the highest sequence this process appended or saw
        # The leader's results and state hashes for commands this replica has not applied yet.
        self.leader_results: OrderedDict[int, ShardResult] = OrderedDict()
        self.leader_hashes: dict[int, str] = {}
        self.checked_results = 0  # compared with the leader's
        self.checked_hashes = 0
        self.diverged = 0
        # The public market data of this shard (`attach_market`), fed as the replica applies.
        self.market: MarketData | None = None

    def applied(self, msgs: list[tuple[int, bytes]]) -> list[ShardResult]:
        """Apply consecutive commands; answer their waiters (on the loop thread)."""
        results: list[ShardResult] = []
        start = 0
        with self.lock:
            # Cut the run where a state hash is due: where the leader published one, and at
            # the leader's snapshot points (multiples of hash_every) for batches still to come.
            for i, (seq, _) in enumerate(msgs):
                expected = self.leader_hashes.pop(seq, None)
                due = seq % self.hash_every == 0
                if expected is None and not due and i < len(msgs) - 1:
                    continue
                results += self.machine.apply_many(msgs[start:i + 1])
                start = i + 1
                if expected is None and not due:
                    continue
                own = self.machine.state_hash()
                if due:
                    self.own_hashes[seq] = own
                    while len(self.own_hashes) > HASHES_KEPT:
                        self.own_hashes.popitem(last=False)
                if expected is not None:
                    self._check_hash(seq, expected, own)
        for (seq, body), result in zip(msgs, results, strict=True):
            self.results[seq] = result
            self.bodies[seq] = body
            waiter = self.waiters.pop(seq, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(result)
            leader = self.leader_results.pop(seq, None)
            if leader is not None:
                self._check_result(leader, result)
        while len(self.results) > RECENT_MAX:
            self.results.popitem(last=False)
            self.bodies.popitem(last=False)
        self.known_seq = max(self.known_seq, self.machine.seq)
        if self.metrics is not None:
            self.metrics.replica_position(self.name, self.known_seq, self.machine.seq)
        return results

    def leader_batch(self, batch: ShardBatch) -> None:
        """Compare the leader's results (and hash) with this replica's, now or once applied."""
        for result in batch.results:
            own = self.results.get(result.seq)
            if own is not None:
                self._check_result(result, own)
            elif result.seq > self.machine.seq:
                self.leader_results[result.seq] = result
        while len(self.leader_results) > RECENT_MAX:
            self.leader_results.popitem(last=False)
        if batch.state_hash is not None:
            if batch.last_seq > self.machine.seq:
                self.leader_hashes[batch.last_seq] = batch.state_hash
            elif batch.last_seq in self.own_hashes:
                self._check_hash(batch.last_seq, batch.state_hash, self.own_hashes[batch.last_seq])
        self.known_seq = max(self.known_seq, batch.last_seq)

    def _check_result(self, leader: ShardResult, own: ShardResult) -> None:
        self.checked_results += 1
        if leader != own:
            self._diverged(f"command {own.seq}: leader answered code {leader.code}, "
                           f"replica {own.code} (or other events or postings)")

    def _check_hash(self, seq: int, expected: str, own: str) -> None:
        self.checked_hashes += 1
        if expected != own:
            self._diverged(f"state hash after command {seq} differs from the leader's")

    def _diverged(self, why: str) -> None:
        self.diverged += 1
        self.failed = f"diverged from the leader: {why}"
        log.error("shard %s replica %s", self.name, self.failed)
        if self.metrics is not None:
            self.metrics.state_diverged(self.name, "gateway")


class ResultCheck:
    """Follow the leader's result batches of one shard (from now on) into `Replica.leader_batch`."""

    def __init__(self, js: JetStreamContext, replica: Replica) -> None:
        self.js = js
        self.replica = replica
        self.subject = shard_events_subject(replica.name)

    async def run(self, stop: asyncio.Event) -> None:
        """Check until `stop`; NATS trouble only makes it subscribe again (batches may be skipped)."""
        while not stop.is_set() and self.replica.failed is None:
            try:
                config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.NONE,
                                        inactive_threshold=30.0, mem_storage=True, num_replicas=1)
                sub = await self.js.pull_subscribe(self.subject, stream=SHARD_EVENTS_STREAM,
                                                   config=config)
            except (NatsError, TimeoutError):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RETRY_S)
                continue
            try:
                while not stop.is_set() and self.replica.failed is None:
                    try:
                        msgs = await fetch_ready(sub, FETCH_MAX, FETCH_TIMEOUT_S,
                                                       drain_idle=False)
                    except TimeoutError:
                        continue
                    for msg in msgs:
                        self.replica.leader_batch(batch_decoder.decode(msg.data))
            except (NatsError, TimeoutError, msgspec.DecodeError) as exc:
                log.warning("%s: result check: %s; subscribing again", self.subject,
                            type(exc).__name__)
            finally:
                with contextlib.suppress(NatsError, TimeoutError):
                    await sub.unsubscribe()


class CommandTail:
    """Feed a replica every command of its shard's stream after its sequence, once, in order."""

    def __init__(self, js: JetStreamContext, replica: Replica) -> None:
        self.js = js
        self.replica = replica
        self.stream = shard_stream(replica.name)
        self.subject = shard_subject(replica.name)
        self._last_stall_check = 0.0

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                opt_start_seq=self.replica.machine.seq + 1,
                                ack_policy=AckPolicy.NONE, inactive_threshold=30.0,
                                mem_storage=True, num_replicas=1)
        return await self.js.pull_subscribe(self.subject, stream=self.stream, config=config)

    async def _stalled(self) -> bool:
        """Tell whether the stream holds commands past the replica (a lost consumer)."""
        now = time.monotonic()
        if now - self._last_stall_check < STALL_CHECK_S:
            return False
        self._last_stall_check = now
        try:
            info = await self.js.stream_info(self.stream)
        except NatsError:
            return False
        return int(info.state.last_seq or 0) > self.replica.machine.seq

    async def run(self, stop: asyncio.Event) -> None:
        """Follow until `stop` or until the replica cannot go on (it then refuses to answer)."""
        await follow_resubscribing(self.subject, stop, self._subscribe, self._follow_guarded,
                                   lambda: self.replica.machine.seq, log,
                                   going=lambda: self.replica.failed is None)

    async def _follow_guarded(self, sub: JetStreamContext.PullSubscription,
                              stop: asyncio.Event) -> None:
        try:
            await self._follow(sub, stop)
        except (NatsError, TimeoutError):
            raise  # NATS weather: subscribe again
        except Exception as exc:  # the machine itself: a corrupt replica must stop serving
            self.replica.failed = f"{type(exc).__name__}: {exc}"[:200]
            log.error("%s: replica stopped at %d: %s", self.subject, self.replica.machine.seq,
                      self.replica.failed)

    async def _follow(self, sub: JetStreamContext.PullSubscription, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                msgs: list[Msg] = await fetch_ready(sub, FETCH_MAX, FETCH_TIMEOUT_S,
                                                       drain_idle=False)
            except TimeoutError:  # nothing new, or a lost consumer
                if await self._stalled():
                    return
                continue
            run: list[tuple[int, bytes]] = []
            gap = False
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                expected = self.replica.machine.seq + len(run) + 1
                if seq < expected:
                    continue  # redelivered after a reset
                if seq != expected:  # lost in transit: subscribe again from the replica's position
                    log.warning("%s: command %d after %d; subscribing again", self.subject, seq,
                                expected - 1)
                    gap = True
                    break
                run.append((seq, msg.data))
            if run:
                self.replica.applied(run)
            if gap:
                return


class ShardGateway:
    """Append shard commands and answer them from this process's replicas; serve hot reads."""

    def __init__(self, urls: list[str], configs: dict[str, ExchangeConfig], *,
                 wait_s: float = DEFAULT_WAIT_S, metrics: ShardMetrics | None = None,
                 check_results: bool = True, hash_every: int = DEFAULT_HASH_EVERY,
                 market_listeners: list[Callable[[list[Message]], None]] | None = None) -> None:
        self.urls = urls
        self.hash_every = hash_every
        self.metrics = metrics
        self.check_results = check_results
        self.configs = dict(configs)
        self.wait_s = wait_s
        self.shard_of = {s: name for name, cfg in configs.items() for s in cfg.instruments}
        # Reads that name no instrument (the account summary, collateral) default to this one.
        self.default_shard = DEFAULT_SHARD if DEFAULT_SHARD in configs else min(configs)
        self.replicas: dict[str, Replica] = {}
        # Other users of this process's connection (the signed-request nonce store) hear of
        # its disconnects and reconnects here: one connection and one loop thread per process.
        self.disconnected_cbs: list[Callable[[], Awaitable[None]]] = []
        self.reconnected_cbs: list[Callable[[], Awaitable[None]]] = []
        self._nc: nats.aio.client.Client | None = None
        # Every shard's market-data model hands its stream batches to these (the websocket
        # feed appends to the list, possibly after the gateway started). None: no models.
        self.market_listeners = market_listeners
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._js: JetStreamContext | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="shard-gateway",
                                        daemon=True)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> ShardGateway:
        """Connect, bootstrap every replica, follow, and catch up with the streams; return self.

        The first request of a process waits until each replica has applied what its
        stream held at start (at most CATCH_UP_TIMEOUT_S), so its reads are not older
        than what other processes already answered.
        """
        self._thread.start()
        heads = asyncio.run_coroutine_threadsafe(self._connect(), self._loop).result(
            CONNECT_TIMEOUT_S + 5 * len(self.configs))
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        for name, head in sorted(heads.items()):
            replica = self.replicas[name]
            while replica.machine.seq < head and replica.failed is None:
                if time.monotonic() > deadline:
                    log.warning("shard %s: replica at %d of %d after %.0f s; serving while it "
                                "catches up", name, replica.machine.seq, head, CATCH_UP_TIMEOUT_S)
                    break
                time.sleep(CATCH_UP_POLL_S)
        return self

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop (its thread runs every NATS callback of this gateway)."""
        return self._loop

    @property
    def connection(self) -> nats.aio.client.Client:
        """The started gateway's NATS connection (shared with the process's other NATS users)."""
        assert self._nc is not None, "start() the gateway first"
        return self._nc

    async def _disconnected(self) -> None:
        for cb in list(self.disconnected_cbs):
            with contextlib.suppress(Exception):
                await cb()

    async def _reconnected(self) -> None:
        for cb in list(self.reconnected_cbs):
            with contextlib.suppress(Exception):
                await cb()

    async def _connect(self) -> dict[str, int]:
        """Connect, bootstrap the replicas and start their tails; return each stream's head."""
        self._stop = asyncio.Event()
        self._nc = await nats.connect(servers=self.urls, name="shard-gateway",
                                      max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                      disconnected_cb=self._disconnected,
                                      reconnected_cb=self._reconnected)
        js = self._nc.jetstream()
        self._js = js
        for name, config in sorted(self.configs.items()):
            replica = Replica(name, await bootstrap(js, config, name), self.metrics, self.hash_every)
            if self.market_listeners is not None:  # before it applies anything past the snapshot
                replica.market = attach_market(replica.machine, self.market_listeners)
            self.replicas[name] = replica
        tasks = [CommandTail(js, r).run(self._stop) for _, r in sorted(self.replicas.items())]
        if self.check_results:
            tasks += [ResultCheck(js, r).run(self._stop) for _, r in sorted(self.replicas.items())]
        self._follow = asyncio.gather(*tasks)
        heads: dict[str, int] = {}
        for name in sorted(self.replicas):
            try:
                info = await js.stream_info(shard_stream(name))
            except (NatsError, TimeoutError):  # no stream yet, or NATS weather: nothing to wait for
                continue
            heads[name] = int(info.state.last_seq or 0)
            self.replicas[name].known_seq = max(self.replicas[name].known_seq, heads[name])
        return heads

    def close(self) -> None:
        """Stop following and disconnect."""
        async def _close() -> None:
            if self._stop is not None:
                self._stop.set()
                with contextlib.suppress(Exception):
                    await self._follow
            if self._nc is not None:
                await self._nc.close()
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(CONNECT_TIMEOUT_S)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CONNECT_TIMEOUT_S)

    # -- the request side (runs in a request thread) ----------------------------------------

    def submit(self, shard: str, msg_id: str, command: ShardCommand) -> Submitted:
        """Append `command` to `shard`'s stream under `msg_id`; wait for this replica's result.

        Raise StreamRefused: 3103 unknown shard, 3102 bad id, 3104 stream unavailable
        (no confirmation, or a replica that stopped: the client retries with the same id).
        """
        replica = self.replicas.get(shard)
        if replica is None:
            raise StreamRefused(StreamCode.UNKNOWN_MARKET, f"shard was {shard[:40]!r}, not served")
        body = encode_command(command)
        future = asyncio.run_coroutine_threadsafe(self._submit(replica, msg_id, body), self._loop)
        try:
            return future.result(self.wait_s + APPEND_SLACK_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise StreamRefused(StreamCode.STREAM_UNAVAILABLE, "no answer from the gateway loop") from None

    async def _submit(self, replica: Replica, msg_id: str, body: bytes) -> Submitted:
        assert self._js is not None
        if replica.failed is not None:
            raise StreamRefused(StreamCode.STREAM_UNAVAILABLE,
                                f"shard {replica.name} replica stopped: {replica.failed}")
        started = time.perf_counter()
        try:
            appended = await append_to(self._js, shard_stream(replica.name),
                                       shard_subject(replica.name), msg_id, body)
        except StreamRefused as exc:
            if self.metrics is not None and exc.code is StreamCode.STREAM_UNAVAILABLE:
                self.metrics.appended(replica.name, "unavailable", time.perf_counter() - started)
            raise
        acked = time.perf_counter()
        if self.metrics is not None:
            self.metrics.appended(replica.name, "duplicate" if appended.duplicate else "ok",
                                  acked - started)
        seq = appended.seq
        replica.known_seq = max(replica.known_seq, seq)
        result = replica.results.get(seq)
        if result is None and replica.machine.seq < seq:
            waiter = replica.waiters.get(seq)
            if waiter is None:
                waiter = replica.waiters[seq] = self._loop.create_future()
            try:
                result = await asyncio.wait_for(asyncio.shield(waiter), self.wait_s)
            except TimeoutError:
                result = None
            if result is not None and self.metrics is not None:
                self.metrics.replica_waited(replica.name, time.perf_counter() - acked)
        stored = replica.bodies.get(seq) if appended.duplicate else None
        return Submitted(seq, result, appended.duplicate, stored)

    def read(self, shard: str, view: Callable[[Venue], T]) -> T:
        """Run `view` on `shard`'s replica venue under its lock (a hot read from memory)."""
        replica = self.replicas[shard]
        if replica.failed is not None:
            raise StreamRefused(StreamCode.STREAM_UNAVAILABLE,
                                f"shard {replica.name} replica stopped: {replica.failed}")
        with replica.lock:
            return view(replica.machine.venue)

    def market(self, shard: str) -> MarketData:
        """Return `shard`'s market-data model, caught up with what its replica applied.

        Read it under its own lock (`MarketData.lock`), as in the embedded mode: the
        replica records each command's events under the replica lock on the loop thread
        (O(1) appends) and this folds them in on the request thread, never holding the
        replica lock (order entry is not held up by readers). Raise StreamRefused 3104
        when the replica stopped, 3103 when the gateway keeps no models or no such shard.
        """
        replica = self.replicas.get(shard)
        if replica is None or replica.market is None:
            raise StreamRefused(StreamCode.UNKNOWN_MARKET, f"shard was {shard[:40]!r}, no market data")
        if replica.failed is not None:
            raise StreamRefused(StreamCode.STREAM_UNAVAILABLE,
                                f"shard {replica.name} replica stopped: {replica.failed}")
        replica.market.catch_up()
        return replica.market

    def markets(self) -> list[MarketData]:
        """Return every shard's market-data model (by shard name), not caught up."""
        return [r.market for _, r in sorted(self.replicas.items()) if r.market is not None]

    def applied_seq(self, shard: str) -> int:
        """Return the last command sequence `shard`'s replica applied."""
        return self.replicas[shard].machine.seq


def attach_market(machine: ShardMachine,
                  listeners: list[Callable[[list[Message]], None]] | None = None) -> MarketData:
    """Return a market-data model fed by `machine` from now on (call before it applies more).

    The model starts from the machine's venue as it is (after a snapshot restore: the
    restored books, positions and marks), exactly as the embedded venue's model starts
    without a snapshot of its own: depth is complete (mirrored from the books), public
    trades, candles and the 24 h ticker start at this point. `listeners` (the shared list
    object, so listeners added later are fed too) get its stream batches.
    """
    md = MarketData()
    if listeners is not None:
        md.listeners = listeners
    collector = machine.venue.tap
    md.attach(machine.venue)  # installs itself as the venue's tap ...
    machine.venue.tap = collector  # ... but the machine's collector must stay (it forwards)
    machine.attach(md)
    return md


async def bootstrap(js: JetStreamContext, config: ExchangeConfig, shard: str) -> ShardMachine:
    """Return a replica of `shard` from its latest snapshot, or an empty one (replay from 1).

    The snapshot (written by the shard worker) re-checks its own state hash on restore;
    one that is missing or unreadable only costs a longer replay.
    """
    try:
        data = await _read_snapshot(js, shard)
    except Exception as exc:  # NATS weather or an unreadable object: replay instead
        log.info("shard %s: no snapshot (%s); replaying from the start", shard, type(exc).__name__)
        return ShardMachine(config, shard)
    if not data:
        return ShardMachine(config, shard)
    try:
        machine = ShardMachine.restore(config, shard, data)
    except Exception as exc:  # a snapshot that does not restore is skipped, never trusted
        log.warning("shard %s: snapshot refused (%s); replaying from the start", shard, exc)
        return ShardMachine(config, shard)
    log.info("shard %s: replica restored at command %d", shard, machine.seq)
    return machine


async def _read_snapshot(js: JetStreamContext, shard: str) -> bytes | None:
    """Return the shard worker's latest snapshot of `shard` (None: none yet)."""
    return await read_snapshot(js, shard)


def shard_configs(config: ExchangeConfig,
                  shards: Mapping[str, Iterable[str] | str | Path] | None = None
                  ) -> dict[str, ExchangeConfig]:
    """Return each shard's venue configuration.

    No `shards` (or an empty mapping): one shard `MAIN` with the whole configuration,
    unchanged. A shard given as a path: its own instrument file, loaded exactly as its
    shard worker and feeder load it (`--instruments`). A shard given as symbols: those
    instruments of `config`, every index, the calendar of their underlyings. Every process
    of a shard must build the same configuration, or the replicas would not be replicas
    (a snapshot taken under another one is refused by its config hash). An instrument
    in two shards is refused; with symbol lists, so is one in none.
    """
    if not shards:
        return {DEFAULT_SHARD: config}
    seen: dict[str, str] = {}
    out: dict[str, ExchangeConfig] = {}
    for name, chosen in sorted(shards.items()):
        check_symbol(name)
        if isinstance(chosen, str | Path):
            out[name] = load_instruments(Path(chosen))
        else:
            out[name] = _subset(config, name, sorted(set(chosen)))
        for symbol in out[name].instruments:
            if symbol in seen:
                raise ValueError(f"instrument {symbol} is in shards {seen[symbol]} and {name}")
            seen[symbol] = name
    lists = all(not isinstance(c, str | Path) for c in shards.values())
    missing = sorted(set(config.instruments) - set(seen))
    if lists and missing:
        raise ValueError(f"instruments in no shard: {', '.join(missing[:10])}")
    return out


def _subset(config: ExchangeConfig, name: str, chosen: list[str]) -> ExchangeConfig:
    if not chosen:
        raise ValueError(f"shard {name} lists no instruments")
    for symbol in chosen:
        if symbol not in config.instruments:
            raise ValueError(f"shard {name}: instrument {symbol[:40]!r} is not listed")
    if set(chosen) == set(config.instruments):
        return config  # the whole file: exactly what a worker loading it builds
    underlyings = {config.instruments[s].underlying for s in chosen}
    return ExchangeConfig(  # in the file's order, like a worker loading a file of these only
        instruments={s: spec for s, spec in config.instruments.items() if s in chosen},
        indices=dict(config.indices),
        calendar={u: c for u, c in config.calendar.items() if u in underlyings})


def parse_shards(text: str) -> dict[str, str]:
    """Parse ``NAME=instrument-file[,NAME=file...]`` (STRONGROOM_EXCHANGE_SHARDS) into a mapping."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, path = part.partition("=")
        if not sep or not path.strip():
            raise ValueError(f"shard entry was {part[:80]!r}, must be NAME=instrument-file")
        out[check_symbol(name.strip())] = path.strip()
    return out
