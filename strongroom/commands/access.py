"""CLI for access control: users, approver keys, approvals, delayed-withdrawal release.

Approvers sign with a key held in their *own* local keystore file
(``--keystore PATH``, passphrase from ``STRONGROOM_APPROVER_PASSPHRASE`` or a
prompt); the private key never leaves that file. These commands talk to the
database directly, so they run on an operator machine; remote approvers use
``approvals sign`` and submit the printed approval through the API.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from custody.api.services import AccessServices
from custody.db import make_engine, make_session_factory
from custody.keystore import KeystoreError, KeyType, LocalKeystore
from custody.ledger.codes import LedgerError
from custody.ledger.service import Ledger, wall_clock_ms
from custody.refusal import CustodyRefusal
from custody.withdrawals.service import PENDING_APPROVAL, WithdrawalView
from policies.approval import Approval, approval_digest
from policies.results import PolicyError
from policies.signature_scheme import SignatureScheme
from strongroom.keystores import LazyKeystore, open_keystore
from strongroom.settings import Settings, SettingsError
from strongroom.wiring import build_access_services

APPROVER_PASSPHRASE_ENV = "STRONGROOM_APPROVER_PASSPHRASE"  # noqa: S105 (a variable name)
DEFAULT_APPROVAL_TTL_MINUTES = 60
ROLE_CHOICES = click.Choice(["trader", "treasury", "auditor", "compliance", "admin"])


def services(*, with_terms: bool = False) -> AccessServices:
    """Build the access services from the environment's settings.

    ``with_terms``: also connect to the configured chains, so cold withdrawals
    show (and their approvals bind) their transfer terms; only the approval
    commands need it, and only they fail when a node is unreachable.
    """
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    sessions = make_session_factory(make_engine(settings.database_url))
    keystore = LazyKeystore(lambda: open_keystore(settings))
    built = build_access_services(sessions, keystore, Ledger(sessions), wall_clock_ms)
    if not with_terms:
        return built
    from custody.bundles.terms import install_terms
    from strongroom.runtimes.from_env import bundle_chains, chain_runtimes_from_env

    runtimes = chain_runtimes_from_env(settings)
    if runtimes:
        # Cold withdrawals show (and their approvals bind) chain, network, wallet and fee cap.
        install_terms(bundle_chains(runtimes), built.withdrawals, [r.treasury for r in runtimes.values()])
    return built


def guard(fn: Callable[[], None]) -> None:
    """Run ``fn``; print an expected refusal as one JSON line on stderr and exit 1."""
    try:
        fn()
    except (PolicyError, CustodyRefusal, LedgerError, KeystoreError) as exc:
        code = exc.code
        click.echo(
            json.dumps({"code": int(code), "error": code.name.lower(), "message": exc.message}), err=True
        )
        sys.exit(1)


def approver_keystore(path: Path) -> LocalKeystore:
    """Open (or create) the approver's personal keystore file."""
    passphrase = os.environ.get(APPROVER_PASSPHRASE_ENV) or click.prompt(
        "Approver keystore passphrase", hide_input=True
    )
    return LocalKeystore(path, passphrase)


@click.group("users")
def users() -> None:
    """Create and list users."""


@users.command("create")
@click.option("--username", required=True)
@click.option("--role", "roles", multiple=True, required=True, type=ROLE_CHOICES, help="Repeatable.")
@click.option("--kyc-tier", type=int, default=0, show_default=True)
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    default=("read", "trade", "withdraw"),
    show_default=True,
    type=click.Choice(["read", "trade", "withdraw"]),
    help="Scopes of the first API key.",
)
def users_create(username: str, roles: tuple[str, ...], kyc_tier: int, scopes: tuple[str, ...]) -> None:
    """Create a user and a first API key; the secret is printed once and never stored in clear."""
    from custody.access.users import parse_roles, parse_scopes

    def run() -> None:
        svc = services()
        svc.policies.ensure_default()
        user, key = svc.users.create_user(
            username, parse_roles(roles), kyc_tier=kyc_tier, actor="cli", key_scopes=parse_scopes(scopes)
        )
        assert key is not None
        click.echo(f"created user {user.username} (roles {', '.join(sorted(user.roles))})")
        click.echo(f"api key id:     {key.credentials.key_id}")
        click.echo(f"api key secret: {key.credentials.secret}")
        click.echo("store the secret now: it is shown only once")

    guard(run)


@users.command("list")
def users_list() -> None:
    """List users as JSON lines."""
    for user in services().users.list_users():
        click.echo(json.dumps(user.to_json()))


@click.group("approver")
def approver() -> None:
    """Manage approver signing keys."""


@approver.command("register-key")
@click.option("--username", required=True)
@click.option(
    "--keystore",
    "keystore_path",
    required=True,
    type=click.Path(path_type=Path),
    help="The approver's own local keystore file (created if absent).",
)
@click.option("--key-name", default="approver", show_default=True, help="Key name inside that keystore.")
@click.option("--key-id", default=None, help="Registered key id (default USERNAME-KEYNAME).")
def approver_register_key(username: str, keystore_path: Path, key_name: str, key_id: str | None) -> None:
    """Create an Ed25519 key in the approver's keystore (if needed) and register its public key."""

    def run() -> None:
        keystore = approver_keystore(keystore_path)
        try:
            keystore.key_info(key_name)
        except KeystoreError:
            keystore.create_key(key_name, KeyType.ED25519)
        public_key = keystore.public_key(key_name)
        view = services().approvers.register(
            username, key_id or f"{username}-{key_name}", public_key, SignatureScheme.ED25519, actor="cli"
        )
        click.echo(json.dumps({"approver_key": view.to_json()}))

    guard(run)


