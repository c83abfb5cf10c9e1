"""Per-user transaction reports classify each posted movement and reconcile to the statement's totals."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from typing import Any

from click.testing import CliRunner

from custody.compliance.statements import build_statement, month_bounds
from custody.compliance.transactions import reconcile, transaction_csv, transaction_report
from custody.ledger.entry import AccountKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger

from .test_statements import _history

JANUARY = month_bounds(2026, 1)


def _more(ledger: Ledger) -> None:
    """Still in January: a 25 fee, 100 moved to the exchange margin account, 40 back; bob pays alice 10."""
    alice = ledger.ensure_account("alice", "USDC", AccountKind.USER_AVAILABLE).id
    fees = ledger.ensure_account("platform", "USDC", AccountKind.FEES).id
    margin = ledger.ensure_account("alice", "USDC", AccountKind.USER_MARGIN).id
    bob = ledger.ensure_account("bob", "USDC", AccountKind.USER_AVAILABLE).id
    hot = ledger.ensure_account("platform", "USDC", AccountKind.HOT_WALLET).id
    ledger.transfer(TransferRequest(id="fee-1", debit_account=alice, credit_account=fees, amount=25))
    ledger.transfer(TransferRequest(id="to-margin", debit_account=alice, credit_account=margin, amount=100))
    ledger.transfer(TransferRequest(id="from-margin", debit_account=margin, credit_account=alice, amount=40))
    ledger.transfer(TransferRequest(id="bob-dep", debit_account=hot, credit_account=bob, amount=10))
    ledger.transfer(TransferRequest(id="bob-pays", debit_account=bob, credit_account=alice, amount=10))


def test_transaction_report_classifies_and_reconciles_to_the_statement(ledger: Ledger, clock: Any) -> None:
    _history(ledger, clock)
    _more(ledger)
    report = transaction_report(ledger, "alice", "USDC", *JANUARY)
    statement = build_statement(ledger, "alice", "USDC", *JANUARY)
    assert reconcile(report, statement) == []
    assert (report.credits_minor, report.debits_minor) == (statement.credits_minor, statement.debits_minor)
    assert [(r.entry_id, r.category) for r in report.rows] == [
        ("dep-2", "deposit"), ("wd-1:post", "withdrawal"), ("fee-1", "fee"),
        ("to-margin", "exchange_transfer"), ("from-margin", "exchange_transfer"), ("bob-pays", "other")]
    assert report.totals() == {"deposit": (500, 0), "withdrawal": (0, 300), "fee": (0, 25),
                               "exchange_transfer": (40, 100), "other": (10, 0)}
    rows = list(csv.reader(io.StringIO(transaction_csv(report))))
    summary = {r[1]: r[2] for r in rows if r[0] == "summary"}
    assert (int(summary["credits_minor"]), int(summary["debits_minor"])) == (550, 425)
    body = [r for r in rows if r[0] == "row"][1:]
    assert sum(int(r[7]) for r in body) == statement.credits_minor
    assert sum(int(r[8]) for r in body) == statement.debits_minor


def test_transaction_report_against_a_tampered_statement_lists_the_differences(
    ledger: Ledger, clock: Any
) -> None:
    _history(ledger, clock)
    report = transaction_report(ledger, "alice", "USDC", *JANUARY)
    statement = build_statement(ledger, "alice", "USDC", *JANUARY)
    forged = dataclasses.replace(statement, credits_minor=statement.credits_minor + 1,
                                 lines=statement.lines[1:])
    problems = reconcile(report, forged)
    assert any(p.startswith("credits:") for p in problems)
    assert "the movements (by seq) differ" in problems
    other_month = build_statement(ledger, "alice", "USDC", *month_bounds(2025, 12))
    assert "report and statement cover different users, assets or periods" in reconcile(report, other_month)


def test_transaction_report_of_user_without_account_is_empty(ledger: Ledger) -> None:
    report = transaction_report(ledger, "nobody", "USDC", *JANUARY)
    assert report.rows == () and reconcile(report, build_statement(ledger, "nobody", "USDC", *JANUARY)) == []


def test_transactions_cli_writes_the_reconciled_csv(sqlite_url: str, tmp_path: Any, clock: Any) -> None:
    from custody.db import make_engine, make_session_factory
    from strongroom.cli import main

    ledger = Ledger(make_session_factory(make_engine(sqlite_url)), clock=clock)
    _history(ledger, clock)
    env = {"STRONGROOM_DATA_DIR": str(tmp_path / "data"), "STRONGROOM_DATABASE_URL": sqlite_url,
           "STRONGROOM_KEYSTORE_PASSPHRASE": "cli test passphrase, not a secret"}
    out = tmp_path / "tx.csv"
    result = CliRunner().invoke(main, ["compliance", "transactions", "--username", "alice", "--asset", "usdc",
                                       "--year", "2026", "--month", "1", "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output.strip().splitlines()[-1])
    assert (answer["rows"], answer["credits_minor"], answer["debits_minor"]) == (2, 500, 300)
    assert "category,deposit,500,0" in out.read_text()
