"""CLI for compliance: load a sanctions list (a new version and a re-screen), re-screen, list versions.

``strongroom compliance load-sdn DIR`` reads OFAC's SDN CSV set from DIR
(sdn.csv, and alt.csv, add.csv, sdn_comments.csv if present; docs/compliance.md).
The shipped fabricated fixture list is ``custody/compliance/data/fixture_sdn``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from strongroom.commands.access import guard, services

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from custody.compliance.citation import Citation
    from custody.ledger.service import Ledger

FIXTURE_DIR = Path(__file__).resolve().parents[2] / "custody" / "compliance" / "data" / "fixture_sdn"


@click.group("compliance")
def compliance() -> None:
    """Sanctions lists and screening."""


@compliance.command("load-sdn")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--actor", default="operator", show_default=True, help="Who loads the list (security log).")
def load_sdn(directory: Path, actor: str) -> None:
    """Load the SDN CSV set in DIRECTORY as a new list version and re-screen everything."""

    def run() -> None:
        result = services().screening.load_directory(directory, actor=actor)
        click.echo(json.dumps(result.to_json(), sort_keys=True))

    guard(run)


@compliance.command("rescreen")
def rescreen() -> None:
    """Screen every whitelist entry, unsent withdrawal and user name against the current list."""
    guard(lambda: click.echo(json.dumps({"new_alerts": services().screening.rescreen_all()})))


@compliance.command("monitor")
@click.option("--username", default=None, help="Only this user (default: everyone).")
def monitor(username: str | None) -> None:
    """Run the transaction-monitoring rules over users' activity; print the alerts raised now."""
    guard(lambda: click.echo(json.dumps({"new_alerts": services().monitoring.run(username)})))


@compliance.command("case-report")
@click.argument("case_id", type=click.IntRange(1, 2**63 - 1))
@click.option("--format", "fmt", type=click.Choice(["csv", "pdf"]), default="csv", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--officer", default="operator", show_default=True,
              help="Who exports (their own cases are not exported to them).")
def case_report(case_id: int, fmt: str, out: Path, officer: str) -> None:
    """Export a case (alerts with evidence, comments) as CSV or PDF to OUT."""
    from custody.compliance.reports import case_csv, case_pdf

    def run() -> None:
        case = services().cases.get(officer, case_id)
        if fmt == "csv":
            out.write_text(case_csv(case), encoding="utf-8")
        else:
            out.write_bytes(case_pdf(case))
        click.echo(json.dumps({"case": case_id, "format": fmt, "out": str(out)}))

    guard(run)


