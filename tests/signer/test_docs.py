"""The documented examples parse, verify, and match what the code produces."""

from __future__ import annotations

import json
import re
from pathlib import Path

from signer.anchors import TrustAnchors
from signer.bundle import Bundle
from signer.canonical import canonical_bytes
from signer.results import SignerCode
from signer.signing_log import History
from signer.verification import verify_bundle

from .helpers import NOW_MS, World

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _example(doc: str, name: str) -> str:
    text = (DOCS / doc).read_text()
    match = re.search(rf"<!-- example: {name} -->\n```json\n(.*?)\n```", text, re.S)
    assert match is not None, f"{doc} has no example {name}"
    return match.group(1)


def test_bundle_format_worked_example_parses_and_verifies() -> None:
    canonical = canonical_bytes(json.loads(_example("bundle-format.md", "bundle")))
    bundle = Bundle.from_bytes(canonical)
    documented_digest = re.search(r"sha256 ([0-9a-f]{64})", (DOCS / "bundle-format.md").read_text())
    assert documented_digest is not None and bundle.digest == documented_digest.group(1)
    anchors = TrustAnchors.from_bytes(_example("signer.md", "anchors").encode())
    verification = verify_bundle(bundle, anchors, NOW_MS, History())
    assert verification.refusals == ()
    assert bundle.body.intent.amount_minor == 5 * 10**18


def test_worked_example_is_what_the_code_builds() -> None:
    canonical = canonical_bytes(json.loads(_example("bundle-format.md", "bundle")))
    assert canonical == World().eth_bundle().to_bytes()
    assert json.loads(_example("signer.md", "anchors")) == json.loads(json.dumps(World().anchors_json()))


def test_every_refusal_code_is_documented_in_a_7xxx_block() -> None:
    assert all(7000 <= code < 8000 for code in SignerCode)
    signer_doc = (DOCS / "signer.md").read_text() + (DOCS / "bundle-format.md").read_text()
    for code in (7002, 7003, 7011, 7012, 7030, 7031, 7063, 7080):
        assert str(code) in signer_doc
