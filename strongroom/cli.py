"""The ``strongroom`` command line: init, migrate, serve, demo, ledger."""

from __future__ import annotations

import importlib
import json
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from strongroom.settings import Settings, SettingsError

if TYPE_CHECKING:
    from custody.ledger.posting import TransferRequest
    from custody.ledger.service import AccountView, Ledger

# Ids are database BIGINTs: anything larger names nothing and is refused as a usage error.
DB_ID = click.IntRange(0, 2**63 - 1)

# Commands defined in other modules, imported only when run (a treasury operator runs dozens of
# CLI calls: web3, SQLAlchemy and Alembic at start-up cost seconds each time). The help line is
# shown by `strongroom --help` without importing; tests check every name resolves.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "api": ("strongroom.commands.client", "Send a request signed with HMAC-SHA256 (like curl)."),
    "approvals": ("strongroom.commands.access", "List, inspect, sign and approve withdrawals."),
    "approver": ("strongroom.commands.access", "Manage approver signing keys."),
    "audit": ("strongroom.commands.audit", "Audit keys for the key ceremony."),
    "bundle": ("strongroom.commands.bundles", "Cold transfers through the offline signer."),
    "compliance": ("strongroom.commands.compliance", "Sanctions lists and screening."),
    "engine-worker": ("strongroom.commands.engine_worker",
                      "Scale-out: one market's matching engine over NATS JetStream."),
    "devnet": ("strongroom.commands.devnet", "Local Ethereum and Bitcoin chains: up, mine, fund, reorg."),
    "halt": ("strongroom.commands.controls", "Kill switches: withdrawal halts, market halts, breakers."),
    "margin-worker": ("strongroom.commands.engine_worker",
                      "Scale-out: keep order and position margin in the ledger from the events."),
    "market-day": ("strongroom.commands.exchange", "Run the market day and print its report."),
    "reserves": ("strongroom.commands.audit", "Proof of reserves: snapshots, proofs, reports."),
    "settlement-worker": ("strongroom.commands.engine_worker",
                          "Scale-out: settle engine events from NATS JetStream into the ledger."),
    "shard-feeder": ("strongroom.commands.shard_feeder",
                     "Scale-out: a clearing shard's price feed and clock (quotes, ticks, funding)."),
    "shard-settlement": ("strongroom.commands.shard_settlement",
                         "Clearing shards: write a shard's postings to the ledger; void lost deposits."),
    "shard-worker": ("strongroom.commands.shard_worker",
                     "Scale-out: lead or stand by for one clearing shard's venue over NATS."),
    "simulate": ("strongroom.commands.simulate", "Run the platform under a seeded simulation."),
    "users": ("strongroom.commands.access", "Create and list users."),
    "wallet": ("strongroom.commands.wallets", "Wallets, deposits, on-chain withdrawals, sweeps."),
    "withdrawals": ("strongroom.commands.access", "Withdrawal maintenance."),
}
LAZY_LEDGER_COMMANDS: dict[str, tuple[str, str]] = {
    "checkpoint": ("strongroom.commands.audit", "Write a signed ledger checkpoint."),
    "export": ("strongroom.commands.audit", "Export the ledger for offline audit."),
}
_LOADED: set[str] = set()


def _load(module_name: str) -> None:
    """Import a command module once and let it add its commands."""
    if module_name in _LOADED:
        return
    _LOADED.add(module_name)
    module = importlib.import_module(module_name)
    if module_name == "strongroom.commands.client":
        main.add_command(module.api)
    elif module_name == "strongroom.commands.audit":
        module.register(main, ledger)
    else:
        module.register(main)


