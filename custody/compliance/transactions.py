"""Per-user transaction reports: every posted movement of a statement's period, classified, as CSV.

The report covers the same account and period as the statement
(`custody.compliance.statements`: the user's available balance in one asset,
[start, end)), one row per posted movement, each classified by the kind of
the account on the other side:

| other side | category |
| --- | --- |
| hot, cold or external wallet, deposits in flight | ``deposit`` (in) / ``withdrawal`` (out) |
| withdrawals in flight | ``withdrawal`` (out) / ``withdrawal_returned`` (in) |
| the platform's ``fees`` account | ``fee`` (out) / ``fee_refund`` (in) |
| the user's own margin account(s) | ``exchange_transfer`` (trades settle there; see the tax report) |
| anything else (another user, the insurance fund, ...) | ``other`` |

`reconcile` checks the report against the statement of the same period:
the same movements (by seq) and the same credit and debit totals.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass

from custody.compliance.statements import POSTED_KINDS, Statement
from custody.ledger.entry import AccountKind
from custody.ledger.service import AccountView, Ledger

HISTORY_PAGE = 500
WALLET_KINDS = frozenset({AccountKind.HOT_WALLET, AccountKind.COLD_WALLET, AccountKind.EXTERNAL,
                          AccountKind.DEPOSITS_IN_FLIGHT})
ISOLATED_SEP = ":iso:"


@dataclass(frozen=True, slots=True)
class TransactionRow:
    """One posted movement of the period (minor units)."""

    seq: int
    at_ms: int
    entry_id: str
    reference: str
    category: str
    counterparty_kind: str
    credit_minor: int
    debit_minor: int


@dataclass(frozen=True, slots=True)
class TransactionReport:
    """A user's classified movements of one asset over [start, end)."""

    username: str
    asset: str
    start_ms: int
    end_ms: int
    rows: tuple[TransactionRow, ...]

    @property
    def credits_minor(self) -> int:
        return sum(r.credit_minor for r in self.rows)

    @property
    def debits_minor(self) -> int:
        return sum(r.debit_minor for r in self.rows)

    def totals(self) -> dict[str, tuple[int, int]]:
        """Return (credits, debits) per category."""
        out: dict[str, tuple[int, int]] = {}
        for row in self.rows:
            credit, debit = out.get(row.category, (0, 0))
            out[row.category] = (credit + row.credit_minor, debit + row.debit_minor)
        return out


def _category(other: AccountView | None, username: str, incoming: bool) -> str:
    if other is None:
        return "other"
    if other.kind in WALLET_KINDS:
        return "deposit" if incoming else "withdrawal"
    if other.kind == AccountKind.WITHDRAWALS_IN_FLIGHT:
        return "withdrawal_returned" if incoming else "withdrawal"
    if other.kind == AccountKind.FEES:
        return "fee_refund" if incoming else "fee"
    if other.kind == AccountKind.USER_MARGIN and (
            other.owner == username or other.owner.startswith(username + ISOLATED_SEP)):
        return "exchange_transfer"
    return "other"


def transaction_report(ledger: Ledger, username: str, asset: str, start_ms: int,
                       end_ms: int) -> TransactionReport:
    """Classify ``username``'s posted movements of ``asset`` in [start, end) (see the module docstring)."""
    assert start_ms < end_ms, f"period was [{start_ms}, {end_ms}), must not be empty"
    account = ledger.find_account(username, asset, AccountKind.USER_AVAILABLE)
    if account is None:
        return TransactionReport(username, asset, start_ms, end_ms, ())
    accounts = {a.id: a for a in ledger.list_accounts() if a.asset == asset}
    rows: list[TransactionRow] = []
    cursor = 0
    while True:
        page = ledger.history(account.id, after_seq=cursor, limit=HISTORY_PAGE)
        for entry in page.entries:
            if entry.kind not in POSTED_KINDS or not start_ms <= entry.timestamp_ms < end_ms:
                continue
            incoming = entry.credit_account == account.id
            other = accounts.get(entry.debit_account if incoming else entry.credit_account)
            rows.append(TransactionRow(
                entry.seq, entry.timestamp_ms, entry.id, entry.reference,
                _category(other, username, incoming), "" if other is None else other.kind.value,
                entry.amount if incoming else 0, 0 if incoming else entry.amount))
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    return TransactionReport(username, asset, start_ms, end_ms, tuple(rows))


def reconcile(report: TransactionReport, statement: Statement) -> list[str]:
    """Return how ``report`` disagrees with the statement of its user and period (empty: reconciles)."""
    problems = []
    if (report.username, report.asset, report.start_ms, report.end_ms) != (
            statement.username, statement.asset, statement.start_ms, statement.end_ms):
        problems.append("report and statement cover different users, assets or periods")
    if report.credits_minor != statement.credits_minor:
        problems.append(f"credits: report {report.credits_minor}, statement {statement.credits_minor}")
    if report.debits_minor != statement.debits_minor:
        problems.append(f"debits: report {report.debits_minor}, statement {statement.debits_minor}")
    if [r.seq for r in report.rows] != [line.seq for line in statement.lines]:
        problems.append("the movements (by seq) differ")
    return problems


def transaction_csv(report: TransactionReport) -> str:
    """Return ``summary`` rows (totals per category), then a header and one ``row`` per movement."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for name in ("username", "asset", "start_ms", "end_ms", "credits_minor", "debits_minor"):
        writer.writerow(["summary", name, getattr(report, name)])
    for category, (credit, debit) in sorted(report.totals().items()):
        writer.writerow(["category", category, credit, debit])
    writer.writerow(["row", *TransactionRow.__slots__])
    for row in report.rows:
        writer.writerow(["row", *asdict(row).values()])
    return out.getvalue()
