"""Cold transfers through the offline signer (``strongroom bundle ...``), docs/bundles.md.

    strongroom bundle key                        the platform's bundle key, for the signer's anchors.json
    strongroom bundle anchors                    key, cold wallets (with the network names) and fee caps
    strongroom bundle export ID FILE [--qr-dir D [--png]]   unsigned bundle of an approved cold request
    strongroom bundle import FILE...             a signed result (one file, or its QR frame files)
    strongroom bundle tick                       broadcast, track confirmations, settle
    strongroom bundle list [--state S]

Configuration as for ``strongroom wallet`` (``STRONGROOM_ETH_RPC_URL``, ``STRONGROOM_BTC_RPC_URL`` ...):
every configured chain is served, Ethereum and Bitcoin alike. ``STRONGROOM_ETH_NETWORK`` is the
network name the signer's anchors use for the Ethereum cold wallet (default from the chain id:
mainnet, sepolia, holesky, anvil); Bitcoin's is the network's (main, test, regtest).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import click

from custody.bundles.service import ColdTransfers
from custody.chains.adapter import ChainError
from custody.db import make_engine, make_session_factory
from custody.keystore import KeystoreError
from custody.ledger.codes import LedgerError
from custody.ledger.service import wall_clock_ms
from custody.refusal import CustodyRefusal
from custody.wallets.codes import WalletError
from policies.results import PolicyError
from signer import qr
from signer.results import SignerError
from strongroom.keystores import LazyKeystore, open_keystore
from strongroom.runtimes.from_env import bundle_chains, chain_runtimes_from_env
from strongroom.settings import Settings, SettingsError

HOUR_MS = 3_600_000


def cold_transfers_from_env(ttl_hours: int = 24) -> ColdTransfers:
    """Build the cold-transfer service for every configured chain, or stop with a usage error."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    runtimes = chain_runtimes_from_env(settings)
    if not runtimes:
        raise click.UsageError(
            "no chain configured: set STRONGROOM_ETH_RPC_URL and/or STRONGROOM_BTC_RPC_URL"
        )
    sessions = make_session_factory(make_engine(settings.database_url))
    keystore = LazyKeystore(lambda: open_keystore(settings))
    # The registry reads wallets and accounts of any chain; any runtime's will do.
    wallets = next(iter(runtimes.values())).wallets
    return ColdTransfers(
        sessions, wallets, keystore, bundle_chains(runtimes), wall_clock_ms, ttl_ms=ttl_hours * HOUR_MS
    )


def _guard(fn: Callable[[], None]) -> None:
    """Run ``fn``; print an expected refusal as one JSON line on stderr and exit 1."""
    try:
        fn()
    except (PolicyError, CustodyRefusal, LedgerError, KeystoreError, WalletError, ChainError) as exc:
        line: dict[str, object] = {
            "code": int(exc.code),
            "error": exc.code.name.lower(),
            "message": exc.message,
        }
        cause = getattr(exc, "cause", None)
        if cause is not None:
            line["cause"] = cause
        click.echo(json.dumps(line), err=True)
        sys.exit(1)
    except SignerError as exc:
        click.echo(
            json.dumps(
                {"code": int(exc.code), "error": exc.code.name.lower(), "message": exc.refusal.message}
            ),
            err=True,
        )
        sys.exit(1)


def _kind(request_id: str, kind: str | None) -> str:
    return kind or ("refill" if request_id.startswith("refill:") else "withdrawal")


