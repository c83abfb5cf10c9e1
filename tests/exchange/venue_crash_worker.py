"""Run the seeded venue stream through a durable ExchangeService until killed (crash test).

    python venue_crash_worker.py DIRECTORY DATABASE_URL SEED BATCHES SNAPSHOT_EVERY

Prints the number of finished batches after each one (flushed), so the test
knows how far it got before it sends SIGKILL.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from venue_streams import apply_batch, ledger_deposits, random_batches

from custody.db import make_engine, make_session_factory
from custody.ledger.service import Ledger
from exchange.engine.journal import FsyncPolicy
from exchange.instruments import load_instruments
from exchange.service import ExchangeService


def main() -> None:
    directory, url, seed, count, every = sys.argv[1:6]
    ledger = Ledger(make_session_factory(make_engine(url)))
    svc = ExchangeService.open(ledger, load_instruments(), Path(directory), policy=FsyncPolicy.NEVER,
                               snapshot_every=int(every))
    for index, batch in enumerate(random_batches(int(seed), int(count))):
        for owner, amount, tid in ledger_deposits(index, batch):
            svc.credit_deposit(owner, amount, tid)
        with svc.command() as v:
            apply_batch(v, batch)
        print(index + 1, flush=True)


if __name__ == "__main__":
    main()
