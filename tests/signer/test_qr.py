"""QR frames: split, reassemble in any order, refuse anything incomplete or altered."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from signer import qr
from signer.results import SignerCode, SignerError

from .helpers import World

PAYLOAD = World().btc_bundle().to_bytes()


def _code(frames: list[str]) -> SignerCode:
    with pytest.raises(SignerError) as error:
        qr.join(frames)
    return error.value.code


def test_frames_reassemble_in_any_order() -> None:
    frames = qr.split(PAYLOAD, 500)
    assert len(frames) == -(-len(PAYLOAD) // 500)
    shuffled = frames[:]
    random.Random(7).shuffle(shuffled)
    assert qr.join(shuffled) == PAYLOAD


def test_missing_duplicate_corrupt_and_foreign_frames_refused() -> None:
    frames = qr.split(PAYLOAD, 500)
    assert _code(frames[1:]) is SignerCode.QR_FRAME_MISSING
    assert _code([*frames, frames[0]]) is SignerCode.QR_FRAME_DUPLICATE
    last = frames[-1]
    flipped = last[:-3] + ("A" if last[-3] != "A" else "B") + last[-2:]
    assert _code([*frames[:-1], flipped]) is SignerCode.QR_FRAME_CORRUPT
    assert _code(["hello", *frames]) is SignerCode.QR_FRAME_CORRUPT
    foreign = qr.split(PAYLOAD + b" ", 500)
    assert _code([*frames[:-1], foreign[-1]]) is SignerCode.QR_SET_MISMATCH
    assert _code([]) is SignerCode.QR_FRAME_MISSING


def test_reassembled_payload_checked_against_its_digest() -> None:
    # Frames that are each self-consistent but claim another payload's digest.
    frames = qr.split(b"abcdef", 3)
    digest = frames[0].split(":")[2]
    forged = qr.split(b"abcxyz", 3)
    rebuilt = [qr._frame(i + 1, 2, digest, chunk) for i, chunk in enumerate([b"abc", b"xyz"])]
    assert forged != rebuilt
    assert _code(rebuilt) is SignerCode.QR_PAYLOAD_CORRUPT


def test_frames_render_as_png_and_terminal_text(tmp_path: Path) -> None:
    frame = qr.split(PAYLOAD, 800)[0]
    qr.render_png(frame, tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "█" in qr.render_terminal(frame)
