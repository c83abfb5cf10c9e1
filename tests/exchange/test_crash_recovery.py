"""Kill a real exchange process with SIGKILL mid-stream, recover, and check the ledger agrees."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from custody.ledger.service import Ledger
from exchange.commands import VenueCommand
from exchange.instruments import load_instruments
from exchange.recovery import list_snapshots
from exchange.service import ExchangeService
from exchange.venue import Venue

from .venue_streams import apply_batch, ledger_deposits, random_batches

SEED = 4242
BATCHES = 20_000
SNAPSHOT_EVERY = 150
KILL_AFTER_BATCHES = 400
KILL_TIMEOUT_S = 120
WORKER = Path(__file__).with_name("venue_crash_worker.py")


class Counter:
    """A command log that only counts records (the reference run)."""

    def __init__(self) -> None:
        self.n = 0

    def record(self, cmd: VenueCommand) -> None:
        self.n += 1


def reference_at(records: int, batches: list[list[tuple[object, ...]]]) -> tuple[Venue, int]:
    """Run batches until exactly ``records`` journal records were written; return (venue, batches run)."""
    v = Venue(load_instruments())
    log = Counter()
    v.journal = log
    for index, batch in enumerate(batches):
        if log.n == records:
            return v, index
        apply_batch(v, batch)
        v.drain()
        assert log.n <= records, "recovery stopped inside a batch"
    assert log.n == records
    return v, len(batches)


def test_sigkill_mid_stream_recovers_and_the_ledger_agrees(ledger: Ledger, database_url: str,
                                                            tmp_path: Path) -> None:
    directory = tmp_path / "exchange"
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(directory), database_url, str(SEED), str(BATCHES),
         str(SNAPSHOT_EVERY)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + KILL_TIMEOUT_S
    done = 0
    while time.monotonic() < deadline and done < KILL_AFTER_BATCHES:
        line = proc.stdout.readline()
        if not line:
            break
        done = int(line)
    assert proc.poll() is None, f"worker stopped early: {proc.stderr.read() if proc.stderr else ''}"
    assert len(list_snapshots(directory)) >= 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    batches = random_batches(SEED, 1_000)
    svc = ExchangeService.open(ledger, load_instruments(), directory, snapshot_every=SNAPSHOT_EVERY)
    assert svc.durable is not None
    recovered_seq = svc.durable.command_seq
    reference, ran = reference_at(recovered_seq, batches)
    assert ran >= done  # every batch the worker reported finished survived
    assert svc.venue.state_hash() == reference.state_hash()
    assert svc.reconcile() == []
    svc.venue.clearing.check_invariants()

    # The recovered service carries on like an uninterrupted run, and the ledger keeps agreeing.
    for index, batch in enumerate(batches[ran:ran + 100], ran):
        for owner, amount, tid in ledger_deposits(index, batch):
            svc.credit_deposit(owner, amount, tid)
        with svc.command() as v:
            apply_batch(v, batch)
        apply_batch(reference, batch)
        reference.drain()
    assert svc.venue.state_hash() == reference.state_hash()
    assert svc.reconcile() == []
    svc.close()
