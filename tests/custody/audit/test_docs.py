"""The worked examples in docs/ledger-format.md, ledger-export.md and proof-of-reserves.md hold."""

from __future__ import annotations

import json
import re
from pathlib import Path

from custody.audit.checkpoint import Checkpoint
from custody.audit.export import parse_keys
from custody.audit.liability_proof import verify_liability_proof
from custody.audit.merkle import MerkleTree, leaf_hash
from custody.audit.proofs import verify_document
from custody.audit.snapshots import Snapshot
from custody.audit.verify import verify_export
from custody.ledger.entry import GENESIS_HASH, Entry, TransferKind, chain_hash

DOCS = Path(__file__).resolve().parents[3] / "docs"
EXAMPLE = re.compile(r"<!-- example: (?P<name>[\w.-]+) -->\n```\w*\n(?P<body>.*?)\n```", re.S)
EXPORT_FILES = ("manifest.json", "entries.jsonl", "checkpoints.jsonl", "accounts.jsonl", "keys.json",
                "snapshots.jsonl", "liabilities.jsonl")


def examples(name: str) -> dict[str, str]:
    return {m["name"]: m["body"] for m in EXAMPLE.finditer((DOCS / name).read_text())}


def test_ledger_format_example_entries_are_canonical_and_hash_as_documented() -> None:
    found = examples("ledger-format.md")
    raw = found["entry"].encode("ascii")
    assert Entry.from_bytes(raw).to_bytes() == raw
    assert Entry.from_bytes(raw).actor == "service:deposits"
    assert chain_hash(GENESIS_HASH, raw) == found["entry-hash"]
    opening = Entry.from_bytes(found["open-entry"].encode("ascii"))
    assert opening.kind is TransferKind.OPEN and opening.account_flags == 1
    assert opening.to_bytes() == found["open-entry"].encode("ascii")


def test_export_example_chains_roots_and_signature_verify() -> None:
    found = examples("ledger-export.md")
    lines = found["entries.jsonl"].encode("ascii").splitlines()
    prev = GENESIS_HASH
    for line in lines:
        prev = chain_hash(prev, line[65:])
        assert line[:64].decode() == prev
    checkpoint = Checkpoint.from_bytes(found["checkpoints.jsonl"].encode("ascii"))
    assert checkpoint.root == MerkleTree(leaf_hash(line[65:]) for line in lines).root().hex()
    assert checkpoint.head_hash == prev
    assert checkpoint.hash() == found["checkpoint-hash"]
    keys = parse_keys(json.loads(found["keys.json"]))
    assert checkpoint.verify_signature(keys[("ledger-checkpoint", 1)].public_key)
    check = verify_document(json.loads(found["inclusion-proof"]), keys)
    assert check.ok, check.problems
    assert Snapshot.from_bytes(found["snapshots.jsonl"].encode("ascii")).hash() == found["snapshot-hash"]


def test_export_example_is_a_complete_export_that_verifies_strictly(tmp_path: Path) -> None:
    found = examples("ledger-export.md")
    for name in EXPORT_FILES:
        (tmp_path / name).write_text(found[name] + "\n")
    keys = parse_keys(json.loads(found["keys.json"]))
    report = verify_export(tmp_path, keys)
    assert report.ok and not report.warnings, report.render()
    assert report.newest_checkpoint is not None
    assert report.newest_checkpoint.hash() == found["checkpoint-hash"]
    assert report.snapshot_hashes == {1: found["snapshot-hash"]}


def test_proof_of_reserves_example_verifies_against_the_pinned_snapshot() -> None:
    proof = json.loads(examples("proof-of-reserves.md")["liability-proof"])
    export = examples("ledger-export.md")
    keys = parse_keys(json.loads(export["keys.json"]))
    check = verify_liability_proof(proof, keys[("ledger-checkpoint", 1)].public_key,
                                   pinned_snapshot_hash=export["snapshot-hash"],
                                   pinned_checkpoint=export["checkpoint-hash"])
    assert check.ok, check.problems
    assert (check.user_id, check.balance, check.total) == ("bob", 25_000_000, 125_000_000)
