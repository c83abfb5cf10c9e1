"""Statement PDF (text read back) and per-user tax reports from the ledger, reconciled to its journal export;
the API and CLI serve both."""

from __future__ import annotations

import base64
import csv
import io
import json
from typing import Any

import pypdf
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from custody.compliance.reports import statement_pdf
from custody.compliance.statements import build_statement, month_bounds
from custody.compliance.tax import tax_report, tax_report_csv
from custody.ledger.entry import AccountKind
from custody.ledger.service import Ledger
from exchange.engine.messages import NewOrder
from exchange.instruments import DEFAULT_CONFIG, load_instruments
from exchange.service import ExchangeService
from exchange.venue import Venue
from policies.roles import Role

from ..access.helpers import make_user
from .test_statements import _history

USDC = 1_000_000
BTC = 60_000 * USDC


def _pdf_text(pdf: bytes) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf)).pages)


def test_statement_pdf_renders_the_ledger_figures(ledger: Ledger, clock: Any) -> None:
    _history(ledger, clock)
    january = build_statement(ledger, "alice", "USDC", *month_bounds(2026, 1))
    pdf = statement_pdf(january)
    assert pdf.startswith(b"%PDF") and pdf == statement_pdf(january)  # deterministic
    text = _pdf_text(pdf)
    assert "Statement alice USDC" in text
    assert "2026-01-01 00:00:00 UTC to 2026-02-01 00:00:00 UTC" in text
    for figure in ("opening_minor: 1000", "credits_minor: 500", "debits_minor: 300", "closing_minor: 1200"):
        assert figure in text, figure
    assert "dep-2" in text and "wd-1:post" in text and "balance 1200" in text
    assert "wd-2" not in text.replace("wd-2:void", "")  # a voided hold moved nothing posted
    account = ledger.find_account("alice", "USDC", AccountKind.USER_AVAILABLE)
    assert account is not None and account.balance.credit_balance_posted == 1200


def _order(oid: str, account: str, side: str, price: int) -> NewOrder:
    return NewOrder(id=oid, account=account, side=side, qty=100, price=price)  # type: ignore[arg-type]


def _trading_year(ledger: Ledger) -> ExchangeService:
    """Alice and Bob trade BTC-PERP through the real venue on the ledger: open, funding, close at a profit."""
    svc = ExchangeService(ledger, Venue(load_instruments(DEFAULT_CONFIG)))
    for who in ("alice", "bob"):
        svc.credit_deposit(who, 20_000 * USDC, f"dep-{who}")
        with svc.command() as v:
            v.deposit(who, 10_000 * USDC)
    with svc.command() as v:
        v.set_mark("BTC-PERP", BTC, BTC)
        assert v.place("BTC-PERP", _order("b1", "bob", "sell", BTC)).code == 0
        assert v.place("BTC-PERP", _order("a1", "alice", "buy", BTC)).code == 0
    with svc.command() as v:
        v.fund("BTC-PERP", 1_767_254_400_000)  # interest: longs (alice) pay shorts (bob)
    up = BTC + 1_000 * USDC
    with svc.command() as v:
        v.set_mark("BTC-PERP", up, up)
        assert v.place("BTC-PERP", _order("b2", "bob", "buy", up)).code == 0
        assert v.place("BTC-PERP", _order("a2", "alice", "sell", up)).code == 0
    with svc.command() as v:
        v.withdraw("alice", 1_000 * USDC)
    assert svc.reconcile() == []
    return svc


def test_tax_report_classifies_pnl_funding_fees_and_reconciles_to_the_journal_export(
    ledger: Ledger, clock: Any
) -> None:
    svc = _trading_year(ledger)
    seqs = frozenset(e.seq for e in svc.venue.funding_history)
    assert seqs, "the funding interval paid something"
    report = tax_report(ledger, "alice", 2026, funding_seqs=seqs)
    # 0.1 BTC long from 60,000 to 61,000: +100 USDC; funding paid as a long; taker fee 0.05 % on the close.
    assert report.realised_pnl == 100 * USDC
    assert report.funding < 0
    # Alice took liquidity on both trades: 0.05 % of 6,000 and of 6,100 USDC.
    assert report.fees == 6_000 * USDC * 500 // 1_000_000 + 6_100 * USDC * 500 // 1_000_000
    assert (report.transfers_in, report.transfers_out) == (10_000 * USDC, 1_000 * USDC)
    margin = ledger.find_account("alice", "USDC", AccountKind.USER_MARGIN)
    assert margin is not None
    # Reconciles: the year's classified movements are the margin account's posted balance (it began the year
    # at zero), and the journal export's entries on that account sum to the same.
    assert margin.balance.credit_balance_posted == report.net_movement
    assert report.net_movement == report.transfers_in - report.transfers_out + report.net_income
    exported = 0
    after = 0
    while True:
        page = ledger.journal(after_seq=after, limit=500)
        if not page:
            break
        for entry, _ in page:
            if entry.kind.value in ("single", "post"):
                exported += (entry.amount if entry.credit_account == margin.id else 0) - (
                    entry.amount if entry.debit_account == margin.id else 0)
            after = entry.seq
    assert exported == report.net_movement
    assert svc.venue.clearing.accounts["alice"].cash == report.net_movement
    # Funding and PnL of the two sides net out; fees go to the platform.
    bob = tax_report(ledger, "bob", 2026, funding_seqs=seqs)
    assert bob.realised_pnl == -report.realised_pnl and bob.funding == -report.funding
    fees = ledger.find_account("exchange", "USDC", AccountKind.FEES)
    assert fees is not None and fees.balance.credit_balance_posted == report.fees + bob.fees
    rows = dict(csv.reader(io.StringIO(tax_report_csv(report))))
    assert int(rows["realised_pnl"]) == report.realised_pnl and rows["funding_separated"] == "True"
    # Without the venue's funding records, funding is inside realised PnL and says so.
    lumped = tax_report(ledger, "alice", 2026)
    assert lumped.realised_pnl == report.realised_pnl + report.funding and not lumped.funding_separated
    assert tax_report(ledger, "alice", 2025).net_movement == 0


