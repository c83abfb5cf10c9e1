"""A durable venue: journal every command, snapshot every N, recover to the same state hash.

Directory layout (``<data dir>/exchange`` for the app):

    venue-snapshot-<command seq>.snap     venue state after that journal record
    venue-journal-<first seq>.log         records from <first seq> on

Recovery (`recover`) loads the newest snapshot that verifies (CRC, then the
rebuilt venue's ``state_hash()`` against the recorded one), replays the
journal records after it up to the last ``Drain`` marker, and returns the
venue together with every posting the replay regenerated. Those postings
carry the ids of the original run, so submitting them again is an
idempotent retry: the ledger skips the ones it already has and applies the
rest. Records after the last ``Drain`` belong to a batch whose commit never
finished, so nothing of them was released; they are dropped (and truncated
by `DurableVenue.open`), exactly like a torn last record.

Snapshots are only taken right after a drain whose postings the ledger
accepted, so everything before a snapshot is already in the ledger and
every segment starts right after a ``Drain``.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec

from exchange.commands import Drain, VenueCommand
from exchange.controls import ControlsState, MarketControls
from exchange.engine.journal import FsyncPolicy, JournalCorrupt, fsync_dir
from exchange.engine.snapshot import SnapshotCorrupt, read_framed, write_framed
from exchange.instruments import ExchangeConfig
from exchange.journal import (
    VenueJournalWriter,
    list_segments,
    read_segment,
    segment_first_seq,
    segment_name,
)
from exchange.risk.clearing import Posting
from exchange.risk.events import RiskEvent
from exchange.state import VenueState
from exchange.venue import Venue

SNAPSHOT_MAGIC: Final = b"SRVSNP01"
SNAPSHOT_PREFIX: Final = "venue-snapshot-"
SNAPSHOT_SUFFIX: Final = ".snap"
DEFAULT_SNAPSHOT_EVERY: Final = 100_000
SNAPSHOTS_KEPT: Final = 2


class VenueLocked(Exception):
    """Another process has the venue directory open."""


class ConfigChanged(Exception):
    """The instrument configuration differs from the one the journal tail was written under."""


class VenueSnapshot(msgspec.Struct, frozen=True):
    """What a snapshot file holds."""

    command_seq: int
    state_hash: str
    config_hash: str
    state: VenueState
    # Kill switches (exchange/controls.py); absent in snapshots of venues that never set one.
    controls: ControlsState | None = None


def config_hash(config: ExchangeConfig) -> str:
    """Return the SHA-256 (hex) of the canonical encoding of an instrument configuration."""
    return hashlib.sha256(msgspec.msgpack.encode(config)).hexdigest()


def snapshot_name(command_seq: int) -> str:
    """Return the file name of the snapshot taken after record ``command_seq``."""
    return f"{SNAPSHOT_PREFIX}{command_seq:020d}{SNAPSHOT_SUFFIX}"


def list_snapshots(directory: Path) -> list[Path]:
    """Return the venue snapshots of ``directory``, oldest first."""
    return sorted(directory.glob(f"{SNAPSHOT_PREFIX}*{SNAPSHOT_SUFFIX}"))


def write_snapshot(directory: Path, command_seq: int, venue: Venue, cfg_hash: str) -> Path:
    """Atomically write the venue's state after ``command_seq`` (temp file, fsync, rename)."""
    body = msgspec.msgpack.encode(VenueSnapshot(command_seq, venue.state_hash(), cfg_hash, venue.state(),
                                                venue.controls_state()))
    return write_framed(directory / snapshot_name(command_seq), SNAPSHOT_MAGIC, body)


def read_snapshot(path: Path, config: ExchangeConfig,
                  record_fills: bool = True) -> tuple[VenueSnapshot, Venue]:
    """Load a snapshot and rebuild its venue; refuse one that does not reproduce its hash."""
    body = read_framed(path, SNAPSHOT_MAGIC)
    try:
        snap = msgspec.msgpack.decode(body, type=VenueSnapshot)
        venue = Venue.from_state(config, snap.state, record_fills)
        if snap.controls is not None:
            venue.controls = MarketControls.from_state(snap.controls)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, KeyError) as exc:
        raise SnapshotCorrupt(f"{path}: {exc}") from exc
    if venue.state_hash() != snap.state_hash:
        raise SnapshotCorrupt(f"{path}: rebuilt state hash differs from the recorded one")
    return snap, venue