class LazyGroup(click.Group):
    """A group whose commands from ``lazy`` are imported on first use, not at start-up."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            _load(self.lazy[cmd_name][0])
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(formatter.width - 6 - len(name))))
            elif command is None:
                rows.append((name, self.lazy[name][1]))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


def _ledger(settings: Settings) -> Ledger:
    from custody.db import make_engine, make_session_factory
    from custody.ledger.service import Ledger

    return Ledger(make_session_factory(make_engine(settings.database_url)))


def _fail(code: Any, message: str) -> None:
    click.echo(json.dumps({"code": int(code), "error": code.name.lower(), "message": message}),
               err=True)
    sys.exit(1)


def _guard(fn: Callable[[], None]) -> None:
    """Run ``fn``, turning expected refusals into a JSON error line and exit status 1."""
    from custody.ledger.codes import LedgerError

    try:
        fn()
    except LedgerError as exc:
        _fail(exc.code, exc.message)


@click.group(cls=LazyGroup, lazy=LAZY_COMMANDS)
def main() -> None:
    """Strongroom: custody platform and derivatives exchange."""


@main.command()
def init() -> None:
    """Create the data directory and migrate the database to the latest schema."""
    settings = _settings()
    settings.ensure_data_dir()
    from strongroom import migrate as migrations

    migrations.upgrade(settings.database_url)
    click.echo(f"initialised data dir {settings.data_dir}")


@main.command()
@click.option("--revision", default="heads", show_default=True, help="Target Alembic revision.")
def migrate(revision: str) -> None:
    """Apply database migrations."""
    settings = _settings()
    settings.ensure_data_dir()
    from strongroom import migrate as migrations

    migrations.upgrade(settings.database_url, revision)
    click.echo(f"database at {revision}")


def _start_streams(app: Any, settings: Any, host: str, port: int) -> Any:
    """Start the websocket stream server process and its feed (docs/market-data.md, "Streams").

    ``STRONGROOM_STREAM_PORT`` (default: the API port + 1; 0 turns streams off).
    """
    import os
    import subprocess
    from pathlib import Path

    from exchange.api.marketdata import start_stream_feed

    text = os.environ.get("STRONGROOM_STREAM_PORT", str(port + 1))
    if not text.isascii() or not text.isdigit() or not 0 <= int(text) <= 65535:
        raise click.ClickException(f"STRONGROOM_STREAM_PORT was {text[:20]!r}, must be 0..65535")
    stream_port = int(text)
    if stream_port == 0:
        return None
    app.config["STREAM_PORT"] = stream_port  # the console's live book connects here
    feed_path = Path(settings.data_dir) / "stream.sock"
    start_stream_feed(app, feed_path)
    command = [sys.executable, "-m", "exchange.api.stream", "--feed", str(feed_path), "--host", host,
               "--port", str(stream_port), "--trusted-proxy-hops", str(settings.trusted_proxy_hops)]
    process = subprocess.Popen(command)  # noqa: S603 (our own module, our own arguments)
    click.echo(f"Strongroom streams on ws://{host}:{stream_port}/ (docs/market-data.md)")
    return process


@main.command()
@click.option("--host", default=None, help="Bind address (default STRONGROOM_HOST or 127.0.0.1).")
@click.option("--port", default=None, type=click.IntRange(1, 65535),
              help="Port (default STRONGROOM_PORT or 8600).")
def serve(host: str | None, port: int | None) -> None:
    """Serve the HTTP API (waitress, production-grade WSGI server)."""
    from waitress import serve as waitress_serve

    from strongroom.app import create_app
    from strongroom.jobs import JobRunner, alert_jobs, exchange_jobs, server_jobs, webhook_jobs
    from strongroom.runtimes.from_env import chain_runtimes_from_env
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
    # Alerts on their own thread: a slow webhook receiver never delays a funding boundary.
    alerts = JobRunner(alert_jobs(app), time.monotonic, name="strongroom-alerts")
    alerts.start()
    hooks = JobRunner(webhook_jobs(app), time.monotonic, name="strongroom-webhooks")
    hooks.start()
    click.echo(f"Strongroom API on http://{bind_host}:{bind_port}/api/v1/health")
    click.echo(f"Strongroom console on http://{bind_host}:{bind_port}/console/ "
               "(demo logins: printed by `strongroom demo`, docs/console.md)")
    streams = _start_streams(app, settings, bind_host, bind_port)
    # SIGTERM (systemd, docker stop, kubectl) stops like Ctrl-C: waitress returns and the
    # finally below stops the jobs and takes the final exchange snapshot. Python's default
    # SIGTERM action would end the process on the spot, skipping all of it.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        waitress_serve(app, host=bind_host, port=bind_port, threads=8)
    except (OSError, ValueError) as exc:
        # An unresolvable host, a port in use, an address not ours: say so, without a traceback.
        reason = getattr(exc, "strerror", None) or str(exc)
        raise click.ClickException(f"cannot listen on {bind_host}:{bind_port}: {reason}") from None
    finally:
        if streams is not None:
            streams.terminate()
            streams.wait(timeout=10)
        hooks.stop()
        alerts.stop()
        market.stop()
        runner.stop()
        # A final exchange snapshot, so the next start has no journal tail to replay.
        exchange = app.extensions.get("strongroom.exchange")
        if exchange is not None:
            exchange.close()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


@main.command()
def demo() -> None:
    """Create demo accounts and balances (safe to run twice)."""
    from strongroom.demo import seed_demo
    from strongroom.keystores import ensure_demo_passphrase_file

    settings = _settings()
    settings.ensure_data_dir()
    if settings.keystore_passphrase_file is not None and not settings.keystore_passphrase:
        ensure_demo_passphrase_file(settings.keystore_passphrase_file)
    from strongroom import migrate as migrations

    migrations.upgrade(settings.database_url)
    data = seed_demo(_ledger(settings))
    click.echo(f"demo data ready ({data.transfers_created} new transfers)")
    for account in data.accounts:
        click.echo(_account_line(account))
    from strongroom.commands.access import services as _access_services
    from strongroom.demo import seed_demo_access

    access_services = _access_services()
    for line in seed_demo_access(access_services):
        click.echo(line)
    from strongroom.commands.wallets import run_demo as _wallet_demo

    _wallet_demo(settings)
    from strongroom.demo import seed_demo_console

    # Last, so the logins are on screen when `make run` starts the server.
    for line in seed_demo_console(access_services):
        click.echo(line)


def _account_line(account: AccountView) -> str:
    from custody.assets import get_asset
    from custody.ledger.entry import AccountFlags

    asset = get_asset(account.asset)
    assert asset is not None
    b = account.balance
    # Wallets hold assets (debit-normal); everything else is shown from the credit side.
    debit_normal = account.flags & AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
    net = b.debit_balance_posted if debit_normal else b.credit_balance_posted
    shown = asset.format(net) if net >= 0 else "-" + asset.format(-net)
    return (f"  account {account.id:>3}  {account.owner:<10} {account.kind.value:<22} "
            f"{account.asset:<5} balance {shown}  pending debits {asset.format(b.debits_pending)}")


@main.group(cls=LazyGroup, lazy=LAZY_LEDGER_COMMANDS)
def ledger() -> None:
    """Read balances; propose and approve transfers (two admins)."""


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
    from custody.money import AmountError, parse_amount

    if value is None:
        return None
    try:
        return parse_amount(value)
    except AmountError as exc:
        raise click.BadParameter(str(exc), param_hint="--amount") from None


BY_OPTION = click.option("--by", "proposer", required=True,
                         help="The admin proposing it; another admin applies it with `ledger approve`.")


@ledger.command("transfer")
@click.option("--id", "transfer_id", required=True, help="Unique id; a retry with it is a no-op.")
@click.option("--debit", type=DB_ID, required=True, help="Debit account id.")
@click.option("--credit", type=DB_ID, required=True, help="Credit account id.")
@click.option("--amount", required=True, help="Integer amount in minor units.")
@click.option("--pending", is_flag=True, help="Reserve only (post or void later).")
@click.option("--timeout", "timeout_s", type=click.IntRange(0, 2**31 - 1), default=0,
              help="Pending timeout in seconds.")
@click.option("--reference", default="")
@BY_OPTION
def ledger_transfer(transfer_id: str, debit: int, credit: int, amount: str, pending: bool,
                    timeout_s: int, reference: str, proposer: str) -> None:
    """Propose moving AMOUNT from the debit to the credit account (a second admin approves)."""
    from custody.ledger.entry import TransferKind
    from custody.ledger.posting import TransferRequest

    _propose(proposer, TransferRequest(
        id=transfer_id, kind=TransferKind.PENDING if pending else TransferKind.SINGLE,
        debit_account=debit, credit_account=credit, amount=_amount(amount),
        timeout_s=timeout_s, reference=reference))


@ledger.command("post")
@click.argument("pending_id")
@click.option("--id", "transfer_id", required=True)
@click.option("--amount", default=None, help="Post only part of the pending amount.")
@BY_OPTION
def ledger_post(pending_id: str, transfer_id: str, amount: str | None, proposer: str) -> None:
    """Propose posting a pending transfer."""
    from custody.ledger.entry import TransferKind
    from custody.ledger.posting import TransferRequest

    _propose(proposer, TransferRequest(id=transfer_id, kind=TransferKind.POST, pending_id=pending_id,
                                       amount=_amount(amount)))


@ledger.command("void")
@click.argument("pending_id")
@click.option("--id", "transfer_id", required=True)
@BY_OPTION
def ledger_void(pending_id: str, transfer_id: str, proposer: str) -> None:
    """Propose voiding a pending transfer."""
    from custody.ledger.entry import TransferKind
    from custody.ledger.posting import TransferRequest

    _propose(proposer, TransferRequest(id=transfer_id, kind=TransferKind.VOID, pending_id=pending_id))


@ledger.command("approve")
@click.argument("proposal_id")
@click.option("--by", "approver", required=True, help="The approving admin (not the proposer).")
@click.option("--mfa", "mfa_code", required=True, help="The approver's current TOTP code.")
def ledger_approve(proposal_id: str, approver: str, mfa_code: str) -> None:
    """Apply another admin's proposal, all its transfers or none (needs your TOTP code)."""

    def run() -> None:
        view, _ = _verified_admin_services(approver, mfa_code).ledger_ops.approve(approver, proposal_id)
        click.echo(json.dumps({"proposal": view.to_json()}))
        if view.state != "executed":
            sys.exit(1)

    _guard_access(run)


