"""QR transport: split a file into numbered frames that reassemble with integrity checks.

Frame text: `SRQR1:<index>/<total>:<sha256 of whole payload>:<frame check>:<base64url data>`.
`index` counts from 1; the frame check is the first 8 hex digits of the
SHA-256 of everything before it plus the data, so a misread frame is
rejected on its own; the payload hash ties frames to one file and is checked
again after reassembly. `join` rejects corrupt, missing, duplicate and
foreign frames, each with its own code.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
from collections.abc import Iterable
from pathlib import Path

import qrcode  # type: ignore[import-untyped, unused-ignore]

from signer.results import SignerCode, SignerError

FRAME_PREFIX = "SRQR1"
DEFAULT_CHUNK_BYTES = 800
MAX_CHUNK_BYTES = 2000
MAX_FRAMES = 999
_FRAME = re.compile(
    r"SRQR1:([1-9][0-9]{0,2})/([1-9][0-9]{0,2}):([0-9a-f]{64}):([0-9a-f]{8}):([A-Za-z0-9_=-]*)"
)


def split(payload: bytes, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[str]:
    """Return the frames of `payload`, in order."""
    if not 1 <= chunk_bytes <= MAX_CHUNK_BYTES:
        raise ValueError(f"chunk_bytes was {chunk_bytes}, must be 1..{MAX_CHUNK_BYTES}")
    chunks = [payload[i : i + chunk_bytes] for i in range(0, len(payload), chunk_bytes)] or [b""]
    if len(chunks) > MAX_FRAMES:
        raise ValueError(f"{len(payload)} bytes need {len(chunks)} frames, at most {MAX_FRAMES}")
    digest = hashlib.sha256(payload).hexdigest()
    return [_frame(i + 1, len(chunks), digest, chunk) for i, chunk in enumerate(chunks)]


def _frame(index: int, total: int, digest: str, chunk: bytes) -> str:
    head = f"{FRAME_PREFIX}:{index}/{total}:{digest}"
    data = base64.urlsafe_b64encode(chunk).decode("ascii")
    return f"{head}:{_check(head, data)}:{data}"


def _check(head: str, data: str) -> str:
    return hashlib.sha256(f"{head}:{data}".encode("ascii")).hexdigest()[:8]


def join(frames: Iterable[str]) -> bytes:
    """Reassemble frames in any order; raise `SignerError` (709x) unless they form exactly one payload."""
    parts: dict[int, bytes] = {}
    expected: tuple[int, str] | None = None
    for number, text in enumerate(frames):
        index, total, digest, chunk = _parse_frame(text.strip(), number)
        if expected is None:
            expected = (total, digest)
        elif (total, digest) != expected:
            raise SignerError(
                SignerCode.QR_SET_MISMATCH, f"frame {index}/{total} belongs to a different file"
            )
        if index in parts:
            raise SignerError(SignerCode.QR_FRAME_DUPLICATE, f"frame {index}/{total} was given twice")
        parts[index] = chunk
    if expected is None:
        raise SignerError(SignerCode.QR_FRAME_MISSING, "no frames given")
    total, digest = expected
    missing = [i for i in range(1, total + 1) if i not in parts]
    if missing:
        raise SignerError(SignerCode.QR_FRAME_MISSING, f"frames {missing} of {total} are missing")
    payload = b"".join(parts[i] for i in range(1, total + 1))
    if hashlib.sha256(payload).hexdigest() != digest:
        raise SignerError(SignerCode.QR_PAYLOAD_CORRUPT, "reassembled data does not match its SHA-256")
    return payload


def _parse_frame(text: str, number: int) -> tuple[int, int, str, bytes]:
    match = _FRAME.fullmatch(text)
    if match is None:
        raise SignerError(SignerCode.QR_FRAME_CORRUPT, f"frame #{number + 1} is not a {FRAME_PREFIX} frame")
    index, total, digest, check, data = int(match[1]), int(match[2]), match[3], match[4], match[5]
    if _check(f"{FRAME_PREFIX}:{index}/{total}:{digest}", data) != check or index > total:
        raise SignerError(
            SignerCode.QR_FRAME_CORRUPT, f"frame #{number + 1} ({index}/{total}) fails its check"
        )
    try:
        chunk = base64.urlsafe_b64decode(data.encode("ascii"))
    except (binascii.Error, ValueError) as exc:
        raise SignerError(SignerCode.QR_FRAME_CORRUPT, f"frame {index}/{total} data is not base64") from exc
    return index, total, digest, chunk


def render_png(frame: str, path: Path) -> None:
    """Write `frame` as a QR code PNG (pure-Python PyPNG backend; no Pillow needed)."""
    from qrcode.image.pure import PyPNGImage  # type: ignore[import-untyped, unused-ignore]

    image = qrcode.make(frame, image_factory=PyPNGImage, error_correction=qrcode.constants.ERROR_CORRECT_M)
    with path.open("wb") as handle:
        image.save(handle)


def render_terminal(frame: str) -> str:
    """Return `frame` as a QR code drawn with text characters, for a terminal."""
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=2)
    code.add_data(frame)
    code.make(fit=True)
    out = io.StringIO()
    code.print_ascii(out=out, invert=True)
    return out.getvalue()