@dataclass
class RecoveredVenue:
    """The outcome of `recover()`."""

    venue: Venue
    command_seq: int
    snapshot_seq: int
    replayed: int
    postings: list[Posting] = field(default_factory=list)  # regenerated: idempotent ledger retries
    events: list[RiskEvent] = field(default_factory=list)
    dropped: int = 0  # complete records after the last Drain (an unfinished batch)
    torn_bytes: int = 0
    truncate_at: tuple[Path, int] | None = None  # where the journal should end


# Called with the venue loaded from its snapshot and the snapshot's command seq, before the
# journal tail is replayed: a read model (exchange/marketdata.py) attaches here and follows the replay.
Observer = Callable[[Venue, int], None]


def recover(directory: Path, config: ExchangeConfig, record_fills: bool = True,
            observe: Observer | None = None) -> RecoveredVenue:
    """Rebuild the venue from the newest good snapshot plus the journal tail (read-only)."""
    snap, venue = _latest_snapshot(directory, config, record_fills)
    if observe is not None:
        observe(venue, snap.command_seq)
    tail: list[tuple[int, VenueCommand, Path, int]] = []
    last: tuple[Path, int] | None = None  # last segment and where its intact records end
    torn_bytes = 0
    seq = snap.command_seq
    segments = list_segments(directory)
    for index, path in enumerate(segments):
        scan = read_segment(path)
        if scan.torn_bytes and index != len(segments) - 1:
            raise JournalCorrupt(f"{path}: torn record in a segment that is not the last")
        for (record_seq, cmd), offset in zip(scan.records, scan.offsets, strict=True):
            if record_seq <= seq:
                continue
            if record_seq != seq + 1:
                raise JournalCorrupt(f"{path}: gap, expected seq {seq + 1}, found {record_seq}")
            tail.append((record_seq, cmd, path, offset))
            seq = record_seq
        torn_bytes = scan.torn_bytes
        last = (path, scan.valid_bytes)
    committed = max((i + 1 for i, t in enumerate(tail) if type(t[1]) is Drain), default=0)
    dropped = len(tail) - committed
    if committed and snap.config_hash != config_hash(config):
        raise ConfigChanged(
            f"{directory}: {committed} journal records after snapshot {snap.command_seq} were written "
            "under a different instrument configuration; restore that configuration to recover")
    rec = RecoveredVenue(venue, snap.command_seq, snap.command_seq, 0, dropped=dropped,
                         torn_bytes=torn_bytes)
    for record_seq, cmd, _, _ in tail[:committed]:
        if type(cmd) is Drain:
            postings, events = venue.drain()
            rec.postings.extend(postings)
            rec.events.extend(events)
        else:
            venue.execute(cmd)
        rec.command_seq = record_seq
        rec.replayed += 1
    if dropped:
        # Every segment starts right after a Drain, so an unfinished batch sits at the very
        # end of the last segment.
        first = tail[committed]
        if last is None or any(t[2] != last[0] for t in tail[committed:]):
            raise JournalCorrupt(f"{first[2]}: an unfinished batch spans journal segments")
        rec.truncate_at = (first[2], first[3])
    elif torn_bytes and last is not None:
        rec.truncate_at = last
    return rec


def _latest_snapshot(directory: Path, config: ExchangeConfig,
                     record_fills: bool) -> tuple[VenueSnapshot, Venue]:
    problems: list[str] = []
    for path in reversed(list_snapshots(directory)):
        try:
            return read_snapshot(path, config, record_fills)
        except SnapshotCorrupt as exc:
            problems.append(str(exc))
    raise SnapshotCorrupt(f"{directory}: no usable venue snapshot ({'; '.join(problems) or 'none'})")


