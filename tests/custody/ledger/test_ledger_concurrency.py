"""Concurrent writers never double-spend, on PostgreSQL and on SQLite."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

from custody.db import make_engine, make_session_factory
from custody.ledger.codes import LedgerCode, LedgerError
from custody.ledger.entry import AccountKind
from custody.ledger.service import Ledger

from .helpers import funded_user, single, sums_by_asset

THREADS = 16
FUNDED = 10
SPEND = 1


def _race(database_url: str, source: int, sinks: list[int], worker: int, out: list[object]) -> None:
    engine = make_engine(database_url)
    ledger = Ledger(make_session_factory(engine))
    try:
        for attempt in range(3):
            try:
                ledger.transfer(single(f"spend-{worker}-{attempt}", source, sinks[worker], SPEND))
                out.append("ok")
            except LedgerError as exc:
                out.append(exc.code)
    finally:
        engine.dispose()


def test_racing_threads_spend_exactly_the_funded_amount(ledger: Ledger, database_url: str) -> None:
    source, _ = funded_user(ledger, "payer", "USDC", FUNDED)
    sinks = [ledger.create_account(f"sink{i}", "USDC", AccountKind.USER_AVAILABLE).id
             for i in range(THREADS)]
    outcomes: list[object] = []
    threads = [threading.Thread(target=_race, args=(database_url, source.id, sinks, i, outcomes))
               for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("ok") == FUNDED
    assert set(outcomes) == {"ok", LedgerCode.INSUFFICIENT_FUNDS}
    assert ledger.balance(source.id).credit_balance_posted == 0
    assert sum(ledger.balance(s).credits_posted for s in sinks) == FUNDED
    assert sums_by_asset(ledger)["USDC"] == (0, 0)


PROCESS_WORKER = """
import json, sys
from custody.db import make_engine, make_session_factory
from custody.ledger.codes import LedgerError
from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger
url, source, sink, worker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ledger = Ledger(make_session_factory(make_engine(url)))
out = []
for attempt in range(3):
    try:
        ledger.transfer(TransferRequest(id=f"proc-{worker}-{attempt}", debit_account=source,
                                        credit_account=sink, amount=1))
        out.append("ok")
    except LedgerError as exc:
        out.append(exc.code.error)
print(json.dumps(out))
"""


def test_racing_processes_spend_exactly_the_funded_amount(ledger: Ledger, database_url: str) -> None:
    processes = 4
    source, _ = funded_user(ledger, "payer", "USDC", 5)
    sinks = [ledger.create_account(f"psink{i}", "USDC", AccountKind.USER_AVAILABLE).id
             for i in range(processes)]
    procs = [subprocess.Popen([sys.executable, "-c", PROCESS_WORKER, database_url, str(source.id),
                               str(sinks[i]), str(i)], stdout=subprocess.PIPE, text=True)
             for i in range(processes)]
    outcomes = [item for proc in procs for item in json.loads(proc.communicate(timeout=120)[0])]
    assert all(proc.returncode == 0 for proc in procs)
    assert outcomes.count("ok") == 5
    assert set(outcomes) == {"ok", "insufficient_funds"}
    assert ledger.balance(source.id).credit_balance_posted == 0
    assert sums_by_asset(ledger)["USDC"] == (0, 0)