def signed_payload(blobs: list[bytes]) -> bytes:
    """Return the signed result: one file as is, or reassembled from QR frame texts (one frame a line).

    The console's import (strongroom/console/bundles.py) reads uploads and scanned frames with
    this same rule. A ValueError says why the input is neither; ``qr.join`` raises SignerError.
    """
    if not blobs:
        raise ValueError("give one signed file, or the text files of its QR frames")
    if not blobs[0].lstrip().startswith(qr.FRAME_PREFIX.encode()):
        if len(blobs) != 1:
            raise ValueError("give one signed file, or the text files of its QR frames")
        return blobs[0]
    try:
        lines = [line for b in blobs for line in b.decode("ascii").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise ValueError("QR frame text must be ASCII") from None
    return qr.join(lines)


def _read_signed(files: tuple[Path, ...]) -> bytes:
    """Return the signed result from one file, or reassembled from QR frame files (one frame a line)."""
    try:
        return signed_payload([f.read_bytes() for f in files])
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def register(main: click.Group) -> None:
    """Add the ``bundle`` command group to ``main``."""

    @main.group("bundle")
    def bundle() -> None:
        """Cold transfers: bundles for the offline signer and their signed results."""

    @bundle.command("key")
    def key() -> None:
        """Print the platform's bundle key as the signer's anchors.json lists it (platform_keys)."""
        _guard(lambda: click.echo(json.dumps(cold_transfers_from_env().platform_key().to_json(), indent=2)))

    @bundle.command("anchors")
    def anchors() -> None:
        """Print what the signer's anchors.json needs: platform key, cold wallets (networks), fee caps."""
        _guard(lambda: click.echo(json.dumps(cold_transfers_from_env().anchors(), indent=2)))

    @bundle.command("export")
    @click.argument("request_id")
    @click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
    @click.option(
        "--kind",
        type=click.Choice(["withdrawal", "refill"]),
        default=None,
        help="Request kind (default: refill for ids starting with 'refill:', else withdrawal).",
    )
    @click.option(
        "--qr-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="Also write QR frames (frame-NNN.txt) to this directory.",
    )
    @click.option("--png", is_flag=True, help="With --qr-dir: also render frame-NNN.png.")
    @click.option("--ttl-hours", type=click.IntRange(1, 720), default=24, show_default=True)
    def export(
        request_id: str, file: Path, kind: str | None, qr_dir: Path | None, png: bool, ttl_hours: int
    ) -> None:
        """Write the unsigned bundle of an approved cold withdrawal or refill to FILE."""

        def run() -> None:
            exported = cold_transfers_from_env(ttl_hours).export(_kind(request_id, kind), request_id)
            if file.exists() and file.read_bytes() != exported.data:
                raise click.ClickException(f"{file} exists with other content; not overwriting it")
            file.write_bytes(exported.data)
            if qr_dir is not None:
                qr_dir.mkdir(parents=True, exist_ok=True)
                for number, frame in enumerate(qr.split(exported.data), start=1):
                    (qr_dir / f"frame-{number:03d}.txt").write_text(frame + "\n", encoding="ascii")
                    if png:
                        qr.render_png(frame, qr_dir / f"frame-{number:03d}.png")
            click.echo(json.dumps(exported.view.to_json(), indent=2))

        _guard(run)

    @bundle.command("import")
    @click.argument(
        "files", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False)
    )
    def import_(files: tuple[Path, ...]) -> None:
        """Import a signed result (or its QR frames), check it against the bundle, and broadcast it."""
        _guard(
            lambda: click.echo(
                json.dumps(cold_transfers_from_env().import_signed(_read_signed(files)).to_json(), indent=2)
            )
        )

    @bundle.command("tick")
    def tick() -> None:
        """Broadcast signed bundles, follow confirmations, settle the ledger and close the requests."""
        _guard(
            lambda: click.echo(json.dumps([v.to_json() for v in cold_transfers_from_env().tick()], indent=2))
        )

    @bundle.command("list")
    @click.option("--state", default=None, help="Only bundles in this state.")
    @click.option("--limit", type=click.IntRange(1, 500), default=100, show_default=True)
    def list_(state: str | None, limit: int) -> None:
        """List bundles, newest first."""
        _guard(
            lambda: click.echo(
                json.dumps(
                    [v.to_json() for v in cold_transfers_from_env().recent(state=state, limit=limit)],
                    indent=2,
                )
            )
        )
