"""Venue durability: journal + snapshots -> the same state hash; replayed postings are retries."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custody.ledger.service import Ledger
from exchange.api.blueprint import EXTENSION
from exchange.commands import Deposit, Drain, Place
from exchange.engine.journal import FsyncPolicy, JournalCorrupt
from exchange.engine.messages import NewOrder
from exchange.instruments import load_instruments
from exchange.journal import list_segments
from exchange.recovery import (
    ConfigChanged,
    DurableVenue,
    SnapshotCorrupt,
    VenueLocked,
    list_snapshots,
    recover,
)
from exchange.risk.clearing import Posting
from exchange.service import ExchangeService
from exchange.venue import Venue

from .helpers import config
from .venue_streams import apply_batch, ledger_deposits, random_batches

CONFIG = load_instruments()


def run_reference(batches: list[list[tuple[object, ...]]]) -> Venue:
    """Run batches on a venue without any journal, draining after each."""
    v = Venue(CONFIG)
    for batch in batches:
        apply_batch(v, batch)
        v.drain()
    return v


def run_journaled(directory: Path, batches: list[list[tuple[object, ...]]], snapshot_every: int,
                  postings: dict[str, Posting]) -> DurableVenue:
    durable, _ = DurableVenue.open(directory, CONFIG, policy=FsyncPolicy.NEVER,
                                   snapshot_every=snapshot_every)
    for batch in batches:
        apply_batch(durable.venue, batch)
        drained, _ = durable.venue.drain()
        durable.commit()
        postings.update((p[0], p) for p in drained)
        if durable.snapshot_due():
            durable.snapshot()
    return durable


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), count=st.integers(1, 120), snapshot_every=st.integers(3, 80),
       unfinished=st.booleans())
def test_replaying_the_journal_reproduces_the_state_hash(seed: int, count: int, snapshot_every: int,
                                                         unfinished: bool) -> None:
    batches = random_batches(seed, count + 10)
    done, more = batches[:len(batches) - 10], batches[len(batches) - 10:]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        postings: dict[str, Posting] = {}
        durable = run_journaled(directory, done, snapshot_every, postings)
        live = durable.venue
        expected = live.state_hash()
        if unfinished:
            # A batch whose drain never happened: its records reach the file, uncommitted.
            apply_batch(live, more[0])
        durable.close()

        rec = recover(directory, CONFIG)
        assert rec.venue.state_hash() == expected
        assert rec.venue.state_hash() == run_reference(done).state_hash()
        assert rec.dropped == (live.recorded if unfinished else 0)
        # Every posting the replay regenerates is one the ledger already had, byte for byte.
        for p in rec.postings:
            assert postings[p[0]] == p

        # The recovered venue carries on exactly like an uninterrupted one.
        durable, _ = DurableVenue.open(directory, CONFIG, policy=FsyncPolicy.NEVER,
                                       snapshot_every=snapshot_every)
        for batch in more:
            apply_batch(durable.venue, batch)
            durable.venue.drain()
            durable.commit()
        durable.close()
        final = run_reference(done + more).state_hash()
        assert durable.venue.state_hash() == final
        assert recover(directory, CONFIG).venue.state_hash() == final


def test_state_round_trips_through_from_state() -> None:
    v = run_reference(random_batches(7, 200))
    again = Venue.from_state(CONFIG, v.state())
    assert again.state_hash() == v.state_hash()
    # ... and behaves the same afterwards.
    tail = random_batches(8, 30)[-20:]
    for venue in (v, again):
        for batch in tail:
            apply_batch(venue, batch)
            venue.drain()
    assert again.state_hash() == v.state_hash()


def test_execute_runs_what_the_public_methods_record() -> None:
    recorded: list[object] = []

    class Log:
        def record(self, cmd: object) -> None:
            recorded.append(cmd)

    batches = random_batches(3, 150)
    v = Venue(CONFIG)
    v.journal = Log()  # type: ignore[assignment]
    for batch in batches:
        apply_batch(v, batch)
        v.drain()
    replayed = Venue(CONFIG)
    for cmd in recorded:
        replayed.execute(cmd)  # type: ignore[arg-type]
    assert replayed.state_hash() == v.state_hash()
    assert sum(type(c) is Drain for c in recorded) <= len(batches)


def test_torn_tail_is_dropped_and_truncated_on_open(tmp_path: Path) -> None:
    durable = run_journaled(tmp_path, random_batches(5, 40), 1_000, {})
    expected = durable.venue.state_hash()
    durable.close()
    segment = list_segments(tmp_path)[-1]
    size = segment.stat().st_size
    with open(segment, "ab") as f:
        f.write(b"\x40\x00\x00\x00garbage-half-record")
    rec = recover(tmp_path, CONFIG)
    assert rec.venue.state_hash() == expected and rec.torn_bytes > 0
    durable, rec = DurableVenue.open(tmp_path, CONFIG)
    assert segment.stat().st_size == size
    durable.close()


def test_damaged_record_before_good_data_is_corruption(tmp_path: Path) -> None:
    durable = run_journaled(tmp_path, random_batches(5, 40), 1_000, {})
    durable.close()
    segment = list_segments(tmp_path)[-1]
    data = bytearray(segment.read_bytes())
    data[40] ^= 0xFF
    segment.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt):
        recover(tmp_path, CONFIG)


def test_bad_newest_snapshot_falls_back_to_an_older_one(tmp_path: Path) -> None:
    durable = run_journaled(tmp_path, random_batches(9, 80), 40, {})
    expected = durable.venue.state_hash()
    durable.close()
    snapshots = list_snapshots(tmp_path)
    assert len(snapshots) == 2  # pruned to the newest two
    newest = snapshots[-1]
    newest.write_bytes(newest.read_bytes()[:-10])
    rec = recover(tmp_path, CONFIG)
    assert rec.snapshot_seq < int(newest.name.split("-")[-1].split(".")[0])
    assert rec.venue.state_hash() == expected


def test_no_usable_snapshot_is_refused(tmp_path: Path) -> None:
    durable = run_journaled(tmp_path, random_batches(9, 10), 1_000, {})
    durable.close()
    for path in list_snapshots(tmp_path):
        path.write_bytes(b"SRVSNP01")
    with pytest.raises(SnapshotCorrupt):
        recover(tmp_path, CONFIG)


def test_changed_configuration_with_a_journal_tail_is_refused(tmp_path: Path) -> None:
    durable = run_journaled(tmp_path, random_batches(2, 10), 1_000, {})
    durable.close()
    with pytest.raises(ConfigChanged):
        recover(tmp_path, config(taker_fee_ppm=600))


def test_a_second_process_cannot_open_the_directory(tmp_path: Path) -> None:
    durable, _ = DurableVenue.open(tmp_path, CONFIG)
    with pytest.raises(VenueLocked):
        DurableVenue.open(tmp_path, CONFIG)
    durable.close()
    DurableVenue.open(tmp_path, CONFIG)[0].close()


def test_journal_holds_the_commands_in_order(tmp_path: Path) -> None:
    from exchange.journal import read_segment

    durable, _ = DurableVenue.open(tmp_path, CONFIG)
    durable.venue.deposit("a", 5)
    durable.venue.place("BTC-PERP", NewOrder(id="x", account="a", side="buy", qty=1, price=1))
    durable.venue.drain()
    durable.commit()
    durable.close()
    records = [c for s in list_segments(tmp_path) for _, c in read_segment(s).records]
    assert [type(c) for c in records] == [Deposit, Place, Drain]


# ------------------------------------------------------------------ the shell and the ledger


def service_batches(svc: ExchangeService, batches: list[list[tuple[object, ...]]], start: int) -> None:
    for index, batch in enumerate(batches, start):
        for owner, amount, tid in ledger_deposits(index, batch):
            svc.credit_deposit(owner, amount, tid)
        with svc.command() as v:
            apply_batch(v, batch)


def test_restarted_service_recovers_and_agrees_with_the_ledger(ledger: Ledger, tmp_path: Path) -> None:
    batches = random_batches(11, 120)
    svc = ExchangeService.open(ledger, CONFIG, tmp_path, snapshot_every=50)
    service_batches(svc, batches[:80], 0)
    expected = svc.venue.state_hash()
    assert svc.durable is not None
    svc.durable.close()  # a crash: no final snapshot

    again = ExchangeService.open(ledger, CONFIG, tmp_path, snapshot_every=50)
    assert again.venue.state_hash() == expected
    assert again.reconcile() == []
    service_batches(again, batches[80:], 80)
    again.close()
    assert run_reference(batches).state_hash() == again.venue.state_hash()
    third = ExchangeService.open(ledger, CONFIG, tmp_path)
    assert third.venue.state_hash() == again.venue.state_hash()
    assert third.reconcile() == []
    third.close()


def test_postings_journaled_but_never_written_reach_the_ledger_after_restart(
        ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batches = random_batches(13, 60)
    svc = ExchangeService.open(ledger, CONFIG, tmp_path)
    service_batches(svc, batches[:40], 0)

    def down(*args: object, **kwargs: object) -> None:
        raise ConnectionError("database went away")

    unwritten = [b for b in batches[40:] if not ledger_deposits(0, b)][:5]
    monkeypatch.setattr(svc.ledger, "submit", down)
    for batch in unwritten:
        # A batch whose orders the risk check refused queues no postings and so never
        # reaches the (failing) ledger; the others raise. At least one must be left over.
        with contextlib.suppress(ConnectionError), svc.command() as v:
            apply_batch(v, batch)
    monkeypatch.undo()
    assert svc._backlog
    expected = svc.venue.state_hash()
    assert svc.durable is not None
    svc.durable.close()

    again = ExchangeService.open(ledger, CONFIG, tmp_path)  # retries, then reconciles
    assert again.venue.state_hash() == expected
    assert again.reconcile() == []
    again.close()


def test_a_restarted_app_recovers_the_venue_from_its_data_dir(app: Flask) -> None:
    from strongroom.app import create_app

    svc: ExchangeService = app.extensions[EXTENSION]
    settings = app.extensions["strongroom.settings"]
    assert svc.durable is not None and svc.durable.directory == settings.data_dir / "exchange"
    service_batches(svc, random_batches(21, 60), 0)
    expected = svc.venue.state_hash()
    svc.durable.close()  # the process dies; nothing else is written

    restarted = create_app({"TESTING": True, "CLOCK": app.config["CLOCK"],
                            "KEYSTORE": app.config["KEYSTORE"],
                            "EXCHANGE_INSTRUMENTS": app.config["EXCHANGE_INSTRUMENTS"]}, settings=settings)
    again: ExchangeService = restarted.extensions[EXTENSION]
    assert again.venue.state_hash() == expected
    assert again.reconcile() == []
    again.close()
    restarted.extensions["strongroom.engine"].dispose()
