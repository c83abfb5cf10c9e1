"""``strongroom market-day``: play the scripted exchange day against the configured database."""

from __future__ import annotations

import json
import time

import click

from custody.db import make_engine, make_session_factory
from custody.ledger.service import Ledger
from strongroom import migrate as migrations
from strongroom.settings import Settings, SettingsError


@click.command("market-day")
@click.option("--run-id", default=None,
              help="Prefix of account owners and transfer ids (default: md<unix seconds>), so "
                   "repeated runs on one database never collide.")
def market_day(run_id: str | None) -> None:
    """Run the market day (docs/market-day.md) and print its report as JSON."""
    from exchange.scenario import run_market_day

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    settings.ensure_data_dir()
    migrations.upgrade(settings.database_url)
    ledger = Ledger(make_session_factory(make_engine(settings.database_url)))
    report = run_market_day(ledger, run_id or f"md{int(time.time())}")
    click.echo(json.dumps(report.to_dict(), indent=2))
    if not (report.balanced and report.agrees):
        raise SystemExit(1)


def register(main: click.Group) -> None:
    """Attach the exchange commands to the ``strongroom`` group."""
    main.add_command(market_day)
