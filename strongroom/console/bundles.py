"""Cold bundles in the browser: export as animated QR frames, import the signed answer.

The same service and checks as ``strongroom bundle export`` / ``import`` (docs/bundles.md):
`custody.bundles.service.ColdTransfers` builds, reserves and records the bundle, and the
frames are `signer.qr.split` of its exact bytes (docs/bundle-format.md), so the signer's
``qr join`` reads them. The signed answer comes back as one uploaded file, uploaded frame
files, or frame lines typed by a QR scanner into a text box; `signed_payload` (the CLI's
own reader) reassembles it and `ColdTransfers.import_signed` checks it exactly as the CLI
import does before anything is stored or broadcast. Both need ``wallet.manage`` and a
fresh TOTP code.
"""

from __future__ import annotations

from typing import Any

import qrcode
import qrcode.image.svg
from flask import current_app
from markupsafe import Markup

from custody.bundles.service import ColdTransfers, Exported
from custody.chains.adapter import ChainError
from custody.keystore import KeystoreError
from custody.ledger.codes import LedgerError
from custody.refusal import CustodyRefusal
from custody.wallets.codes import WalletError
from policies.results import PolicyError
from signer import qr
from signer.results import SignerError
from strongroom.commands.bundles import signed_payload

MAX_IMPORT_BYTES = 512 * 1024
MAX_IMPORT_FILES = qr.MAX_FRAMES
# Frames as the CLI writes them (`--qr-dir`): the signer's `qr join` reads exactly these.
FRAME_CHUNK_BYTES = qr.DEFAULT_CHUNK_BYTES
REFUSALS = (PolicyError, CustodyRefusal, LedgerError, KeystoreError, WalletError, ChainError)


class BundleRefused(Exception):
    """What the console shows for a refused export or import: ``code error: message``."""


def available() -> bool:
    """Tell whether this server has a chain to carry cold transfers on."""
    return bool(current_app.extensions.get("strongroom.chains"))


def service() -> ColdTransfers:
    from strongroom.jobs import cold_transfers

    return cold_transfers(current_app)


def refusal_text(exc: Exception) -> str:
    """Render a refusal as the CLI's JSON line says it: code, error name, message (and signer cause)."""
    if isinstance(exc, SignerError):
        return f"{int(exc.code)} {exc.code.name.lower()}: {exc.refusal.message}"
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", str(exc))
    cause = getattr(exc, "cause", None)
    text = f"{int(code)} {code.name.lower()}: {message}" if code is not None else str(message)
    return text + (f" (signer code {cause})" if cause is not None else "")


def export(kind: str, request_id: str) -> Exported:
    """Export (or export again, same bytes while unexpired) the bundle of an approved cold request."""
    if kind not in ("withdrawal", "refill"):
        raise BundleRefused(f"kind was {kind[:20]!r}, must be withdrawal or refill")
    try:
        return service().export(kind, request_id.strip()[:200])
    except REFUSALS as exc:
        raise BundleRefused(refusal_text(exc)) from None


def import_signed(blobs: list[bytes]) -> dict[str, Any]:
    """Reassemble and import a signed answer exactly as ``strongroom bundle import``; return its view."""
    if len(blobs) > MAX_IMPORT_FILES or sum(len(b) for b in blobs) > MAX_IMPORT_BYTES:
        raise BundleRefused(f"at most {MAX_IMPORT_FILES} files and {MAX_IMPORT_BYTES} bytes in all")
    try:
        data = signed_payload(blobs)
        return service().import_signed(data).to_json()
    except ValueError as exc:
        raise BundleRefused(str(exc)) from None
    except (SignerError, *REFUSALS) as exc:
        raise BundleRefused(refusal_text(exc)) from None


def frames(data: bytes) -> list[dict[str, Any]]:
    """Return the QR frames of ``data``: each frame's text and its QR code as inline SVG."""
    found = []
    for number, text in enumerate(qr.split(data, FRAME_CHUNK_BYTES), start=1):
        image = qrcode.make(text, image_factory=qrcode.image.svg.SvgPathImage, box_size=6, border=4,
                            error_correction=qrcode.constants.ERROR_CORRECT_M)
        svg: str = image.to_string(encoding="unicode")
        # qrcode writes only path data from the frame's bits; the frame text is base64 and hex anyway.
        found.append({"number": number, "text": text, "svg": Markup(svg.replace(  # noqa: S704
            "<svg ", f'<svg class="qr" role="img" aria-label="QR frame {number}" ', 1))})
    return found
