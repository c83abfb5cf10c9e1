"""The scripted market day against the real ledger (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from custody.keystore import LocalKeystore
from custody.ledger.service import Ledger
from exchange.scenario import run_market_day


def test_market_day_liquidates_uses_insurance_deleverages_settles_and_balances(ledger: Ledger) -> None:
    report = run_market_day(ledger)
    events = report.events
    assert events["LiquidationStarted"] >= 3
    assert events["LiquidationOrder"] >= 3
    assert events["InsuranceUsed"] >= 1
    assert events["Deleveraged"] >= 1
    assert events["FundingPaid"] >= 2
    assert events["BadDebt"] == 0
    assert set(report.settlement_prices) >= {"BTC-27MAR26", "BTC-27MAR26-60000-C",
                                             "BTC-27MAR26-50000-P"}
    # The fund paid the shortfalls (it never goes negative) and nobody ended flat below zero:
    # the pre-trade check priced the leveraged buyers' fills against the mark, so their
    # losses beyond collateral stayed within what the fund and ADL absorb.
    assert 0 <= report.insurance_end < report.insurance_start + report.fees
    assert report.balanced and report.agrees, report.mismatches


def test_market_day_export_verifies_offline(sqlite_url: str, keystore: LocalKeystore,
                                            tmp_path: Path) -> None:
    from custody.audit.service import AuditService
    from custody.audit.verify import verify_export
    from custody.db import make_engine, make_session_factory

    sessions = make_session_factory(make_engine(sqlite_url))
    ledger = Ledger(sessions)
    report = run_market_day(ledger)
    assert report.balanced
    audit = AuditService(sessions, ledger, keystore)
    audit.create_checkpoint()
    audit.export(tmp_path / "export")
    # The keys are pinned from the keystore itself, as an auditor pins them in the key ceremony.
    pinned = {(key.name, key.version): key for key in audit.public_keys()}
    verdict = verify_export(tmp_path / "export", pinned)
    assert verdict.ok, verdict.render()
