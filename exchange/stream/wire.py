"""Wire format of the scale-out mode: command messages and event batches.

A command message body is exactly one line of the engine replay format
(docs/engine-replay.md), so a command stream dumped in sequence order *is*
a replay input file. An event batch carries the engine events of a run of
consecutive commands, each tagged with the command's stream sequence.
"""

from __future__ import annotations

import msgspec

from exchange.controls import Breaker, MarketStatus
from exchange.engine.messages import Event
from exchange.engine.snapshot import SnapshotBody
from exchange.stream.controls import ControlsSnapshot

SNAPSHOT_KEY_PREFIX = "book."


class CommandEvents(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The events one command produced; `seq` is its command stream sequence."""

    seq: int
    events: list[Event]


class EventBatch(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """Events of the commands `first_seq..last_seq` of one market, in order.

    `status` / `breaker`: the market's kill-switch state in force after the batch
    (absent: open, no breaker), so every gateway knows the market's mode
    (exchange/stream/controls.py).
    """

    market: str
    first_seq: int
    last_seq: int
    commands: list[CommandEvents]
    status: MarketStatus | None = None
    breaker: Breaker | None = None


class WorkerSnapshot(msgspec.Struct, frozen=True):
    """An engine worker's snapshot: the book's and the controls' state after `book.command_seq`."""

    book: SnapshotBody
    controls: ControlsSnapshot


batch_encoder = msgspec.json.Encoder()
batch_decoder: msgspec.json.Decoder[EventBatch] = msgspec.json.Decoder(EventBatch)


def batch_msg_id(batch: EventBatch) -> str:
    """Return the Nats-Msg-Id of an event batch (market and command range)."""
    return f"{batch.market}:{batch.first_seq}-{batch.last_seq}"