@compliance.command("statement")
@click.option("--username", required=True)
@click.option("--asset", required=True)
@click.option("--year", type=click.IntRange(2009, 9999), required=True)
@click.option("--month", type=click.IntRange(1, 12), required=True)
@click.option("--format", "fmt", type=click.Choice(["csv", "pdf"]), default="csv", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def statement(username: str, asset: str, year: int, month: int, fmt: str, out: Path) -> None:
    """Write a user's monthly statement of ASSET, rebuilt from the ledger, as CSV or PDF to OUT."""
    from custody.compliance.reports import statement_pdf
    from custody.compliance.statements import build_statement, month_bounds, statement_csv
    from custody.ledger.service import Ledger

    def run() -> None:
        start_ms, end_ms = month_bounds(year, month)
        sessions = services().sessions
        ledger = Ledger(sessions)
        built = build_statement(ledger, username, asset.upper(), start_ms, end_ms)
        citation = _cite(sessions, ledger, built.rests_on_seq)
        if fmt == "csv":
            out.write_text(statement_csv(built, citation), encoding="utf-8")
        else:
            out.write_bytes(statement_pdf(built, citation))
        click.echo(json.dumps({"username": username, "asset": built.asset,
                               "closing_minor": built.closing_minor, "lines": len(built.lines),
                               "format": fmt, "out": str(out), "citation": citation.to_json()}))

    guard(run)


@compliance.command("tax-report")
@click.option("--username", required=True)
@click.option("--year", type=click.IntRange(2009, 9999), required=True)
@click.option("--asset", default="USDC", show_default=True, help="The exchange's quote asset.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def tax_report_command(username: str, year: int, asset: str, out: Path) -> None:
    """Write a user's tax-year report (realised PnL, funding, fees) from the ledger as CSV to OUT.

    Offline the venue's funding records are not at hand: funding is reported
    inside realised PnL (``funding_separated`` false); the API separates them.
    """
    from custody.compliance.tax import tax_report, tax_report_csv
    from custody.ledger.service import Ledger

    def run() -> None:
        sessions = services().sessions
        ledger = Ledger(sessions)
        report = tax_report(ledger, username, year, asset=asset.upper())
        citation = _cite(sessions, ledger, report.rests_on_seq)
        out.write_text(tax_report_csv(report, citation), encoding="utf-8")
        click.echo(json.dumps({"username": username, "year": year, "net_income": report.net_income,
                               "out": str(out), "citation": citation.to_json()}))

    guard(run)


@compliance.command("transactions")
@click.option("--username", required=True)
@click.option("--asset", required=True)
@click.option("--year", type=click.IntRange(2009, 9999), required=True)
@click.option("--month", type=click.IntRange(1, 12), required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def transactions_command(username: str, asset: str, year: int, month: int, out: Path) -> None:
    """Write a user's classified movements of a month as CSV to OUT, reconciled to the month's statement."""
    from custody.compliance.statements import build_statement, month_bounds
    from custody.compliance.transactions import reconcile, transaction_csv, transaction_report
    from custody.ledger.service import Ledger

    def run() -> None:
        ledger = Ledger(services().sessions)
        bounds = month_bounds(year, month)
        report = transaction_report(ledger, username, asset.upper(), *bounds)
        problems = reconcile(report, build_statement(ledger, username, asset.upper(), *bounds))
        if problems:
            raise click.ClickException("transaction report does not reconcile: " + "; ".join(problems))
        out.write_text(transaction_csv(report), encoding="utf-8")
        click.echo(json.dumps({"username": username, "asset": report.asset, "rows": len(report.rows),
                               "credits_minor": report.credits_minor, "debits_minor": report.debits_minor,
                               "out": str(out)}))

    guard(run)


@compliance.command("limits-report")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def limits_report_command(out: Path) -> None:
    """Write every user's KYC tier, jurisdiction and withdrawal and trading caps in force as CSV to OUT."""
    from custody.compliance.limits_report import limits_csv, limits_rows, standings

    def run() -> None:
        access = services()
        rows = limits_rows(standings(access.sessions), access.policies.active().document,
                           access.kyc.jurisdictions)
        out.write_text(limits_csv(rows), encoding="utf-8")
        click.echo(json.dumps({"users": len(rows), "out": str(out)}))

    guard(run)


def _cite(sessions: sessionmaker[Session], ledger: Ledger, rests_on_seq: int) -> Citation:
    """Cite the newest signed checkpoint covering ``rests_on_seq`` (keys from the configured keystore)."""
    from custody.audit.service import AuditService
    from custody.compliance.citation import cite_latest
    from strongroom.keystores import LazyKeystore, open_keystore
    from strongroom.settings import Settings

    settings = Settings.from_env()
    audit = AuditService(sessions, ledger, LazyKeystore(lambda: open_keystore(settings)))
    return cite_latest(audit, rests_on_seq)


def _officer(username: str, mfa_code: str) -> str:
    """Return ``username`` if it is an enabled compliance officer (kyc.manage) whose TOTP code checks."""
    from policies.results import PolicyError, ResultCode
    from policies.roles import Permission, has_permission

    svc = services()
    user = svc.users.find_user(username)
    if user is None or user.disabled_ms is not None or not has_permission(user.roles, Permission.KYC_MANAGE):
        raise PolicyError(ResultCode.PERMISSION_DENIED,
                          f"{username[:64]!r} is not an enabled user with the compliance role")
    refusal = svc.mfa.verify(user.username, mfa_code)
    if refusal is not None:
        raise PolicyError(refusal.code, refusal.message)
    return user.username


@compliance.command("erase-personal-data")
@click.argument("username")
@click.option("--officer", required=True, help="The compliance officer erasing (a user with the role).")
@click.option("--mfa", "mfa_code", required=True, help="The officer's current TOTP code.")
@click.option("--reason", required=True, help="Why (retention ended, erasure request); security-logged.")
def erase_personal_data(username: str, officer: str, mfa_code: str, reason: str) -> None:
    """Erase USERNAME's encrypted identity record (docs/compliance.md, "Personal data")."""

    def run() -> None:
        services().personal_data.erase(_officer(officer, mfa_code), username[:64], reason)
        click.echo(json.dumps({"erased": {"username": username[:64]}}))

    guard(run)


@compliance.command("rewrap-personal-data")
@click.option("--officer", required=True, help="The compliance officer asking (a user with the role).")
@click.option("--mfa", "mfa_code", required=True, help="The officer's current TOTP code.")
@click.option("--reason", required=True, help="Why (e.g. the KEK was rotated); security-logged.")
def rewrap_personal_data(officer: str, mfa_code: str, reason: str) -> None:
    """Re-wrap every identity record still under an older KEK version (after `keys rotate`)."""

    def run() -> None:
        count = services().personal_data.rewrap(actor=_officer(officer, mfa_code), reason=reason)
        click.echo(json.dumps({"rewrapped": count}))

    guard(run)


@compliance.command("lists")
def lists() -> None:
    """Print the loaded list versions with their diffs, newest first."""
    guard(lambda: click.echo(json.dumps({"versions": services().screening.versions()}, sort_keys=True)))


def register(main: click.Group) -> None:
    main.add_command(compliance)
