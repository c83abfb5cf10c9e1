"""The ``strongroom`` command line: init, migrate, serve, demo, ledger."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from custody.assets import get_asset
from custody.db import make_engine, make_session_factory
from custody.ledger.codes import LedgerError
from custody.ledger.entry import AccountFlags, TransferKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import HISTORY_PAGE_MAX, AccountView, Ledger
from custody.money import AmountError, parse_amount
from strongroom import migrate as migrations
from strongroom.settings import Settings, SettingsError

# Ids are database BIGINTs: anything larger names nothing and is refused as a usage error.
DB_ID = click.IntRange(0, 2**63 - 1)


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


def _ledger(settings: Settings) -> Ledger:
    return Ledger(make_session_factory(make_engine(settings.database_url)))


def _fail(code: Any, message: str) -> None:
    click.echo(json.dumps({"code": int(code), "error": code.name.lower(), "message": message}),
               err=True)
    sys.exit(1)


def _guard(fn: Callable[[], None]) -> None:
    """Run ``fn``, turning expected refusals into a JSON error line and exit status 1."""
    try:
        fn()
    except LedgerError as exc:
        _fail(exc.code, exc.message)


@click.group()
def main() -> None:
    """Strongroom: custody platform and derivatives exchange."""


@main.command()
def init() -> None:
    """Create the data directory and migrate the database to the latest schema."""
    settings = _settings()
    settings.ensure_data_dir()
    migrations.upgrade(settings.database_url)
    click.echo(f"initialised data dir {settings.data_dir}")


@main.command()
@click.option("--revision", default="heads", show_default=True, help="Target Alembic revision.")
def migrate(revision: str) -> None:
    """Apply database migrations."""
    settings = _settings()
    settings.ensure_data_dir()
    migrations.upgrade(settings.database_url, revision)
    click.echo(f"database at {revision}")


@main.command()
@click.option("--host", default=None, help="Bind address (default STRONGROOM_HOST or 127.0.0.1).")
@click.option("--port", default=None, type=click.IntRange(1, 65535),
              help="Port (default STRONGROOM_PORT or 8600).")
def serve(host: str | None, port: int | None) -> None:
    """Serve the HTTP API (waitress, production-grade WSGI server)."""
    from waitress import serve as waitress_serve

    from strongroom.app import create_app
    from strongroom.commands.wallets import chain_runtimes_from_env
    from strongroom.jobs import JobRunner, exchange_jobs, server_jobs
    from strongroom.startup import StartupError, check_startup

    settings = _settings()
    try:
        check_startup(settings)
        # Every configured chain (Ethereum, Bitcoin); WALLETS stays the Ethereum one for older readers.
        runtimes = chain_runtimes_from_env(settings)
        app = create_app({"WALLETS": runtimes.get("ethereum"), "CHAIN_RUNTIMES": runtimes}, settings=settings)
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
    bind_host, bind_port = host or settings.host, port or settings.port
    runner = JobRunner(server_jobs(app, settings.checkpoint_every_entries), time.monotonic)
    runner.start()
    market = JobRunner(exchange_jobs(app), time.monotonic, name="strongroom-market")
    market.start()
    click.echo(f"Strongroom API on http://{bind_host}:{bind_port}/api/v1/health")
    try:
        waitress_serve(app, host=bind_host, port=bind_port, threads=8)
    except (OSError, ValueError) as exc:
        # An unresolvable host, a port in use, an address not ours: say so, without a traceback.
        reason = getattr(exc, "strerror", None) or str(exc)
        raise click.ClickException(f"cannot listen on {bind_host}:{bind_port}: {reason}") from None
    finally:
        market.stop()
        runner.stop()
        # A final exchange snapshot, so the next start has no journal tail to replay.
        exchange = app.extensions.get("strongroom.exchange")
        if exchange is not None:
            exchange.close()


@main.command()
def demo() -> None:
    """Create demo accounts and balances (safe to run twice)."""
    from strongroom.demo import seed_demo
    from strongroom.keystores import ensure_demo_passphrase_file

    settings = _settings()
    settings.ensure_data_dir()
    if settings.keystore_passphrase_file is not None and not settings.keystore_passphrase:
        ensure_demo_passphrase_file(settings.keystore_passphrase_file)
    migrations.upgrade(settings.database_url)
    data = seed_demo(_ledger(settings))
    click.echo(f"demo data ready ({data.transfers_created} new transfers)")
    for account in data.accounts:
        click.echo(_account_line(account))
    from strongroom.commands.access import services as _access_services
    from strongroom.demo import seed_demo_access

    for line in seed_demo_access(_access_services()):
        click.echo(line)
    from strongroom.commands.wallets import run_demo as _wallet_demo

    _wallet_demo(settings)


def _account_line(account: AccountView) -> str:
    asset = get_asset(account.asset)
    assert asset is not None
    b = account.balance
    # Wallets hold assets (debit-normal); everything else is shown from the credit side.
    debit_normal = account.flags & AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
    net = b.debit_balance_posted if debit_normal else b.credit_balance_posted
    shown = asset.format(net) if net >= 0 else "-" + asset.format(-net)
    return (f"  account {account.id:>3}  {account.owner:<10} {account.kind.value:<22} "
            f"{account.asset:<5} balance {shown}  pending debits {asset.format(b.debits_pending)}")


@main.group()
def ledger() -> None:
    """Read balances and submit transfers."""


@ledger.command("accounts")
@click.option("--owner", default=None)
def ledger_accounts(owner: str | None) -> None:
    """List accounts with their balances."""
    for account in _ledger(_settings()).list_accounts(owner):
        click.echo(_account_line(account))


@ledger.command("balance")
@click.argument("account_id", type=DB_ID)
def ledger_balance(account_id: int) -> None:
    """Print an account's balances as JSON (amounts as strings of minor units)."""

    def run() -> None:
        account = _ledger(_settings()).get_account(account_id)
        b = account.balance
        click.echo(json.dumps({
            "account": account.id, "owner": account.owner, "asset": account.asset,
            "kind": account.kind.value, "debits_pending": str(b.debits_pending),
            "debits_posted": str(b.debits_posted), "credits_pending": str(b.credits_pending),
            "credits_posted": str(b.credits_posted),
        }))

    _guard(run)


