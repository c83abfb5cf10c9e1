"""Journal framing, torn tails, snapshots and recovery."""

from pathlib import Path

import pytest
from engine_streams import INSTRUMENT, random_stream

from exchange.engine.journal import (
    MAGIC,
    FsyncPolicy,
    JournalCorrupt,
    JournalWriter,
    encode_record,
    list_segments,
    read_segment,
)
from exchange.engine.messages import Cancel, Command
from exchange.engine.orderbook import OrderBook
from exchange.engine.recovery import DurableEngine, recover
from exchange.engine.snapshot import list_snapshots


def hash_of(stream: list[Command]) -> str:
    book = OrderBook(INSTRUMENT)
    for cmd in stream:
        book.process(cmd)
    return book.state_hash()


def write_journal(path: Path, stream: list[Command]) -> None:
    writer = JournalWriter(path, FsyncPolicy.NEVER)
    for seq, cmd in enumerate(stream, 1):
        writer.append(seq, cmd)
    writer.close()


def test_journal_round_trips_commands(tmp_path: Path) -> None:
    stream = random_stream(1, 200)
    write_journal(tmp_path / "j.log", stream)
    scan = read_segment(tmp_path / "j.log")
    assert scan.records == list(enumerate(stream, 1))
    assert scan.torn_bytes == 0


def test_torn_last_record_is_dropped_at_every_cut_point(tmp_path: Path) -> None:
    stream = random_stream(2, 5)
    path = tmp_path / "j.log"
    write_journal(path, stream)
    full = path.read_bytes()
    last = len(encode_record(5, stream[4]))
    for cut in range(len(full) - last, len(full)):
        path.write_bytes(full[:cut])
        scan = read_segment(path)
        assert [seq for seq, _ in scan.records] == [1, 2, 3, 4], cut
        assert scan.torn_bytes == cut - (len(full) - last)


def test_flipped_byte_in_last_record_is_a_torn_tail(tmp_path: Path) -> None:
    stream = random_stream(3, 5)
    path = tmp_path / "j.log"
    write_journal(path, stream)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    assert len(read_segment(path).records) == 4


def test_zero_padding_after_last_record_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "j.log"
    write_journal(path, random_stream(4, 5))
    path.write_bytes(path.read_bytes() + b"\0" * 4096)
    scan = read_segment(path)
    assert len(scan.records) == 5 and scan.torn_bytes == 4096


def test_corruption_before_the_tail_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "j.log"
    write_journal(path, random_stream(5, 5))
    data = bytearray(path.read_bytes())
    data[len(MAGIC) + 20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt, match="CRC mismatch"):
        read_segment(path)


def test_recovery_from_snapshots_and_tail_matches_uninterrupted_run(tmp_path: Path) -> None:
    stream = random_stream(6, 1_050)
    engine = DurableEngine.create(tmp_path, INSTRUMENT, policy=FsyncPolicy.NEVER,
                                  snapshot_every=200)
    for i in range(0, len(stream), 7):
        engine.submit_batch(stream[i : i + 7])
    engine.close()
    assert len(list_snapshots(tmp_path)) == 6  # 0, 200, ..., 1000
    rec = recover(tmp_path)
    assert (rec.command_seq, rec.snapshot_seq, rec.replayed) == (1_050, 1_000, 50)
    assert rec.book.state_hash() == engine.book.state_hash() == hash_of(stream)


def test_open_truncates_torn_tail_and_continues(tmp_path: Path) -> None:
    stream = random_stream(7, 300)
    engine = DurableEngine.create(tmp_path, INSTRUMENT, policy=FsyncPolicy.NEVER,
                                  snapshot_every=1_000)
    for cmd in stream[:100]:
        engine.submit(cmd)
    engine.close()
    [segment] = list_segments(tmp_path)
    segment.write_bytes(segment.read_bytes()[:-5])  # tear record 100
    engine = DurableEngine.open(tmp_path, policy=FsyncPolicy.ALWAYS)
    assert engine.command_seq == 99
    assert engine.book.state_hash() == hash_of(stream[:99])
    for cmd in stream[99:]:
        engine.submit(cmd)
    engine.close()
    rec = recover(tmp_path)
    assert rec.torn_bytes == 0 and rec.command_seq == 300
    assert rec.book.state_hash() == hash_of(stream)


def test_damaged_latest_snapshot_falls_back_to_an_older_one(tmp_path: Path) -> None:
    stream = random_stream(8, 250)
    engine = DurableEngine.create(tmp_path, INSTRUMENT, policy=FsyncPolicy.NEVER,
                                  snapshot_every=100)
    engine.submit_batch(stream)
    engine.close()
    newest = list_snapshots(tmp_path)[-1]
    newest.write_bytes(newest.read_bytes()[:-1] + b"\x00")
    rec = recover(tmp_path)
    assert rec.snapshot_seq == 100
    assert rec.book.state_hash() == hash_of(stream)


def test_gap_in_journal_is_an_error(tmp_path: Path) -> None:
    engine = DurableEngine.create(tmp_path, INSTRUMENT, policy=FsyncPolicy.NEVER)
    engine.close()
    writer = JournalWriter(tmp_path / "journal-00000000000000000001.log", FsyncPolicy.NEVER)
    writer.append(1, Cancel("a"))
    writer.append(3, Cancel("b"))
    writer.close()
    with pytest.raises(JournalCorrupt, match="gap"):
        recover(tmp_path)