@ledger.command("proposals")
@click.option("--state", type=click.Choice(["proposed", "executed", "failed", "rejected"]), default=None)
def ledger_proposals(state: str | None) -> None:
    """List manual ledger operations, newest first."""
    from strongroom.commands.access import services

    for view in services().ledger_ops.list(state):
        click.echo(json.dumps(view.to_json()))


def _admin_services(username: str) -> Any:
    """Return the access services after checking ``username`` is an enabled admin."""
    from policies.results import PolicyError, ResultCode
    from policies.roles import Role
    from strongroom.commands.access import services

    svc = services()
    user = svc.users.find_user(username)
    if user is None or user.disabled_ms is not None or Role.ADMIN not in user.roles:
        raise PolicyError(ResultCode.PERMISSION_DENIED, f"{username[:64]} is not an enabled admin")
    return svc


def _verified_admin_services(username: str, mfa_code: str) -> Any:
    """Return the access services for an enabled admin whose current TOTP code checks; fail otherwise."""
    svc = _admin_services(username)
    refusal = svc.mfa.verify(username, mfa_code)
    if refusal is not None:
        _fail(refusal.code, refusal.message)
    return svc


def _propose(proposer: str, request: TransferRequest) -> None:
    def run() -> None:
        view = _admin_services(proposer).ledger_ops.propose(proposer, [request],
                                                           f"manual {request.kind.value} {request.id}")
        click.echo(json.dumps({"proposal": view.to_json()}))

    _guard_access(run)


def _guard_access(fn: Callable[[], None]) -> None:
    """Like `_guard`, for commands that also meet access and policy refusals."""
    from custody.access.ledger_ops import ProposalRefused
    from custody.keystore import KeystoreError
    from custody.refusal import CustodyRefusal
    from policies.results import PolicyError

    try:
        _guard(fn)
    except (CustodyRefusal, PolicyError) as exc:
        _fail(exc.code, exc.message)
    except ProposalRefused as exc:
        failed = next(r for r in exc.results if r.code is not None)
        _fail(failed.code, f"transfer {failed.id}: {failed.message}")
    except KeystoreError as exc:
        _fail(exc.code, exc.message)


@ledger.command("history")
@click.argument("account_id", type=DB_ID)
@click.option("--cursor", type=DB_ID, default=0)
@click.option("--limit", type=click.IntRange(min=1), default=100, help="At most 1000.")
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