@ledger.command("create-account")
@click.option("--owner", required=True)
@click.option("--asset", required=True)
@click.option("--kind", required=True)
def ledger_create_account(owner: str, asset: str, kind: str) -> None:
    """Create an account."""
    _guard(lambda: click.echo(_account_line(_ledger(_settings()).create_account(owner, asset, kind))))


def _amount(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_amount(value)
    except AmountError as exc:
        raise click.BadParameter(str(exc), param_hint="--amount") from None


@ledger.command("transfer")
@click.option("--id", "transfer_id", required=True, help="Unique id; a retry with it is a no-op.")
@click.option("--debit", type=DB_ID, required=True, help="Debit account id.")
@click.option("--credit", type=DB_ID, required=True, help="Credit account id.")
@click.option("--amount", required=True, help="Integer amount in minor units.")
@click.option("--pending", is_flag=True, help="Reserve only (post or void later).")
@click.option("--timeout", "timeout_s", type=click.IntRange(0, 2**31 - 1), default=0,
              help="Pending timeout in seconds.")
@click.option("--reference", default="")
def ledger_transfer(transfer_id: str, debit: int, credit: int, amount: str, pending: bool,
                    timeout_s: int, reference: str) -> None:
    """Move AMOUNT from the debit account to the credit account."""
    request = TransferRequest(
        id=transfer_id, kind=TransferKind.PENDING if pending else TransferKind.SINGLE,
        debit_account=debit, credit_account=credit, amount=_amount(amount),
        timeout_s=timeout_s, reference=reference)
    _submit_one(request)


@ledger.command("post")
@click.argument("pending_id")
@click.option("--id", "transfer_id", required=True)
@click.option("--amount", default=None, help="Post only part of the pending amount.")
def ledger_post(pending_id: str, transfer_id: str, amount: str | None) -> None:
    """Post a pending transfer."""
    _submit_one(TransferRequest(id=transfer_id, kind=TransferKind.POST, pending_id=pending_id,
                                amount=_amount(amount)))


@ledger.command("void")
@click.argument("pending_id")
@click.option("--id", "transfer_id", required=True)
def ledger_void(pending_id: str, transfer_id: str) -> None:
    """Void a pending transfer."""
    _submit_one(TransferRequest(id=transfer_id, kind=TransferKind.VOID, pending_id=pending_id))


def _submit_one(request: TransferRequest) -> None:
    def run() -> None:
        result = _ledger(_settings()).transfer(request)
        assert result.entry is not None
        click.echo(json.dumps({"status": result.status.value, "transfer": result.entry.to_dict()}))

    _guard(run)


@ledger.command("history")
@click.argument("account_id", type=DB_ID)
@click.option("--cursor", type=DB_ID, default=0)
@click.option("--limit", type=click.IntRange(1, HISTORY_PAGE_MAX), default=100)
def ledger_history(account_id: int, cursor: int, limit: int) -> None:
    """Print an account's journal entries as JSON lines."""

    def run() -> None:
        page = _ledger(_settings()).history(account_id, after_seq=cursor, limit=limit)
        for entry in page.entries:
            click.echo(json.dumps(entry.to_dict()))
        if page.next_cursor is not None:
            click.echo(f"# next cursor: {page.next_cursor}", err=True)

    _guard(run)


@ledger.command("expire")
def ledger_expire() -> None:
    """Release pending transfers whose timeout has passed."""
    entries = _ledger(_settings()).expire_pending()
    click.echo(f"expired {len(entries)} pending transfer(s)")


# Audit commands (ledger checkpoint, ledger export, reserves ...) live in their own module.
from strongroom.commands import audit as _audit_commands  # noqa: E402

_audit_commands.register(main, ledger)

# Access commands (users, approver keys, approvals) live in their own module.
from strongroom.commands import access as _access_commands  # noqa: E402

_access_commands.register(main)

# Wallet commands (tick, reconcile) live in their own module.
from strongroom.commands import wallets as _wallet_commands  # noqa: E402

_wallet_commands.register(main)

# Exchange commands (market-day) live in their own module.
from strongroom.commands import exchange as _exchange_commands  # noqa: E402

_exchange_commands.register(main)

# A signed-request client for the HTTP API (`strongroom api GET /api/v1/me`).
from strongroom.commands.client import api as _api_command  # noqa: E402

main.add_command(_api_command)

# Cold transfers through the offline signer (bundle key/export/import/tick/list).
from strongroom.commands import bundles as _bundle_commands  # noqa: E402

_bundle_commands.register(main)

# The seeded whole-platform simulation (docs/simulation.md); its imports load only when it runs.
from strongroom.commands import simulate as _simulate_command  # noqa: E402

_simulate_command.register(main)
