"""Append-only command journal: framed, checksummed records in segment files.

File layout: an 8-byte magic `SRJNL001`, then records

    u32 payload length | u32 CRC32(seq || payload) | u64 command seq | payload

all little-endian, where the payload is the command as JSON (the same
encoding as a replay input line, so big integers survive and a journal can
be inspected with ordinary tools). Command sequence numbers start at 1 and
increase by exactly one.

A crash can tear only the last record, because records are only ever
appended. Reading stops at the first record that is incomplete or fails its
CRC; if nothing but that record (or zero padding) follows, it is a torn tail
and is dropped. A bad record with valid data after it is corruption, and
reading raises `JournalCorrupt` rather than guess.

Durability is the caller's group commit: `append()` only buffers, `commit()`
flushes to the OS and then fsyncs according to the policy:

- `always`: fsync on every commit. Survives power loss; costs one fsync
  (tens of microseconds to milliseconds) per commit.
- `interval`: fsync when `interval_ms` has passed since the last fsync. A
  process crash loses nothing already committed (the OS has the bytes); a
  power loss can lose up to `interval_ms` of commands.
- `never`: leave writeback to the OS. Same process-crash guarantee, no
  bound on power-loss exposure; fastest.
"""

import enum
import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Generic, TypeVar

import msgspec

from exchange.engine.messages import Command

T = TypeVar("T")

MAGIC = b"SRJNL001"
HEADER = struct.Struct("<IIQ")
SEQ = struct.Struct("<Q")
# Limit on everything: no command encodes anywhere near this large.
MAX_RECORD_BYTES = 1 << 20
SEGMENT_PREFIX = "journal-"
SEGMENT_SUFFIX = ".log"

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Command] = msgspec.json.Decoder(Command)


class JournalCorrupt(Exception):
    """The journal holds damaged data that is not a torn tail."""


class FsyncPolicy(enum.Enum):
    """When `commit()` forces journal bytes to stable storage."""

    ALWAYS = "always"
    INTERVAL = "interval"
    NEVER = "never"


def segment_name(first_seq: int) -> str:
    """Return the file name of the segment whose first record is `first_seq`."""
    return f"{SEGMENT_PREFIX}{first_seq:020d}{SEGMENT_SUFFIX}"


def list_segments(directory: Path) -> list[Path]:
    """Return the journal segments of `directory` in sequence order."""
    return sorted(directory.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}"))


def encode_record(seq: int, cmd: Command) -> bytes:
    """Return one framed record."""
    return frame_record(seq, _encoder.encode(cmd))


def frame_record(seq: int, payload: bytes) -> bytes:
    """Return ``payload`` framed as record ``seq`` (shared by the engine and venue journals)."""
    if len(payload) > MAX_RECORD_BYTES:
        raise ValueError(f"command encodes to {len(payload)} bytes, max {MAX_RECORD_BYTES}")
    crc = zlib.crc32(payload, zlib.crc32(SEQ.pack(seq)))
    return HEADER.pack(len(payload), crc, seq) + payload