@click.group("approvals")
def approvals() -> None:
    """List, inspect, sign and approve withdrawals awaiting approval."""


@approvals.command("list")
@click.option("--username", default=None, help="Only those this approver may approve.")
def approvals_list(username: str | None) -> None:
    """List withdrawals awaiting approval, one JSON line each."""

    def run() -> None:
        svc = services()
        views = (
            svc.withdrawals.pending_for(svc.users.get_user(username))
            if username
            else svc.withdrawals.query(state=PENDING_APPROVAL)
        )
        for view in views:
            r = view.row
            click.echo(
                json.dumps(
                    {
                        "id": r.id,
                        "username": r.username,
                        "asset": r.asset,
                        "amount": str(r.amount),
                        "destination": r.destination,
                        "rule_id": r.rule_id,
                        "required": f"{r.required_count} of {r.required_group}",
                        "approvals": len(view.approvals),
                    }
                )
            )

    guard(run)


@approvals.command("show")
@click.argument("withdrawal_id")
@click.option("--text", is_flag=True, help="Plain text for reading instead of one JSON document.")
def approvals_show(withdrawal_id: str, text: bool) -> None:
    """Show a withdrawal, the policy's explanation and exactly what approvers sign (JSON, or --text)."""

    def run() -> None:
        view = services(with_terms=True).withdrawals.get(withdrawal_id)
        if not text:
            # One JSON document and nothing else, so it pipes into jq; the explanation is in "decision".
            click.echo(json.dumps(view.to_json(), indent=2))
            return
        subject = view.to_json()["subject"]
        click.echo(f"withdrawal {view.id}: {view.state}")
        click.echo("you sign:")
        for key in sorted(subject):
            click.echo(f"  {key}: {subject[key]}")
        click.echo("explanation:")
        for line in view.decision().get("explanation", []):
            click.echo(f"  {line}")

    guard(run)


def _sign(
    view: WithdrawalView,
    username: str,
    keystore_path: Path,
    key_name: str,
    key_id: str | None,
    ttl_minutes: int,
    now_ms: int,
) -> Approval:
    keystore = approver_keystore(keystore_path)
    subject = view.subject
    expires_ms = now_ms + ttl_minutes * 60_000
    signature = keystore.sign(key_name, approval_digest(subject, now_ms, expires_ms))
    return Approval(
        approver_id=username,
        key_id=key_id or f"{username}-{key_name}",
        scheme=SignatureScheme.ED25519,
        subject=subject,
        signed_at_ms=now_ms,
        expires_at_ms=expires_ms,
        signature=signature.value,
    )


_SIGN_OPTIONS = [
    click.argument("withdrawal_id"),
    click.option("--username", required=True, help="You, the approver."),
    click.option("--keystore", "keystore_path", required=True, type=click.Path(path_type=Path, exists=True)),
    click.option("--key-name", default="approver", show_default=True),
    click.option("--key-id", default=None, help="Registered key id (default USERNAME-KEYNAME)."),
    click.option(
        "--ttl-minutes",
        type=click.IntRange(1, 72 * 60),
        default=DEFAULT_APPROVAL_TTL_MINUTES,
        show_default=True,
    ),
]


def _with_sign_options(fn: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_SIGN_OPTIONS):
        fn = option(fn)
    return fn


@approvals.command("sign")
@_with_sign_options
def approvals_sign(
    withdrawal_id: str,
    username: str,
    keystore_path: Path,
    key_name: str,
    key_id: str | None,
    ttl_minutes: int,
) -> None:
    """Sign an approval and print it (base64) for submission through the API."""

    def run() -> None:
        svc = services(with_terms=True)
        approval = _sign(
            svc.withdrawals.get(withdrawal_id),
            username,
            keystore_path,
            key_name,
            key_id,
            ttl_minutes,
            svc.clock(),
        )
        click.echo(base64.b64encode(approval.to_bytes()).decode())

    guard(run)


@approvals.command("approve")
@_with_sign_options
def approvals_approve(
    withdrawal_id: str,
    username: str,
    keystore_path: Path,
    key_name: str,
    key_id: str | None,
    ttl_minutes: int,
) -> None:
    """Sign an approval with your keystore key and submit it."""

    def run() -> None:
        svc = services(with_terms=True)
        view = svc.withdrawals.get(withdrawal_id)
        approval = _sign(view, username, keystore_path, key_name, key_id, ttl_minutes, svc.clock())
        result = svc.withdrawals.approve(svc.users.get_user(username), withdrawal_id, approval)
        click.echo(json.dumps({"id": result.id, "state": result.state, "approvals": len(result.approvals)}))

    guard(run)


@click.group("withdrawals")
def withdrawals() -> None:
    """Withdrawal maintenance."""


@withdrawals.command("release-due")
def withdrawals_release_due() -> None:
    """Evaluate again every delayed withdrawal whose delay has passed."""

    def run() -> None:
        for view in services().withdrawals.release_due():
            click.echo(json.dumps({"id": view.id, "state": view.state, "rule_id": view.row.rule_id}))

    guard(run)


def register(main: click.Group) -> None:
    """Add these command groups to the ``strongroom`` CLI."""
    for group in (users, approver, approvals, withdrawals):
        main.add_command(group)
