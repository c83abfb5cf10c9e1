"""QR codes of deposit addresses as inline SVG (no script, no image request, CSP-clean)."""

from __future__ import annotations

import qrcode
import qrcode.image.svg
from markupsafe import Markup

MAX_PAYLOAD_CHARS = 256


def qr_svg(payload: str) -> Markup:
    """Return an SVG QR code of ``payload`` (an address: letters and digits, escaped anyway)."""
    assert len(payload) <= MAX_PAYLOAD_CHARS, f"QR payload of {len(payload)} chars"
    image = qrcode.make(payload, image_factory=qrcode.image.svg.SvgPathImage, box_size=8, border=2)
    svg: str = image.to_string(encoding="unicode")
    # qrcode writes only path data from the payload's bits, never the payload text itself.
    return Markup(svg.replace("<svg ", '<svg class="qr" role="img" aria-label="QR code" ', 1))  # noqa: S704
