"""The engine worker: one market's order book, fed from its command stream in stream order.

The leader/standby machinery (lease in `ENGINE_LEASE` under the market's
symbol, fencing of event batches on `evt.<SYMBOL>`, silent replay up to the
last published batch, consumer weather) is exchange/stream/leader.py's,
shared with the clearing shard worker; this module is the market's machine:
the order book with its kill switches (exchange/stream/controls.py), event
batches and the book's snapshot in the `ENGINE_SNAPSHOT` bucket.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError

from exchange.engine.instrument import Instrument
from exchange.engine.orderbook import OrderBook
from exchange.engine.snapshot import SnapshotBody
from exchange.stream.controls import EngineControls
from exchange.stream.leader import (
    DEFAULT_SNAPSHOT_EVERY,
    Commands,
    Fenced,
    StreamCorrupt,
    StreamLeader,
    Streams,
    WorkerStats,
    serve,
)
from exchange.stream.topology import (
    EVENTS_STREAM,
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

# Fenced and StreamCorrupt are what callers of run_worker catch; they live in the leader module.
__all__ = ["EngineWorker", "Fenced", "StreamCorrupt", "WorkerStats", "run_worker"]

log = logging.getLogger("strongroom.engine_worker")


class EngineWorker(StreamLeader[CommandEvents, EventBatch]):
    """Lead (or stand by for) one market; process its command stream while leader."""

    def __init__(self, nc: Client, js: JetStreamContext, instrument: Instrument, *, name: str,
                 snapshot_every: int = DEFAULT_SNAPSHOT_EVERY) -> None:
        symbol = instrument.symbol
        super().__init__(nc, js, Streams(symbol, command_stream(symbol), command_subject(symbol),
                                         EVENTS_STREAM, events_subject(symbol)),
                         name=name, snapshot_every=snapshot_every)
        self.instrument = instrument
        self.symbol = symbol
        self.book = OrderBook(instrument)
        self.gate = EngineControls(symbol)  # kill switches, in stream order

    async def load_snapshot(self) -> None:
        snaps = await snapshot_bucket(self.js)
        try:
            entry = await snaps.get(SNAPSHOT_KEY_PREFIX + self.symbol)
        except KeyNotFoundError:
            return
        if not entry.value:
            return
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

    async def store_snapshot(self) -> bool:
        body = msgspec.msgpack.encode(WorkerSnapshot(
            SnapshotBody(self.seq, self.book.state_hash(), self.book.state()), self.gate.snapshot()))
        if len(body) > MAX_MSG_BYTES:
            log.warning("snapshot of %s is %d bytes, over the bucket limit; skipped",
                        self.symbol, len(body))
            return False
        snaps = await snapshot_bucket(self.js)
        await snaps.put(SNAPSHOT_KEY_PREFIX + self.symbol, body)
        return True

    def apply(self, commands: Commands) -> list[CommandEvents]:
        book, run = self.book, self.gate.run
        out = [CommandEvents(seq, run(book, seq, data)) for seq, data in commands]
        self.seq = commands[-1][0]
        return out

    def make_batch(self, results: list[CommandEvents]) -> EventBatch:
        return EventBatch(self.symbol, results[0].seq, results[-1].seq, results,
                          self.gate.status(), self.gate.controls.breakers.get(self.symbol))

    def encode_batch(self, batch: EventBatch) -> bytes:
        return batch_encoder.encode(batch)

    def batch_msg_id(self, batch: EventBatch) -> str:
        return batch_msg_id(batch)

    def published_last_seq(self, data: bytes) -> int:
        return batch_decoder.decode(data).last_seq


async def run_worker(urls: list[str], instrument: Instrument, *, name: str,
                     snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
                     stop: asyncio.Event | None = None) -> WorkerStats:
    """Connect and serve `instrument`'s market until `stop`: stand by, lead, repeat.

    See exchange/stream/leader.py `serve`: a lost term stands by again, a corrupt
    stream or snapshot (StreamCorrupt) stops the worker.
    """
    def make(nc: Client, js: JetStreamContext) -> EngineWorker:
        return EngineWorker(nc, js, instrument, name=name, snapshot_every=snapshot_every)

    return await serve(urls, make, connection_name=f"engine-{instrument.symbol}-{name}",
                       stop=stop)
