"""The documented examples parse, verify, and match what the code produces."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from signer.anchors import TrustAnchors
from signer.bundle import Bundle
from signer.canonical import canonical_bytes
from signer.cli import CliEnvironment, main
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


def _output(doc: str, name: str) -> str:
    text = (DOCS / doc).read_text()
    match = re.search(rf"<!-- output: {name} -->\n```\n(.*?)\n```", text, re.S)
    assert match is not None, f"{doc} has no output {name}"
    return match.group(1)


def test_bundle_format_worked_examples_parse_and_verify() -> None:
    digests = re.findall(r"^sha256 ([0-9a-f]{64})$", (DOCS / "bundle-format.md").read_text(), re.M)
    anchors = TrustAnchors.from_bytes(_example("signer.md", "anchors").encode())
    for name, digest in zip(("bundle", "bitcoin-bundle"), digests, strict=True):
        canonical = canonical_bytes(json.loads(_example("bundle-format.md", name)))
        bundle = Bundle.from_bytes(canonical)
        assert bundle.digest == digest
        assert bundle.to_json()["version"] == 2
        verification = verify_bundle(bundle, anchors, NOW_MS, History())
        assert verification.refusals == ()


def test_worked_examples_are_what_the_code_builds() -> None:
    world = World()
    assert (
        canonical_bytes(json.loads(_example("bundle-format.md", "bundle"))) == world.eth_bundle().to_bytes()
    )
    bitcoin = canonical_bytes(json.loads(_example("bundle-format.md", "bitcoin-bundle")))
    assert bitcoin == world.btc_bundle().to_bytes()
    assert json.loads(_example("signer.md", "anchors")) == json.loads(json.dumps(world.anchors_json()))


def test_worked_example_inspect_output_is_what_the_cli_prints(tmp_path: Path) -> None:
    world = World()
    home = world.write_home(tmp_path / "signer")
    for name, bundle in (("inspect-eth", world.eth_bundle()), ("inspect-btc", world.btc_bundle())):
        path = tmp_path / f"{name}.json"
        path.write_bytes(bundle.to_bytes())
        out = io.StringIO()
        env = CliEnvironment(stdout=out, now_ms=lambda: NOW_MS, interfaces=lambda: [])
        assert main(["--home", str(home), "inspect", str(path)], env) == 0
        assert out.getvalue().rstrip("\n") == _output("bundle-format.md", name)


def test_every_refusal_code_is_documented_in_a_7xxx_block() -> None:
    assert all(7000 <= code < 8000 for code in SignerCode)
    signer_doc = (DOCS / "signer.md").read_text() + (DOCS / "bundle-format.md").read_text()
    for code in (7002, 7003, 7011, 7012, 7030, 7031, 7063, 7080):
        assert str(code) in signer_doc
