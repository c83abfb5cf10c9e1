"""Snapshot files: the full book state after a given command sequence number.

Layout: 8-byte magic `SRSNAP01`, u32 CRC32 of the body, u64 body length,
then the body: msgpack of `SnapshotBody` (command seq, state hash, state).
Files are written to a temporary name, fsynced and renamed, so a crash
leaves either the old set of snapshots or the new one, never half a file.
Loading re-hashes the rebuilt book and refuses a snapshot whose hash does
not match what was recorded.
"""

import os
import struct
import zlib
from pathlib import Path

import msgspec

from exchange.engine.journal import fsync_dir
from exchange.engine.orderbook import OrderBook, ReduceOnlyHook
from exchange.engine.state import BookState

MAGIC = b"SRSNAP01"
HEADER = struct.Struct("<IQ")
PREFIX = "snapshot-"
SUFFIX = ".snap"


class SnapshotCorrupt(Exception):
    """A snapshot file is damaged or does not reproduce its state hash."""


class SnapshotBody(msgspec.Struct, frozen=True):
    """What a snapshot file holds."""

    command_seq: int
    state_hash: str
    state: BookState


def snapshot_name(command_seq: int) -> str:
    """Return the file name of the snapshot taken after `command_seq`."""
    return f"{PREFIX}{command_seq:020d}{SUFFIX}"


def list_snapshots(directory: Path) -> list[Path]:
    """Return snapshot files of `directory`, oldest first."""
    return sorted(directory.glob(f"{PREFIX}*{SUFFIX}"))


def write_snapshot(directory: Path, command_seq: int, book: OrderBook) -> Path:
    """Atomically write the state of `book` after `command_seq`; return the path."""
    body = msgspec.msgpack.encode(SnapshotBody(command_seq, book.state_hash(), book.state()))
    return write_framed(directory / snapshot_name(command_seq), MAGIC, body)


def write_framed(path: Path, magic: bytes, body: bytes) -> Path:
    """Atomically write ``magic | u32 CRC32(body) | u64 len | body`` (temp file, fsync, rename).

    The one snapshot framing, shared by the engine and venue snapshots.
    """
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(magic + HEADER.pack(zlib.crc32(body), len(body)) + body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def read_framed(path: Path, magic: bytes) -> bytes:
    """Return the body of a file `write_framed` wrote; raise `SnapshotCorrupt` if damaged."""
    data = path.read_bytes()
    start = len(magic) + HEADER.size
    if len(data) < start or data[: len(magic)] != magic:
        raise SnapshotCorrupt(f"{path}: bad magic or short file ({len(data)} bytes)")
    crc, length = HEADER.unpack_from(data, len(magic))
    body = data[start:]
    if len(body) != length or zlib.crc32(body) != crc:
        raise SnapshotCorrupt(f"{path}: body length/CRC mismatch")
    return body


def read_snapshot(
    path: Path, reduce_only_hook: ReduceOnlyHook | None = None
) -> tuple[int, OrderBook]:
    """Load a snapshot; return (command seq, rebuilt book)."""
    body = read_framed(path, MAGIC)
    try:
        snap = msgspec.msgpack.decode(body, type=SnapshotBody)
    except msgspec.DecodeError as exc:
        raise SnapshotCorrupt(f"{path}: {exc}") from exc
    book = OrderBook.from_state(snap.state, reduce_only_hook=reduce_only_hook)
    book.validate_internal_state()
    if book.state_hash() != snap.state_hash:
        raise SnapshotCorrupt(f"{path}: rebuilt state hash differs from the recorded one")
    return snap.command_seq, book