class DurableVenue:
    """The venue's journal and snapshots: the ``CommandLog`` a live venue records into."""

    def __init__(self, directory: Path, venue: Venue, command_seq: int, config: ExchangeConfig, *,
                 policy: FsyncPolicy, interval_ms: int, snapshot_every: int) -> None:
        if snapshot_every <= 0:
            raise ValueError(f"snapshot_every was {snapshot_every}, must be positive")
        self.directory = directory
        self.venue = venue
        self.command_seq = command_seq
        self.config_hash = config_hash(config)
        self.policy = policy
        self.interval_ms = interval_ms
        self.snapshot_every = snapshot_every
        self.since_snapshot = 0
        # Called after each snapshot with (directory, command seq): the read model saves its own.
        self.on_snapshot: Callable[[Path, int], object] | None = None
        self._lock: int | None = None
        self._writer = VenueJournalWriter(directory / segment_name(command_seq + 1), policy, interval_ms)
        venue.journal = self
        venue.recorded = 0

    @classmethod
    def open(cls, directory: Path, config: ExchangeConfig, *, namespace: str = "x",
             record_fills: bool = True, policy: FsyncPolicy = FsyncPolicy.ALWAYS, interval_ms: int = 5,
             snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
             observe: Observer | None = None) -> tuple[DurableVenue, RecoveredVenue]:
        """Recover ``directory`` (or start it with snapshot 0 of an empty venue) and journal on."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = _lock(directory)
        if not list_snapshots(directory):
            if list_segments(directory):
                raise SnapshotCorrupt(f"{directory}: journal segments but no venue snapshot")
            venue = Venue(config, namespace, record_fills)
            write_snapshot(directory, 0, venue, config_hash(config))
            if observe is not None:
                observe(venue, 0)
            rec = RecoveredVenue(venue, 0, 0, 0)
        else:
            rec = recover(directory, config, record_fills, observe)
            if rec.venue.clearing.ns != namespace:
                raise ValueError(f"{directory} holds namespace {rec.venue.clearing.ns!r}, "
                                 f"configured {namespace!r}")
            if rec.truncate_at is not None:
                path, size = rec.truncate_at
                with open(path, "r+b") as f:
                    f.truncate(size)
                    f.flush()
                    os.fsync(f.fileno())
        durable = cls(directory, rec.venue, rec.command_seq, config, policy=policy,
                      interval_ms=interval_ms, snapshot_every=snapshot_every)
        durable.since_snapshot = rec.command_seq - rec.snapshot_seq
        durable._lock = lock
        return durable, rec

    def record(self, cmd: VenueCommand) -> None:
        """Buffer ``cmd`` as the next journal record."""
        self.command_seq += 1
        self.since_snapshot += 1
        self._writer.append(self.command_seq, cmd)

    def commit(self) -> None:
        """Make the buffered records durable (per the fsync policy)."""
        self._writer.commit()

    def snapshot_due(self) -> bool:
        """Tell whether ``snapshot_every`` records were journaled since the last snapshot."""
        return self.since_snapshot >= self.snapshot_every

    def snapshot(self) -> Path:
        """Write a snapshot now (the venue must be drained), roll the segment, prune old files."""
        self._writer.close()
        path = write_snapshot(self.directory, self.command_seq, self.venue, self.config_hash)
        self._writer = VenueJournalWriter(self.directory / segment_name(self.command_seq + 1),
                                          self.policy, self.interval_ms)
        self.since_snapshot = 0
        self.prune()
        if self.on_snapshot is not None:
            self.on_snapshot(self.directory, self.command_seq)
        return path

    def prune(self, keep: int = SNAPSHOTS_KEPT) -> None:
        """Delete all but the ``keep`` newest snapshots and the segments only they made redundant."""
        snapshots = list_snapshots(self.directory)
        if len(snapshots) <= keep:
            return
        for old in snapshots[:-keep]:
            old.unlink()
        oldest_kept = int(snapshots[-keep].name[len(SNAPSHOT_PREFIX):-len(SNAPSHOT_SUFFIX)])
        segments = list_segments(self.directory)
        for path, following in itertools.pairwise(segments):
            if segment_first_seq(following) - 1 <= oldest_kept:
                path.unlink()
        fsync_dir(self.directory)

    def close(self) -> None:
        """Commit and close the journal, and let another process open the directory."""
        self._writer.close()
        self.venue.journal = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _lock(directory: Path) -> int:
    """Take the directory's exclusive lock (released when the process dies, even by SIGKILL)."""
    fd = os.open(directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise VenueLocked(f"{directory} is open in another process") from None
    return fd
