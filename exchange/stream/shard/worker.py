"""The clearing shard worker: one shard's whole venue, fed by its command stream in stream order.

Leader and standbys run the same process (`strongroom shard-worker --shard
NAME`); the leader/standby machinery (lease `shard.<NAME>` in `ENGINE_LEASE`,
fenced exactly-once publishing, silent replay up to the last published
batch, consumer weather, standing by again after a lost term) is
exchange/stream/leader.py's, shared with the per-market engine worker. This
module is the shard's machine side:

- commands of `SHARD_<NAME>` go through `ShardMachine.apply_many`
  (exchange/stream/shard/machine.py: decode, shard clock, entitlements,
  `Venue.execute`, drain), one `ShardResult` per command;
- results are published as `ShardBatch`es on `shardevt.<NAME>` (stream
  `SHARDEVT`), message id `<NAME>:<first>-<last>`;
- snapshots go to the object store `SHARD_SNAPSHOT` (object `<NAME>`,
  exchange/stream/shard/snapshots.py) at every multiple of `snapshot_every`
  command sequence numbers, after SNAPSHOT_IDLE_S without commands (at most
  every SNAPSHOT_IDLE_INTERVAL_S) and at shutdown; always at or behind
  published batches. Fetched commands are cut
  at the multiples, so the batch ending at one carries the venue's
  `state_hash` there: any replica can check it has not diverged. Restoring a
  snapshot re-checks its state hash (ShardMachine.restore): an intact object
  whose content does not reproduce its hash (a bug, or an edit) stops the
  worker (StreamCorrupt); an object that does not match its own meta record
  (chunks lost) is no snapshot, and the worker replays its stream from the start.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client
from nats.js.client import JetStreamContext
from nats.js.object_store import ObjectStore

from exchange.instruments import ExchangeConfig
from exchange.stream.leader import (
    Commands,
    StreamCorrupt,
    StreamLeader,
    Streams,
    WorkerStats,
    serve,
)
from exchange.stream.shard.machine import ShardMachine, SnapshotCorrupt
from exchange.stream.shard.metrics import ShardMetrics
from exchange.stream.shard.snapshots import SnapshotUnreadable, read_snapshot, write_snapshot
from exchange.stream.shard.wire import (
    ShardBatch,
    ShardResult,
    batch_decoder,
    batch_encoder,
    batch_msg_id,
)
from exchange.stream.topology import (
    SHARD_EVENTS_STREAM,
    shard_events_subject,
    shard_lease_key,
    shard_snapshot_store,
    shard_stream,
    shard_subject,
)

log = logging.getLogger("strongroom.shard_worker")

DEFAULT_SHARD_SNAPSHOT_EVERY = 5_000
# A shard's snapshot is a whole venue (megabytes): idle snapshots wait for a quiet second,
# and come at most every half minute (the feeder appends a round every second or so, so a
# quiet shard is "idle" between every two rounds).
SNAPSHOT_IDLE_S = 1.0
SNAPSHOT_IDLE_INTERVAL_S = 30.0


class ShardWorker(StreamLeader[ShardResult, ShardBatch]):
    """Lead (or stand by for) one clearing shard; apply its command stream while leader."""

    idle_snapshot_s = SNAPSHOT_IDLE_S
    idle_snapshot_interval_s = SNAPSHOT_IDLE_INTERVAL_S

    def __init__(self, nc: Client, js: JetStreamContext, config: ExchangeConfig, shard: str, *,
                 name: str, snapshot_every: int = DEFAULT_SHARD_SNAPSHOT_EVERY,
                 metrics: ShardMetrics | None = None) -> None:
        super().__init__(nc, js, Streams(shard_lease_key(shard), shard_stream(shard),
                                         shard_subject(shard), SHARD_EVENTS_STREAM,
                                         shard_events_subject(shard)),
                         name=name, snapshot_every=snapshot_every)
        self.config = config
        self.shard = shard
        self.machine = ShardMachine(config, shard)
        self._store: ObjectStore | None = None
        self._hash: tuple[int, str] = (-1, "")  # the state hash at a sequence, computed once
        self.metrics = metrics

    async def _snapshot_store(self) -> ObjectStore:
        if self._store is None:
            self._store = await shard_snapshot_store(self.js)
        return self._store

    async def load_snapshot(self) -> None:
        try:
            data = await read_snapshot(self.js, self.shard, await self._snapshot_store())
        except SnapshotUnreadable as exc:
            # The stored object does not match its own meta record (chunks missing or
            # altered): no usable snapshot. The command stream is the source of truth, so
            # replay it from the start (slower, never wrong).
            log.error("%s; shard %s recovers from the start of its stream", exc, self.shard)
            return
        if data is None:
            return
        try:
            machine = ShardMachine.restore(self.config, self.shard, data)
        except SnapshotCorrupt as exc:
            raise StreamCorrupt(str(exc)) from exc
        self.machine = machine
        self.seq = self.snapshot_seq = machine.seq

    async def store_snapshot(self) -> bool:
        data = self.machine.snapshot()
        await write_snapshot(self.js, self.shard, data, await self._snapshot_store())
        if self.metrics is not None:
            self.metrics.worker_snapshot(self.shard, len(data))
        log.info("snapshot of shard %s at %d: %d bytes", self.shard, self.seq, len(data))
        return True

    def pieces(self, commands: Commands) -> list[Commands]:
        """Cut after every command whose sequence is a multiple of `snapshot_every`."""
        every, out, start = self.snapshot_every, [], 0
        for i, (seq, _) in enumerate(commands):
            if seq % every == 0:
                out.append(commands[start:i + 1])
                start = i + 1
        if start < len(commands):
            out.append(commands[start:])
        return out

    def snapshot_due(self) -> bool:
        return self.seq % self.snapshot_every == 0

    def apply(self, commands: Commands) -> list[ShardResult]:
        results = self.machine.apply_many(commands)
        self.seq = self.machine.seq
        return results

    def _state_hash_at(self, seq: int) -> str | None:
        """The venue's state hash if `seq` is a snapshot point and the machine is right after it."""
        if seq % self.snapshot_every or seq != self.machine.seq:
            return None
        if self._hash[0] != seq:
            self._hash = (seq, self.machine.state_hash())
        return self._hash[1]

    def make_batch(self, results: list[ShardResult]) -> ShardBatch:
        last = results[-1].seq
        return ShardBatch(self.shard, results[0].seq, last, results, self._state_hash_at(last))

    def encode_batch(self, batch: ShardBatch) -> bytes:
        return batch_encoder.encode(batch)

    def batch_msg_id(self, batch: ShardBatch) -> str:
        return batch_msg_id(batch)

    def published_last_seq(self, data: bytes) -> int:
        return batch_decoder.decode(data).last_seq

    # -- metrics (exchange/stream/shard/metrics.py) -----------------------------------------

    def on_leading(self, leading: bool) -> None:
        if self.metrics is not None:
            self.metrics.worker_leading(self.shard, self.name, leading)

    def on_term_lost(self) -> None:
        if self.metrics is not None:
            self.metrics.worker_term_lost(self.shard)

    def on_position(self, stream_last_seq: int) -> None:
        if self.metrics is not None:
            self.metrics.worker_position(self.shard, stream_last_seq, self.seq)

    def on_applied(self, fresh: list[ShardResult]) -> None:
        if self.metrics is not None:
            self.metrics.worker_applied(self.shard, (r.code for r in fresh))

    def on_published(self, batch: ShardBatch, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.worker_published(self.shard, batch.first_seq, batch.last_seq, seconds)


async def run_shard_worker(urls: list[str], config: ExchangeConfig, shard: str, *, name: str,
                           snapshot_every: int = DEFAULT_SHARD_SNAPSHOT_EVERY,
                           stop: asyncio.Event | None = None,
                           metrics: ShardMetrics | None = None) -> WorkerStats:
    """Connect and serve clearing shard `shard` until `stop`: stand by, lead, repeat.

    See exchange/stream/leader.py `serve`. On `stop` the leader snapshots and
    releases its lease; a corrupt stream or snapshot (StreamCorrupt) stops the worker.
    `metrics` (if given) gets the worker families of exchange/stream/shard/metrics.py.
    """
    def make(nc: Client, js: JetStreamContext) -> ShardWorker:
        return ShardWorker(nc, js, config, shard, name=name, snapshot_every=snapshot_every,
                           metrics=metrics)

    return await serve(urls, make, connection_name=f"shard-{shard}-{name}", stop=stop)
