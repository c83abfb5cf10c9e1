"""``strongroom ledger checkpoint|export``, ``strongroom audit keys`` and ``strongroom reserves ...``.

The operator's audit commands. ``strongroom audit keys`` prints the public-keys
document and its fingerprint for the key ceremony (docs/ledger-export.md).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import click

from custody.assets import get_asset
from custody.audit.codes import AuditError
from custody.audit.export import keys_document, keys_fingerprint
from custody.audit.reserves import ReservesService, reserves_report
from custody.audit.service import AuditService
from custody.db import make_engine, make_session_factory
from custody.keystore import KeystoreError
from custody.ledger.service import Ledger
from strongroom.keystores import open_keystore
from strongroom.settings import Settings, SettingsError


def _services() -> tuple[AuditService, ReservesService]:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    sessions = make_session_factory(make_engine(settings.database_url))
    audit = AuditService(sessions, Ledger(sessions), open_keystore(settings))
    return audit, ReservesService(sessions, audit)


def _guard(fn: Callable[[], None]) -> None:
    """Run ``fn``; print expected refusals as one JSON line on stderr and exit 1."""
    try:
        fn()
    except (AuditError, KeystoreError) as exc:
        click.echo(json.dumps({"code": int(exc.code), "error": exc.code.name.lower(),
                               "message": exc.message}), err=True)
        sys.exit(1)


@click.command("checkpoint")
@click.option("--if-due", "every", type=int, default=None,
              help="Only checkpoint if at least this many entries are not yet covered (for cron).")
def checkpoint(every: int | None) -> None:
    """Sign a checkpoint over every journal entry up to the head."""

    def run() -> None:
        audit, _ = _services()
        made = audit.create_checkpoint() if every is None else audit.checkpoint_if_due(every)
        if made is None:
            click.echo(json.dumps({"status": "not_due"}))
            return
        click.echo(json.dumps({"status": "created", "hash": made.hash(), "checkpoint": made.to_dict()}))

    _guard(run)


@click.command("export")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--checkpoint", "checkpoint_first", is_flag=True,
              help="Sign a checkpoint over any uncovered entries first, so the whole export is signed.")
def export(directory: Path, checkpoint_first: bool) -> None:
    """Write a ledger export (docs/ledger-export.md) that `strongroom-audit verify` checks offline."""

    def run() -> None:
        audit, _ = _services()
        if checkpoint_first:
            audit.checkpoint_if_due(1)
        manifest = audit.export(directory)
        click.echo(f"exported {manifest.entries} entries (head seq {manifest.head_seq}), "
                   f"{manifest.checkpoints} checkpoints, {manifest.accounts} accounts to {directory}")

    _guard(run)


@click.group("audit")
def audit_group() -> None:
    """Audit keys for the key ceremony."""


@audit_group.command("keys")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the keys document here, for the auditor to pin.")
def keys(out: Path | None) -> None:
    """Print the checkpoint public-keys document and its fingerprint (creating the key if needed)."""

    def run() -> None:
        audit, _ = _services()
        audit.signing_key_version()
        public = audit.public_keys()
        document = json.dumps(keys_document(public), indent=2) + "\n"
        if out is not None:
            out.write_text(document)
        click.echo(document, nl=False)
        click.echo(f"fingerprint: {keys_fingerprint(public)}")

    _guard(run)


# Snapshot ids are a 32-bit integer column: a larger number is refused as a usage error, not
# handed to the database (PostgreSQL answered "integer out of range" with a stack trace).
SNAPSHOT_ID = click.IntRange(1, 2**31 - 1)


@click.group("reserves")
def reserves() -> None:
    """Proof of reserves: liabilities snapshots, per-user proofs, the reserves report."""


@reserves.command("report")
@click.option("--snapshot", "snapshot_id", type=SNAPSHOT_ID, default=None,
              help="Report an existing snapshot instead of taking a new one.")
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot and report as JSON.")
def report(snapshot_id: int | None, as_json: bool) -> None:
    """Take (or load) a signed snapshot and print reserves / liabilities per asset."""

    def run() -> None:
        _, service = _services()
        snapshot = service.create_snapshot() if snapshot_id is None else service.get_snapshot(snapshot_id)
        rows = reserves_report(snapshot)
        if as_json:
            click.echo(json.dumps({"snapshot": snapshot, "report": rows}, indent=2))
            return
        click.echo(f"reserves snapshot {snapshot['id']} at ledger seq {snapshot['ledger_seq']}")
        click.echo(f"  {'asset':<6} {'reserves':>28} {'liabilities':>28} {'ratio':>10}")
        for row in rows:
            click.echo(f"  {row['asset']:<6} {_human(row['asset'], row['reserves']):>28} "
                       f"{_human(row['asset'], row['liabilities']):>28} {row['ratio']:>10}")

    _guard(run)


@reserves.command("proof")
@click.option("--snapshot", "snapshot_id", type=SNAPSHOT_ID, required=True)
@click.option("--owner", required=True)
@click.option("--asset", required=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the proof here (default: stdout).")
def proof(snapshot_id: int, owner: str, asset: str, out: Path | None) -> None:
    """Write one user's liability proof, for `strongroom-audit verify-liability`."""

    def run() -> None:
        _, service = _services()
        text = json.dumps(service.liability_proof(snapshot_id, owner, asset), indent=2) + "\n"
        if out is None:
            click.echo(text, nl=False)
        else:
            out.write_text(text)
            click.echo(f"wrote {owner}'s {asset} liability proof to {out}")

    _guard(run)


def _human(asset_code: str, amount: str) -> str:
    asset = get_asset(asset_code)
    return amount if asset is None else asset.format(int(amount))


def register(main: click.Group, ledger: click.Group) -> None:
    """Attach the audit commands to the ``strongroom`` CLI."""
    ledger.add_command(checkpoint)
    ledger.add_command(export)
    main.add_command(reserves)
    main.add_command(audit_group)
