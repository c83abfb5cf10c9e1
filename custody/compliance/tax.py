"""Per-user tax reports: realised PnL, funding and fees of one tax year, from the ledger's journal.

The exchange books every collateral movement of a user to their margin
account(s) in the ledger (`exchange/service.py`: owner ``<user>`` and, per
isolated position, ``<user>:iso:<symbol>``, kind ``user_margin``), each
transfer id ``<namespace>.<clearing seq>.<n>``. A movement is classified by
its other side:

| other side | category |
| --- | --- |
| the platform's ``fees`` account | ``fees`` (paid positive, maker rebates negative) |
| the ``insurance_fund`` | ``fees`` when paid (liquidation fee); ``other`` when it covers a shortfall |
| ``exchange.clearing``, in a funding command's clearing seq | ``funding`` (received positive) |
| ``exchange.clearing`` otherwise, another user's margin | ``realised_pnl`` (trades, settlement, ADL) |
| ``exchange.bad_debt`` | ``other`` |
| the user's own accounts (spot, other margin) | not income: ``transfers_in`` / ``transfers_out`` |

Which clearing seqs were funding commands is the exchange's record
(`Venue.funding_history`, each with its seq), passed in by the caller; without
it funding is reported inside ``realised_pnl`` and ``funding_separated`` is
false. Every amount is an integer in the quote asset's minor units; the sum
of the categories and transfers equals the margin accounts' net posted
movement over the year (checked, `TaxReportMismatch` otherwise).
"""

from __future__ import annotations

import csv
import datetime
import io
from collections.abc import Callable, Collection
from dataclasses import dataclass

from custody.compliance.citation import Citation
from custody.ledger.entry import AccountKind, TransferKind
from custody.ledger.service import AccountView, Ledger

CLEARING_OWNER = "exchange.clearing"
BAD_DEBT_OWNER = "exchange.bad_debt"
ISOLATED_SEP = ":iso:"
POSTED_KINDS = frozenset({TransferKind.SINGLE, TransferKind.POST})
HISTORY_PAGE = 500
CATEGORIES = ("realised_pnl", "funding", "fees", "other", "transfers_in", "transfers_out")


class TaxReportMismatch(RuntimeError):
    """The classified movements do not add up to the accounts' net movement: corrupt state, stop."""


@dataclass(frozen=True, slots=True)
class TaxReport:
    """One user's exchange income of one tax year (UTC calendar year), minor units of ``asset``."""

    username: str
    year: int
    asset: str
    realised_pnl: int
    funding: int
    fees: int  # paid (a cost): positive; net maker rebates make it negative
    other: int
    transfers_in: int
    transfers_out: int
    net_movement: int
    entries: int
    funding_separated: bool
    rests_on_seq: int = 0  # the last journal seq of the year's movements (0: none)

    @property
    def net_income(self) -> int:
        return self.realised_pnl + self.funding - self.fees + self.other


def year_bounds(year: int) -> tuple[int, int]:
    """Return [start, end) of a UTC calendar year in milliseconds."""
    start = datetime.datetime(year, 1, 1, tzinfo=datetime.UTC)
    end = datetime.datetime(year + 1, 1, 1, tzinfo=datetime.UTC)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def _clearing_seq(transfer_id: str) -> int | None:
    parts = transfer_id.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return int(parts[1])


def tax_report(ledger: Ledger, username: str, year: int, *, asset: str = "USDC",
               funding_seqs: Collection[int] | None = None) -> TaxReport:
    """Classify ``username``'s margin-account movements of ``year`` (see the module docstring)."""
    start_ms, end_ms = year_bounds(year)
    accounts = {a.id: a for a in ledger.list_accounts() if a.asset == asset}
    own_owners = {username}

    def owned(view: AccountView) -> bool:
        return view.owner in own_owners or view.owner.startswith(username + ISOLATED_SEP)

    margin = [a for a in accounts.values() if a.kind == AccountKind.USER_MARGIN and owned(a)]
    margin_ids = {a.id for a in margin}
    totals = dict.fromkeys(CATEGORIES, 0)
    net = entries = rests_on = 0
    seen: set[str] = set()
    for account in margin:
        cursor = 0
        while True:
            page = ledger.history(account.id, after_seq=cursor, limit=HISTORY_PAGE)
            for entry in page.entries:
                if entry.kind not in POSTED_KINDS or not start_ms <= entry.timestamp_ms < end_ms:
                    continue
                rests_on = max(rests_on, entry.seq)
                incoming = entry.credit_account == account.id
                signed = entry.amount if incoming else -entry.amount
                net += signed
                other_id = entry.debit_account if incoming else entry.credit_account
                if other_id in margin_ids:
                    # Between the user's own margin accounts: seen from both sides, nets to zero.
                    totals["transfers_in" if incoming else "transfers_out"] += entry.amount
                    continue
                if entry.id in seen:
                    continue
                seen.add(entry.id)
                entries += 1
                category = _category(accounts.get(other_id), owned, incoming, entry.id, funding_seqs)
                if category in ("transfers_in", "transfers_out"):
                    totals[category] += entry.amount
                else:
                    totals[category] += -signed if category == "fees" else signed
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    report = TaxReport(username, year, asset, totals["realised_pnl"], totals["funding"], totals["fees"],
                       totals["other"], totals["transfers_in"], totals["transfers_out"], net, entries,
                       funding_seqs is not None, rests_on)
    classified = (report.realised_pnl + report.funding - report.fees + report.other
                  + report.transfers_in - report.transfers_out)
    if classified != net:
        raise TaxReportMismatch(f"{username} {year}: classified movements add up to {classified}, "
                                f"the margin accounts moved {net}")
    return report


def _category(other: AccountView | None, owned: Callable[[AccountView], bool], incoming: bool,
              transfer_id: str, funding_seqs: Collection[int] | None) -> str:
    if other is None:
        return "other"
    if owned(other):
        return "transfers_in" if incoming else "transfers_out"
    if other.kind == AccountKind.FEES:
        return "fees"
    if other.kind == AccountKind.INSURANCE_FUND:
        return "other" if incoming else "fees"
    if other.owner == CLEARING_OWNER:
        seq = _clearing_seq(transfer_id)
        if funding_seqs is not None and seq is not None and seq in funding_seqs:
            return "funding"
        return "realised_pnl"
    if other.owner == BAD_DEBT_OWNER:
        return "other"
    if other.kind == AccountKind.USER_MARGIN:
        return "realised_pnl"
    return "other"


def tax_report_csv(report: TaxReport, citation: Citation | None = None) -> str:
    """Return the report as CSV rows ``field,value`` (integers in minor units).

    With ``citation``, rows naming the signed checkpoint the report rests on follow.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["field", "value"])
    for name in ("username", "year", "asset", "realised_pnl", "funding", "fees", "other", "transfers_in",
                 "transfers_out", "net_movement", "entries", "funding_separated"):
        writer.writerow([name, getattr(report, name)])
    writer.writerow(["net_income", report.net_income])
    if citation is not None:
        writer.writerows(citation.rows())
    return out.getvalue()
