"""CLI for compliance: load a sanctions list (a new version and a re-screen), re-screen, list versions.

``strongroom compliance load-sdn DIR`` reads OFAC's SDN CSV set from DIR
(sdn.csv, and alt.csv, add.csv, sdn_comments.csv if present; docs/compliance.md).
The shipped fabricated fixture list is ``custody/compliance/data/fixture_sdn``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from strongroom.commands.access import guard, services

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


@compliance.command("lists")
def lists() -> None:
    """Print the loaded list versions with their diffs, newest first."""
    guard(lambda: click.echo(json.dumps({"versions": services().screening.versions()}, sort_keys=True)))


def register(main: click.Group) -> None:
    main.add_command(compliance)