class FramedWriter(Generic[T]):
    """Append framed records to one segment file; shared by the engine and venue journals.

    ``magic`` opens a new file; ``encode(seq, record)`` frames one record.
    """

    def __init__(
        self,
        path: Path,
        policy: FsyncPolicy,
        interval_ms: int,
        *,
        magic: bytes,
        encode: Callable[[int, T], bytes],
    ) -> None:
        self.path = path
        self.policy = policy
        self.interval_ns = interval_ms * 1_000_000
        self._encode = encode
        self._last_sync_ns = time.monotonic_ns()
        new = not path.exists() or path.stat().st_size == 0
        self._file: BinaryIO = open(path, "ab")  # noqa: SIM115 - closed in close()
        if new:
            self._file.write(magic)
            self.commit()
            fsync_dir(path.parent)

    def append(self, seq: int, record: T) -> None:
        """Buffer one record; it is durable only after `commit()`."""
        self._file.write(self._encode(seq, record))

    def commit(self) -> None:
        """Hand buffered records to the OS, then fsync per the policy."""
        self._file.flush()
        if self.policy is FsyncPolicy.ALWAYS:
            os.fsync(self._file.fileno())
        elif self.policy is FsyncPolicy.INTERVAL:
            now = time.monotonic_ns()
            if now - self._last_sync_ns >= self.interval_ns:
                os.fsync(self._file.fileno())
                self._last_sync_ns = now

    def close(self) -> None:
        """Commit, fsync and close the segment."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


class JournalWriter(FramedWriter[Command]):
    """Append engine command records to one segment file."""

    def __init__(
        self, path: Path, policy: FsyncPolicy = FsyncPolicy.ALWAYS, interval_ms: int = 5
    ) -> None:
        super().__init__(path, policy, interval_ms, magic=MAGIC, encode=encode_record)


@dataclass(frozen=True)
class SegmentScan:
    """What reading one segment found."""

    records: list[tuple[int, Command]]
    valid_bytes: int
    torn_bytes: int


def read_segment(path: Path) -> SegmentScan:
    """Read every intact record of a segment; detect and drop a torn tail."""
    frames, valid, torn = scan_frames(path, path.read_bytes(), MAGIC)
    records: list[tuple[int, Command]] = []
    for pos, seq, payload in frames:
        try:
            records.append((seq, _decoder.decode(payload)))
        except msgspec.DecodeError as exc:
            raise JournalCorrupt(f"{path}: record seq {seq} at byte {pos}: {exc}") from exc
    return SegmentScan(records, valid, torn)


def scan_frames(path: Path, data: bytes, magic: bytes) -> tuple[list[tuple[int, int, bytes]], int, int]:
    """Return the intact records of a segment as (byte offset, seq, payload), its valid bytes and torn tail.

    The one reader of the framing, shared by the engine and venue journals
    (each checks its own ``magic`` and decodes its own payloads). An incomplete
    or bad last record is a torn tail and dropped; a bad record with data after
    it is `JournalCorrupt`.
    """
    if len(data) < len(magic):
        if magic.startswith(data):
            return [], 0, len(data)
        raise JournalCorrupt(f"{path}: bad magic {data!r}")
    if data[: len(magic)] != magic:
        raise JournalCorrupt(f"{path}: bad magic {data[: len(magic)]!r}")
    frames: list[tuple[int, int, bytes]] = []
    pos = len(magic)
    end = len(data)
    while pos < end:
        problem = check_record(data, pos)
        if problem:
            if claimed_end(data, pos) >= end or not data[pos:].strip(b"\0"):
                return frames, pos, end - pos
            raise JournalCorrupt(f"{path}: {problem} at byte {pos} with data after it")
        length, _, seq = HEADER.unpack_from(data, pos)
        start = pos + HEADER.size
        frames.append((pos, seq, data[start : start + length]))
        pos = start + length
    return frames, pos, 0


def claimed_end(data: bytes, pos: int) -> int:
    """Return where the record at `pos` claims to end (clamped to the data)."""
    if pos + HEADER.size > len(data):
        return len(data)
    length: int = HEADER.unpack_from(data, pos)[0]
    return pos + HEADER.size + length


def check_record(data: bytes, pos: int) -> str:
    """Return why the record at `pos` is unusable, or an empty string."""
    if pos + HEADER.size > len(data):
        return "truncated header"
    length, crc, seq = HEADER.unpack_from(data, pos)
    if length == 0 or length > MAX_RECORD_BYTES:
        return f"impossible length {length}"
    start = pos + HEADER.size
    if start + length > len(data):
        return "truncated payload"
    if zlib.crc32(data[start : start + length], zlib.crc32(SEQ.pack(seq))) != crc:
        return "CRC mismatch"
    return ""


def fsync_dir(directory: Path) -> None:
    """Make a created or renamed directory entry durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

