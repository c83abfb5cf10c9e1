"""Per-user statements recomputed from ledger entries, checked against the ledger's balance.

A statement covers one user's available balance in one asset over a period
[start, end) (UTC ms; `month_bounds` gives a calendar month). It is built by
walking the account's journal entries: posted movements (``single`` and
``post`` entries) before the period make the opening balance, those inside
are the lines, and the running total over every posted entry must end at the
balance the ledger holds for the account now, or the statement is refused
(`StatementMismatch`): a statement never shows what the ledger does not.
`verify_statement` rebuilds a statement and lists every field that differs,
so a statement handed out earlier can be checked against the ledger later.
"""

from __future__ import annotations

import calendar
import csv
import datetime
import io
from dataclasses import asdict, dataclass

from custody.compliance.citation import Citation
from custody.ledger.entry import AccountKind, TransferKind
from custody.ledger.service import Ledger

POSTED_KINDS = frozenset({TransferKind.SINGLE, TransferKind.POST})
HISTORY_PAGE = 500
MAX_ENTRIES = 1_000_000


class StatementMismatch(RuntimeError):
    """The journal's posted movements do not add up to the ledger's balance: corrupt state, stop."""


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One posted movement of the period and the balance after it (minor units)."""

    seq: int
    at_ms: int
    entry_id: str
    kind: str
    reference: str
    credit_minor: int
    debit_minor: int
    balance_minor: int


@dataclass(frozen=True, slots=True)
class Statement:
    """A user's available balance in one asset over [start, end): opening, movements, closing."""

    username: str
    asset: str
    account_id: int
    start_ms: int
    end_ms: int
    opening_minor: int
    credits_minor: int
    debits_minor: int
    closing_minor: int
    lines: tuple[StatementLine, ...]
    # The last journal seq the figures rest on (posted entries before end_ms); 0 when read back from CSV.
    rests_on_seq: int = 0


def month_bounds(year: int, month: int) -> tuple[int, int]:
    """Return [start, end) of a calendar month in UTC milliseconds."""
    assert 1 <= month <= 12, f"month was {month}, must be 1..12"
    start = datetime.datetime(year, month, 1, tzinfo=datetime.UTC)
    days = calendar.monthrange(year, month)[1]
    end = start + datetime.timedelta(days=days)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def build_statement(ledger: Ledger, username: str, asset: str, start_ms: int, end_ms: int) -> Statement:
    """Recompute ``username``'s statement from the journal; raise StatementMismatch if it disagrees."""
    assert start_ms < end_ms, f"period was [{start_ms}, {end_ms}), must not be empty"
    account = ledger.find_account(username, asset, AccountKind.USER_AVAILABLE)
    if account is None:
        return Statement(username, asset, 0, start_ms, end_ms, 0, 0, 0, 0, ())
    opening = credits = debits = running = rests_on = 0
    lines: list[StatementLine] = []
    cursor, seen = 0, 0
    while True:
        page = ledger.history(account.id, after_seq=cursor, limit=HISTORY_PAGE)
        for entry in page.entries:
            seen += 1
            if entry.kind not in POSTED_KINDS:
                continue
            credit = entry.amount if entry.credit_account == account.id else 0
            debit = entry.amount if entry.debit_account == account.id else 0
            running += credit - debit
            if entry.timestamp_ms < end_ms:
                rests_on = max(rests_on, entry.seq)
            if entry.timestamp_ms < start_ms:
                opening += credit - debit
            elif entry.timestamp_ms < end_ms:
                credits, debits = credits + credit, debits + debit
                lines.append(StatementLine(entry.seq, entry.timestamp_ms, entry.id, entry.kind.value,
                                           entry.reference, credit, debit, opening + credits - debits))
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
        assert seen <= MAX_ENTRIES, f"account {account.id} has more than {MAX_ENTRIES} entries"
    held = ledger.get_account(account.id).balance.credit_balance_posted
    if running != held:
        raise StatementMismatch(f"{username} {asset}: journal movements add up to {running}, "
                                f"the ledger holds {held}")
    return Statement(username, asset, account.id, start_ms, end_ms, opening, credits, debits,
                     opening + credits - debits, tuple(lines), rests_on)


def verify_statement(ledger: Ledger, statement: Statement) -> list[str]:
    """Rebuild ``statement`` from the ledger; return the fields that differ (empty: it reconciles)."""
    fresh = build_statement(ledger, statement.username, statement.asset, statement.start_ms, statement.end_ms)
    problems = [f"{name}: statement says {getattr(statement, name)}, ledger says {getattr(fresh, name)}"
                for name in ("opening_minor", "credits_minor", "debits_minor", "closing_minor")
                if getattr(statement, name) != getattr(fresh, name)]
    if statement.closing_minor != statement.opening_minor + statement.credits_minor - statement.debits_minor:
        problems.append("closing_minor is not opening + credits - debits")
    if statement.lines != fresh.lines:
        problems.append(f"lines: statement has {len(statement.lines)}, ledger has {len(fresh.lines)} "
                        "or they differ")
    return problems


def statement_csv(statement: Statement, citation: Citation | None = None) -> str:
    """Return the statement as CSV: a header block, then one row per line (integers in minor units).

    With ``citation`` the header block has ``checkpoint,<field>,<value>`` rows
    naming the signed checkpoint the figures rest on (empty values and a
    ``checkpoint_reason`` when none covers them).
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for name in ("username", "asset", "start_ms", "end_ms", "opening_minor", "credits_minor", "debits_minor",
                 "closing_minor"):
        writer.writerow(["summary", name, getattr(statement, name)])
    if citation is not None:
        writer.writerows(["checkpoint", name, value] for name, value in citation.rows())
    writer.writerow(["line", *[f for f in StatementLine.__slots__]])
    for line in statement.lines:
        writer.writerow(["line", *asdict(line).values()])
    return out.getvalue()


def parse_statement_csv(text: str) -> Statement:
    """Read a statement back from :func:`statement_csv` (for checking a statement handed out earlier)."""
    summary: dict[str, str] = {}
    lines: list[StatementLine] = []
    rows = list(csv.reader(io.StringIO(text)))
    for row in rows:
        if row[0] == "summary":
            summary[row[1]] = row[2]
        elif row[0] == "line" and row[1] != "seq":
            seq, at_ms, entry_id, kind, reference, credit, debit, balance = row[1:]
            lines.append(StatementLine(int(seq), int(at_ms), entry_id, kind, reference, int(credit),
                                       int(debit), int(balance)))
    names = ("start_ms", "end_ms", "opening_minor", "credits_minor", "debits_minor", "closing_minor")
    ints = {k: int(summary[k]) for k in names}
    return Statement(summary["username"], summary["asset"], -1, ints["start_ms"], ints["end_ms"],
                     ints["opening_minor"], ints["credits_minor"], ints["debits_minor"],
                     ints["closing_minor"], tuple(lines))
