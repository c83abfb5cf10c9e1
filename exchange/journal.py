"""The venue journal: every venue command, framed and checksummed like the engine journal.

Same record framing as exchange/engine/journal.py (``u32 length | u32
CRC32(seq || payload) | u64 seq | payload``, little-endian, payload = the
command as JSON), same torn-tail rule (an incomplete or bad last record is
dropped; a bad record with data after it is corruption), same fsync
policies. Only the file magic differs, ``SRVJN001``, so an engine journal
and a venue journal can never be mistaken for one another.

Records are the commands of exchange/commands.py; sequence numbers start
at 1 and increase by exactly one across segments. A batch of commands ends
with a ``Drain`` record: the shell commits the journal right after it and
only then releases the batch's effects (ledger postings, API responses).

Versions before 2026-12 journaled an order the API then refused because of
an invalid ``side``, ``type``, ``tif``, ``stp`` or ``trigger``; such a record
does not decode into ``NewOrder``'s enums. Reading one is not corruption: it
is decoded leniently and replayed exactly as those versions ran it (the book
rejected it), so the state hash and every later posting id stay what they
were. The venue now refuses such orders before journaling them
(``exchange.venue.order_problem``), so no new one can be written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from exchange.commands import Place, VenueCommand
from exchange.engine.journal import (
    FramedWriter,
    FsyncPolicy,
    JournalCorrupt,
    frame_record,
    scan_frames,
)
from exchange.engine.messages import NewOrder

MAGIC: Final = b"SRVJN001"
SEGMENT_PREFIX: Final = "venue-journal-"
SEGMENT_SUFFIX: Final = ".log"

log = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[VenueCommand] = msgspec.json.Decoder(VenueCommand)


class _LegacyOrder(msgspec.Struct, tag_field="op", tag="new", forbid_unknown_fields=True):
    """A journaled ``NewOrder`` whose enum fields are plain strings (see the module docstring)."""

    id: str
    account: str
    side: str
    qty: int
    type: str = "limit"
    price: int | None = None
    tif: str = "GTC"
    stp: str | None = None
    reduce_only: bool = False
    trigger_price: int | None = None
    trigger: str = "last"
    ts: int = 0


class _LegacyPlace(msgspec.Struct, tag_field="op", tag="place", forbid_unknown_fields=True):
    symbol: str
    order: _LegacyOrder


_legacy_decoder: msgspec.json.Decoder[_LegacyPlace] = msgspec.json.Decoder(_LegacyPlace)


def legacy_place(payload: bytes) -> Place | None:
    """Return the order a pre-validation version journaled and the book refused, or None.

    The result carries the original (invalid) enum strings: replaying it gives
    the same rejection, sequence numbers and state hash as the original run.
    """
    try:
        old = _legacy_decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    order = NewOrder(**msgspec.structs.asdict(old.order))
    return Place(old.symbol, order)

__all__ = ["MAGIC", "FsyncPolicy", "JournalCorrupt", "SegmentScan", "VenueJournalWriter",
           "encode_record", "list_segments", "read_segment", "segment_name"]


def segment_name(first_seq: int) -> str:
    """Return the file name of the segment whose first record is ``first_seq``."""
    return f"{SEGMENT_PREFIX}{first_seq:020d}{SEGMENT_SUFFIX}"


def segment_first_seq(path: Path) -> int:
    """Return the first sequence number a segment file is named after."""
    return int(path.name[len(SEGMENT_PREFIX):-len(SEGMENT_SUFFIX)])


def list_segments(directory: Path) -> list[Path]:
    """Return the venue journal segments of ``directory`` in sequence order."""
    return sorted(directory.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}"))


def encode_record(seq: int, cmd: VenueCommand) -> bytes:
    """Return one framed record."""
    return frame_record(seq, _encoder.encode(cmd))


class VenueJournalWriter(FramedWriter[VenueCommand]):
    """Append venue records to one segment file; ``commit()`` makes them durable per the policy."""

    def __init__(self, path: Path, policy: FsyncPolicy = FsyncPolicy.ALWAYS,
                 interval_ms: int = 5) -> None:
        super().__init__(path, policy, interval_ms, magic=MAGIC, encode=encode_record)


@dataclass(frozen=True)
class SegmentScan:
    """What reading one segment found."""

    records: list[tuple[int, VenueCommand]]
    offsets: list[int]  # byte offset of each record
    valid_bytes: int
    torn_bytes: int


def read_segment(path: Path) -> SegmentScan:
    """Read every intact record of a segment; detect and drop a torn tail (the engine's framing)."""
    frames, valid, torn = scan_frames(path, path.read_bytes(), MAGIC)
    records: list[tuple[int, VenueCommand]] = []
    offsets: list[int] = []
    for pos, seq, payload in frames:
        try:
            cmd = _decoder.decode(payload)
        except msgspec.ValidationError as exc:
            legacy = legacy_place(payload)
            if legacy is None:
                raise JournalCorrupt(f"{path}: record seq {seq} at byte {pos}: {exc}") from exc
            log.warning("%s: record seq %d is an order refused by validation (%s); replaying it "
                        "as the rejection it was when it was written", path, seq, exc)
            cmd = legacy
        except msgspec.DecodeError as exc:
            raise JournalCorrupt(f"{path}: record seq {seq} at byte {pos}: {exc}") from exc
        records.append((seq, cmd))
        offsets.append(pos)
    return SegmentScan(records, offsets, valid, torn)
