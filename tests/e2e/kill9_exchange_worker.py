"""Run the seeded venue stream through a durable ExchangeService and SIGKILL the process at a named
step of one batch (kill -9 tests, tests/e2e/test_kill9_exchange.py).

    python kill9_exchange_worker.py DIRECTORY DATABASE_URL SEED COUNT KILL_BATCH POINT SNAPSHOT_EVERY

Test-only. Batch ``KILL_BATCH`` (0-based, of tests/exchange/venue_streams.py's stream) arms the
point; the steps of one batch, in order, are: its spot deposits credited in the ledger, its
commands run on the venue and buffered as journal records, ``flush()``: the journal committed,
the postings written to the ledger, a snapshot when due. Points:

- ``journal.torn``: half of the batch's first journal record reaches the file (a torn tail);
- ``journal.before_commit``: the records are buffered, not committed (they die with the process);
- ``journal.after_commit``: the journal is durable, the ledger has none of the batch's postings;
- ``ledger.after_post``: the ledger accepted the postings, the flush has not returned;
- ``snapshot.written``: the first snapshot from this batch on is on disk, the next journal
  segment is not created yet.

Prints the number of finished batches after each one (flushed), so the test can tell how far it got.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "exchange"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from venue_streams import apply_batch, ledger_deposits, random_batches

from custody.db import make_engine, make_session_factory
from custody.ledger.service import Ledger
from exchange import recovery
from exchange.engine.journal import FramedWriter, FsyncPolicy
from exchange.instruments import load_instruments
from exchange.service import ExchangeService

POINTS = ("journal.torn", "journal.before_commit", "journal.after_commit", "ledger.after_post",
          "snapshot.written")
armed: list[bool] = []


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str) -> None:
    """Wrap the step named ``point`` so that, once armed, the process dies there."""
    assert point in POINTS, f"POINT was {point!r}, expected one of {POINTS}"
    if point == "journal.torn":
        append = FramedWriter.append

        def torn_append(self: Any, seq: int, record: Any) -> None:
            if armed:
                frame = self._encode(seq, record)
                self._file.write(frame[: len(frame) // 2])
                self._file.flush()
                _die()
            append(self, seq, record)

        FramedWriter.append = torn_append  # type: ignore[method-assign]
    elif point in ("journal.before_commit", "journal.after_commit"):
        commit = recovery.DurableVenue.commit

        def dying_commit(self: Any) -> None:
            if armed and point == "journal.before_commit":
                _die()
            commit(self)
            if armed:
                _die()

        recovery.DurableVenue.commit = dying_commit  # type: ignore[method-assign]
    elif point == "ledger.after_post":
        submit = Ledger.submit

        def dying_submit(self: Any, *args: Any, **kwargs: Any) -> Any:
            results = submit(self, *args, **kwargs)
            if armed and all(r.ok for r in results):
                _die()
            return results

        Ledger.submit = dying_submit  # type: ignore[method-assign]
    else:
        write_snapshot = recovery.write_snapshot

        def dying_write_snapshot(*args: Any, **kwargs: Any) -> Any:
            path = write_snapshot(*args, **kwargs)
            if armed:
                _die()
            return path

        recovery.write_snapshot = dying_write_snapshot


def main() -> None:
    directory, url, seed, count, kill_batch, point, every = sys.argv[1:8]
    install(point)
    ledger = Ledger(make_session_factory(make_engine(url)))
    svc = ExchangeService.open(ledger, load_instruments(), Path(directory), policy=FsyncPolicy.NEVER,
                               snapshot_every=int(every))
    for index, batch in enumerate(random_batches(int(seed), int(count))):
        for owner, amount, tid in ledger_deposits(index, batch):
            svc.credit_deposit(owner, amount, tid)
        if index == int(kill_batch):
            armed.append(True)  # after the spot deposits: their ledger writes are not the venue's
        with svc.command() as v:
            apply_batch(v, batch)
        print(index + 1, flush=True)


if __name__ == "__main__":
    main()
