"""Statements are recomputed from ledger entries and reconcile to the ledger; a disagreement is caught."""

from __future__ import annotations

import dataclasses
from typing import Any

from custody.compliance.statements import (
    build_statement,
    month_bounds,
    parse_statement_csv,
    statement_csv,
    verify_statement,
)
from custody.ledger.entry import AccountKind, TransferKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger

DAY_MS = 86_400_000


def _history(ledger: Ledger, clock: Any) -> None:
    """December 2025: 1,000 in. January 2026: 500 in, 300 out (held, then posted), 200 held and voided."""
    hot = ledger.ensure_account("platform", "USDC", AccountKind.HOT_WALLET).id
    alice = ledger.ensure_account("alice", "USDC", AccountKind.USER_AVAILABLE).id
    out = ledger.ensure_account("platform", "USDC", AccountKind.WITHDRAWALS_IN_FLIGHT).id
    clock.now_ms = month_bounds(2025, 12)[0] + DAY_MS
    ledger.transfer(TransferRequest(id="dep-1", debit_account=hot, credit_account=alice, amount=1_000))
    clock.now_ms = month_bounds(2026, 1)[0] + DAY_MS
    ledger.transfer(TransferRequest(id="dep-2", debit_account=hot, credit_account=alice, amount=500))
    ledger.transfer(TransferRequest(id="wd-1", kind=TransferKind.PENDING, debit_account=alice,
                                    credit_account=out, amount=300))
    ledger.transfer(TransferRequest(id="wd-1:post", kind=TransferKind.POST, pending_id="wd-1"))
    ledger.transfer(TransferRequest(id="wd-2", kind=TransferKind.PENDING, debit_account=alice,
                                    credit_account=out, amount=200))
    ledger.transfer(TransferRequest(id="wd-2:void", kind=TransferKind.VOID, pending_id="wd-2"))


def test_statement_monthly_totals_recomputed_from_entries_reconcile_to_ledger(
    ledger: Ledger, clock: Any
) -> None:
    _history(ledger, clock)
    january = build_statement(ledger, "alice", "USDC", *month_bounds(2026, 1))
    assert (january.opening_minor, january.credits_minor, january.debits_minor, january.closing_minor) == (
        1_000, 500, 300, 1_200)
    lines = [(row.entry_id, row.credit_minor, row.debit_minor, row.balance_minor) for row in january.lines]
    assert lines == [("dep-2", 500, 0, 1_500), ("wd-1:post", 0, 300, 1_200)]
    account = ledger.find_account("alice", "USDC", AccountKind.USER_AVAILABLE)
    assert account is not None and january.closing_minor == account.balance.credit_balance_posted
    december = build_statement(ledger, "alice", "USDC", *month_bounds(2025, 12))
    assert (december.opening_minor, december.closing_minor) == (0, 1_000)
    assert verify_statement(ledger, january) == []


def test_statement_csv_round_trips_and_a_tampered_one_fails_reconciliation(
    ledger: Ledger, clock: Any
) -> None:
    _history(ledger, clock)
    january = build_statement(ledger, "alice", "USDC", *month_bounds(2026, 1))
    text = statement_csv(january)
    assert verify_statement(ledger, parse_statement_csv(text)) == []
    tampered = text.replace("summary,credits_minor,500", "summary,credits_minor,5000")
    problems = verify_statement(ledger, parse_statement_csv(tampered))
    assert any(p.startswith("credits_minor: statement says 5000, ledger says 500") for p in problems)
    assert "closing_minor is not opening + credits - debits" in problems


def test_statement_disagrees_when_the_ledger_moves_after_it_was_issued(ledger: Ledger, clock: Any) -> None:
    _history(ledger, clock)
    issued = build_statement(ledger, "alice", "USDC", *month_bounds(2026, 1))
    hot = ledger.ensure_account("platform", "USDC", AccountKind.HOT_WALLET).id
    alice = ledger.ensure_account("alice", "USDC", AccountKind.USER_AVAILABLE).id
    ledger.transfer(TransferRequest(id="late", debit_account=hot, credit_account=alice, amount=7))
    problems = verify_statement(ledger, issued)
    assert any(p.startswith("credits_minor") for p in problems)
    assert dataclasses.replace(issued, lines=()) != issued


def test_statement_of_user_without_account_is_empty(ledger: Ledger) -> None:
    empty = build_statement(ledger, "nobody", "USDC", *month_bounds(2026, 1))
    assert (empty.opening_minor, empty.closing_minor, empty.lines) == (0, 0, ())
