"""Kill -9 a durable exchange process at every step between journal append and ledger posting, for
a batch that places an order, one that fills and one that settles funding; after recovery the
venue's state hash equals the uninterrupted run's at the same journal position and at the end, and
positions, margin and fund equal the ledger (strongroom/simulation/invariants.py).

The process is tests/e2e/kill9_exchange_worker.py (an ExchangeService on SQLite and a journal
directory, fed the seeded stream of tests/exchange/venue_streams.py); the recovery and the rest of
the stream run in this process, as the next start of the venue would.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from custody.db import make_engine, make_session_factory
from custody.ledger.service import Ledger
from exchange.instruments import load_instruments
from exchange.risk.events import FundingPaid
from exchange.service import ExchangeService
from exchange.venue import Venue
from strongroom.simulation import invariants

from ..exchange.venue_streams import apply_batch, ledger_deposits, random_batches
from .kill9_platform import named_checks

WORKER = Path(__file__).with_name("kill9_exchange_worker.py")
SEED = 7
COUNT = 80  # random batches after the opening ones (funding first settles in batch 77)
SNAPSHOT_EVERY = 40  # journal records: a few snapshots during the stream
WORKER_TIMEOUT_S = 300.0  # bounds a hang; a run takes seconds
POINTS = ("journal.torn", "journal.before_commit", "journal.after_commit", "ledger.after_post")


class Counter:
    """A command log that only counts records (the reference run)."""

    def __init__(self) -> None:
        self.n = 0

    def record(self, cmd: object) -> None:
        self.n += 1


@cache
def batches() -> list[list[tuple[Any, ...]]]:
    return random_batches(SEED, COUNT)


@cache
def reference() -> tuple[list[int], list[str], dict[str, int]]:
    """Run the stream uninterrupted: journal records and state hash after each batch, and the
    first batch of each kind (an order resting without a fill, a fill, a funding settlement)."""
    v = Venue(load_instruments())
    log = Counter()
    v.journal = log  # type: ignore[assignment]
    records, hashes, kinds = [], [], {}
    for index, batch in enumerate(batches()):
        fees = v.clearing.fees
        apply_batch(v, batch)
        postings, events = v.drain()
        records.append(log.n)
        hashes.append(v.state_hash())
        ops = {op[0] for op in batch}
        if "order" in ops and postings and v.clearing.fees == fees:
            kinds.setdefault("order", index)
        if v.clearing.fees > fees:
            kinds.setdefault("fill", index)
        if any(isinstance(e, FundingPaid) for e in events):
            kinds.setdefault("settlement", index)
    return records, hashes, kinds


def test_kill9_exchange_stream_has_an_order_a_fill_and_a_settlement_to_kill() -> None:
    _, _, kinds = reference()
    assert set(kinds) == {"order", "fill", "settlement"}, kinds


class ExchangeView:
    """What the invariants read of a World, over this ledger and exchange service."""

    def __init__(self, ledger: Ledger, exchange: ExchangeService) -> None:
        self.svc = self
        self.ledger, self.exchange = ledger, exchange
        self.exchange_lag_steps = 0
        self.check_cache: dict[str, Any] = {}


def run_worker(directory: Path, url: str, kill_batch: int, point: str) -> int:
    """Run the worker until it kills itself; return how many batches it reported finished."""
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(directory), url, str(SEED), str(COUNT), str(kill_batch), point,
         str(SNAPSHOT_EVERY)], capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, check=False)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stdout.split()
    return int(lines[-1]) if lines else 0


def recover_and_finish(directory: Path, url: str, kill_batch: int) -> None:
    records, hashes, _ = reference()
    engine = make_engine(url)
    ledger = Ledger(make_session_factory(engine))
    try:
        svc = ExchangeService.open(ledger, load_instruments(), directory, snapshot_every=SNAPSHOT_EVERY)
        assert svc.durable is not None
        seq = svc.durable.command_seq
        # The killed batch is either wholly durable or wholly gone: never half of it.
        assert seq in (records[kill_batch - 1] if kill_batch else 0, records[kill_batch]), seq
        ran = records.index(seq) + 1
        assert svc.venue.state_hash() == hashes[ran - 1]
        view = ExchangeView(ledger, svc)
        checks = named_checks("ledger_zero_sum", "constrained_accounts_non_negative",
                              "exchange_agrees_with_ledger", "user_balance_not_negative")
        assert invariants.check(view, checks) == []  # type: ignore[arg-type]
        for index, batch in enumerate(batches()[ran:], ran):
            for owner, amount, tid in ledger_deposits(index, batch):
                svc.credit_deposit(owner, amount, tid)
            with svc.command() as v:
                apply_batch(v, batch)
        assert svc.venue.state_hash() == hashes[-1]  # as if never killed
        assert invariants.check(view, checks) == []  # type: ignore[arg-type]
        svc.close()
    finally:
        engine.dispose()


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("kind", ["order", "fill", "settlement"])
def test_kill9_exchange_between_journal_and_ledger_recovers_to_the_uninterrupted_state(
        sqlite_url: str, tmp_path: Path, kind: str, point: str) -> None:
    kill_batch = reference()[2][kind]
    directory = tmp_path / "exchange"
    finished = run_worker(directory, sqlite_url, kill_batch, point)
    assert finished == kill_batch  # it died inside the armed batch
    recover_and_finish(directory, sqlite_url, kill_batch)


def test_kill9_exchange_after_snapshot_before_next_segment_recovers(sqlite_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "exchange"
    kill_batch = reference()[2]["fill"]
    finished = run_worker(directory, sqlite_url, kill_batch, "snapshot.written")
    assert finished >= kill_batch
    recover_and_finish(directory, sqlite_url, finished)
