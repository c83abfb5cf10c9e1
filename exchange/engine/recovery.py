"""A durable engine: journal before processing, snapshot every N commands, recover.

Directory layout (one instrument per directory):

    snapshot-<command seq>.snap    book state after that command
    journal-<first seq>.log        commands from <first seq> on

`DurableEngine.create()` writes snapshot 0 (the empty book, which also
records the instrument), so recovery always has a starting point.
`recover()` loads the newest snapshot that verifies, replays every journal
record after it in sequence order and returns the book; its `state_hash()`
equals that of an uninterrupted run over the same commands.
"""

from dataclasses import dataclass
from pathlib import Path

from exchange.engine.instrument import Instrument
from exchange.engine.journal import (
    FsyncPolicy,
    JournalCorrupt,
    JournalWriter,
    list_segments,
    read_segment,
    segment_name,
)
from exchange.engine.messages import Command, Event
from exchange.engine.orderbook import OrderBook, ReduceOnlyHook
from exchange.engine.snapshot import (
    SnapshotCorrupt,
    list_snapshots,
    read_snapshot,
    write_snapshot,
)

DEFAULT_SNAPSHOT_EVERY = 100_000


@dataclass(frozen=True)
class Recovered:
    """The outcome of `recover()`."""

    book: OrderBook
    command_seq: int
    snapshot_seq: int
    replayed: int
    torn_bytes: int
    torn_segment: Path | None


def recover(directory: Path, reduce_only_hook: ReduceOnlyHook | None = None) -> Recovered:
    """Rebuild the book from the newest good snapshot plus the journal tail.

    Read-only: a torn tail is reported, not truncated (`DurableEngine.open`
    truncates it before appending).
    """
    snapshot_seq, book = _latest_snapshot(directory, reduce_only_hook)
    seq = snapshot_seq
    replayed = 0
    torn_bytes = 0
    torn_segment: Path | None = None
    segments = list_segments(directory)
    for index, path in enumerate(segments):
        scan = read_segment(path)
        if scan.torn_bytes and index != len(segments) - 1:
            raise JournalCorrupt(f"{path}: torn record in a segment that is not the last")
        for record_seq, cmd in scan.records:
            if record_seq <= seq:
                continue
            if record_seq != seq + 1:
                raise JournalCorrupt(f"{path}: gap, expected seq {seq + 1}, found {record_seq}")
            book.process(cmd)
            book.events.clear()
            seq = record_seq
            replayed += 1
        if scan.torn_bytes:
            torn_bytes = scan.torn_bytes
            torn_segment = path
    book.validate_internal_state()
    return Recovered(book, seq, snapshot_seq, replayed, torn_bytes, torn_segment)


def _latest_snapshot(
    directory: Path, reduce_only_hook: ReduceOnlyHook | None
) -> tuple[int, OrderBook]:
    problems: list[str] = []
    for path in reversed(list_snapshots(directory)):
        try:
            return read_snapshot(path, reduce_only_hook)
        except SnapshotCorrupt as exc:
            problems.append(str(exc))
    raise SnapshotCorrupt(f"{directory}: no usable snapshot ({'; '.join(problems) or 'none'})")


class DurableEngine:
    """An order book whose every command is journaled before it runs."""

    def __init__(
        self,
        directory: Path,
        book: OrderBook,
        command_seq: int,
        policy: FsyncPolicy,
        interval_ms: int,
        snapshot_every: int,
    ) -> None:
        if snapshot_every <= 0:
            raise ValueError(f"snapshot_every was {snapshot_every}, must be positive")
        self.directory = directory
        self.book = book
        self.command_seq = command_seq
        self.policy = policy
        self.interval_ms = interval_ms
        self.snapshot_every = snapshot_every
        self._journal = JournalWriter(directory / segment_name(command_seq + 1), policy,
                                      interval_ms)

    @classmethod
    def create(
        cls,
        directory: Path,
        instrument: Instrument,
        *,
        market_data: bool = False,
        policy: FsyncPolicy = FsyncPolicy.ALWAYS,
        interval_ms: int = 5,
        snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
        reduce_only_hook: ReduceOnlyHook | None = None,
    ) -> "DurableEngine":
        """Start a new, empty engine directory."""
        directory.mkdir(parents=True, exist_ok=True)
        if list_snapshots(directory) or list_segments(directory):
            raise FileExistsError(f"{directory} already holds an engine; use open()")
        book = OrderBook(instrument, market_data=market_data, reduce_only_hook=reduce_only_hook)
        write_snapshot(directory, 0, book)
        return cls(directory, book, 0, policy, interval_ms, snapshot_every)

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        policy: FsyncPolicy = FsyncPolicy.ALWAYS,
        interval_ms: int = 5,
        snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
        reduce_only_hook: ReduceOnlyHook | None = None,
    ) -> "DurableEngine":
        """Recover an existing directory, drop a torn tail, continue in a new segment."""
        rec = recover(directory, reduce_only_hook)
        if rec.torn_segment is not None:
            with open(rec.torn_segment, "r+b") as f:
                size = f.seek(0, 2)
                f.truncate(size - rec.torn_bytes)
        # Later records go to a fresh segment named after their first seq,
        # so a segment is never appended to after a crash.
        return cls(directory, rec.book, rec.command_seq, policy, interval_ms, snapshot_every)

    def submit(self, cmd: Command) -> list[Event]:
        """Journal and commit `cmd`, then apply it; return its events."""
        return self.submit_batch([cmd])

    def submit_batch(self, cmds: list[Command]) -> list[Event]:
        """Group commit: journal all of `cmds` with one commit, then apply them."""
        seq = self.command_seq
        for cmd in cmds:
            seq += 1
            self._journal.append(seq, cmd)
        self._journal.commit()
        book = self.book
        for cmd in cmds:
            book.process(cmd)
            self.command_seq += 1
            if self.command_seq % self.snapshot_every == 0:
                self.snapshot()
        return book.take_events()

    def snapshot(self) -> None:
        """Write a snapshot now and continue the journal in a new segment."""
        self._journal.close()
        write_snapshot(self.directory, self.command_seq, self.book)
        self._journal = JournalWriter(self.directory / segment_name(self.command_seq + 1),
                                      self.policy, self.interval_ms)

    def close(self) -> None:
        """Flush and close the journal."""
        self._journal.close()