def test_reports_api_own_and_officer_and_refusals(app: Flask, client: FlaskClient, clock: Any) -> None:
    ledger: Ledger = app.extensions["strongroom.ledger"]
    alice = make_user(app, client, clock, "alice", {Role.TRADER}, kyc_tier=2)
    officer = make_user(app, client, clock, "officer1", {Role.COMPLIANCE})
    bob = make_user(app, client, clock, "bob", {Role.TRADER}, kyc_tier=2)
    _history(ledger, clock)
    r = alice.get("/api/v1/reports/statement",
                  query={"asset": "USDC", "year": "2026", "month": "1", "format": "pdf"})
    assert r.status_code == 200, r.json
    assert r.json["statement"]["closing_minor"] == 1200 and r.json["statement"]["lines"] == 2
    assert "closing_minor: 1200" in _pdf_text(base64.b64decode(r.json["pdf_base64"]))
    assert "summary,closing_minor,1200" in r.json["csv"]
    january = {"asset": "USDC", "year": "2026", "month": "1"}
    r = officer.get("/api/v1/compliance/users/alice/statement", query=january)
    assert r.status_code == 200 and r.json["statement"]["closing_minor"] == 1200
    assert bob.get("/api/v1/compliance/users/alice/statement", query=january).status_code == 403
    # Your own endpoint shows your own: Bob has no USDC movements.
    assert bob.get("/api/v1/reports/statement", query=january).json["statement"]["closing_minor"] == 0
    r = alice.get("/api/v1/reports/statement", query={"asset": "DOGE", "year": "2026", "month": "1"})
    assert (r.status_code, r.json["error"]) == (400, "report_input_invalid")
    r = alice.get("/api/v1/reports/tax", query={"year": "2026"})
    assert r.status_code == 200, r.json
    assert r.json["report"]["net_movement"] == 0 and r.json["report"]["funding_separated"] is True
    r = officer.get("/api/v1/compliance/users/alice/tax", query={"year": "2026"})
    assert r.status_code == 200
    with app.extensions["strongroom.sessions"]() as session:
        from custody.security_log import page

        actions = [(e.actor, e.action, e.subject) for e in page(session, limit=500)
                   if e.action.startswith("compliance.report")]
    assert actions == [("officer1", "compliance.report.statement", "alice"),
                       ("officer1", "compliance.report.tax", "alice")]


def test_reports_cli_writes_statement_pdf_and_tax_csv(sqlite_url: str, tmp_path: Any, clock: Any,
                                                      monkeypatch: Any) -> None:
    from custody.db import make_engine, make_session_factory
    from strongroom.cli import main

    ledger = Ledger(make_session_factory(make_engine(sqlite_url)), clock=clock)
    _history(ledger, clock)
    env = {"STRONGROOM_DATA_DIR": str(tmp_path / "data"), "STRONGROOM_DATABASE_URL": sqlite_url,
           "STRONGROOM_KEYSTORE_PASSPHRASE": "cli test passphrase, not a secret"}
    out = tmp_path / "statement.pdf"
    args = ["compliance", "statement", "--username", "alice", "--asset", "usdc", "--year", "2026",
            "--month", "1", "--format", "pdf", "--out", str(out)]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["closing_minor"] == 1200
    assert "closing_minor: 1200" in _pdf_text(out.read_bytes())
    tax_out = tmp_path / "tax.csv"
    result = CliRunner().invoke(main, ["compliance", "tax-report", "--username", "alice", "--year", "2026",
                                       "--out", str(tax_out)], env=env)
    assert result.exit_code == 0, result.output
    assert dict(csv.reader(io.StringIO(tax_out.read_text())))["funding_separated"] == "False"
