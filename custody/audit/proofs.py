"""Inclusion and consistency proof documents: built by the API and the offline tool, verified offline.

The JSON shapes are specified in docs/ledger-export.md ("Proofs"). A proof may
carry the signed checkpoint whose root it proves against; the verifier then
also checks that the checkpoint is signed by a pinned key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from custody.audit.checkpoint import Checkpoint
from custody.audit.export import PublicKey
from custody.audit.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from custody.ledger.entry import Entry

INCLUSION_FORMAT = "strongroom.inclusion-proof"
CONSISTENCY_FORMAT = "strongroom.consistency-proof"
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def inclusion_document(
    tree: MerkleTree, entry_bytes: bytes, seq: int, tree_size: int, checkpoint: Checkpoint | None
) -> dict[str, object]:
    """Return the proof that entry ``seq`` is leaf ``seq - 1`` of the tree of ``tree_size`` entries."""
    return {
        "format": INCLUSION_FORMAT, "version": 1, "seq": seq, "leaf_index": seq - 1,
        "tree_size": tree_size, "entry": entry_bytes.decode("ascii"),
        "leaf_hash": leaf_hash(entry_bytes).hex(),
        "path": [h.hex() for h in tree.inclusion_proof(seq - 1, tree_size)],
        "root": tree.root(tree_size).hex(),
        "checkpoint": None if checkpoint is None else checkpoint.to_dict(),
    }


def consistency_document(
    tree: MerkleTree, first_size: int, second_size: int,
    first: Checkpoint | None = None, second: Checkpoint | None = None,
) -> dict[str, object]:
    """Return the proof that the tree of ``second_size`` entries extends the first ``first_size``."""
    return {
        "format": CONSISTENCY_FORMAT, "version": 1, "first_size": first_size,
        "second_size": second_size, "first_root": tree.root(first_size).hex(),
        "second_root": tree.root(second_size).hex(),
        "path": [h.hex() for h in tree.consistency_proof(first_size, second_size)],
        "first_checkpoint": None if first is None else first.to_dict(),
        "second_checkpoint": None if second is None else second.to_dict(),
    }


@dataclass
class ProofCheck:
    """The outcome of verifying a proof document."""

    kind: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Return True if the proof verifies."""
        return not self.problems


def verify_document(
    doc: Mapping[str, object], keys: Mapping[tuple[str, int], PublicKey] | None
) -> ProofCheck:
    """Verify an inclusion or consistency proof document; checkpoints are checked against ``keys``."""
    kind = doc.get("format")
    if doc.get("version") != 1 or kind not in (INCLUSION_FORMAT, CONSISTENCY_FORMAT):
        return ProofCheck(str(kind), [f"unknown proof format {kind!r} or version"])
    check = ProofCheck(str(kind))
    try:
        if kind == INCLUSION_FORMAT:
            _verify_inclusion(doc, keys, check)
        else:
            _verify_consistency(doc, keys, check)
    except (KeyError, TypeError, ValueError) as exc:
        check.problems.append(f"malformed proof: {exc}")
    return check


def _hashes(value: object) -> list[bytes]:
    if not isinstance(value, list) or not all(isinstance(h, str) and HEX64.match(h) for h in value):
        raise ValueError("path must be a list of 64-hex-digit hashes")
    return [bytes.fromhex(h) for h in value]


def _hash(value: object, name: str) -> bytes:
    if not isinstance(value, str) or not HEX64.match(value):
        raise ValueError(f"{name} must be 64 lowercase hex digits")
    return bytes.fromhex(value)


def _int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer")
    return value


def _verify_inclusion(
    doc: Mapping[str, object], keys: Mapping[tuple[str, int], PublicKey] | None, check: ProofCheck
) -> None:
    raw = doc["entry"]
    if not isinstance(raw, str):
        raise ValueError("entry must be the canonical entry as a string")
    entry = Entry.from_bytes(raw.encode("ascii"))
    seq, index, size = _int(doc["seq"], "seq"), _int(doc["leaf_index"], "leaf_index"), _int(
        doc["tree_size"], "tree_size")
    root = _hash(doc["root"], "root")
    if entry.seq != seq or index != seq - 1:
        check.problems.append(f"entry seq {entry.seq} is not leaf {index} (leaf index is seq - 1)")
    hashed = leaf_hash(raw.encode("ascii"))
    if hashed != _hash(doc["leaf_hash"], "leaf_hash"):
        check.problems.append("leaf_hash is not the hash of the entry")
    if not verify_inclusion(hashed, index, size, _hashes(doc["path"]), root):
        check.problems.append(f"the audit path does not lead from entry seq {seq} to the root of "
                              f"tree size {size}")
    _check_checkpoint(doc.get("checkpoint"), size, root, keys, check)


def _verify_consistency(
    doc: Mapping[str, object], keys: Mapping[tuple[str, int], PublicKey] | None, check: ProofCheck
) -> None:
    first, second = _int(doc["first_size"], "first_size"), _int(doc["second_size"], "second_size")
    first_root, second_root = _hash(doc["first_root"], "first_root"), _hash(doc["second_root"],
                                                                              "second_root")
    if not verify_consistency(first, second, first_root, second_root, _hashes(doc["path"])):
        check.problems.append(f"the proof does not show tree size {second} extends tree size {first}")
    _check_checkpoint(doc.get("first_checkpoint"), first, first_root, keys, check)
    _check_checkpoint(doc.get("second_checkpoint"), second, second_root, keys, check)


def _check_checkpoint(
    data: object, size: int, root: bytes, keys: Mapping[tuple[str, int], PublicKey] | None,
    check: ProofCheck,
) -> None:
    if data is None:
        check.notes.append(f"no checkpoint attached: compare root {root.hex()[:16]}... of tree size "
                           f"{size} with a signed checkpoint yourself")
        return
    checkpoint = Checkpoint.from_dict(data)
    if checkpoint.tree_size != size or checkpoint.root != root.hex():
        check.problems.append(f"checkpoint {checkpoint.number} is for tree size {checkpoint.tree_size} "
                              f"root {checkpoint.root[:16]}..., not the proof's")
    if keys is None:
        check.notes.append(f"checkpoint {checkpoint.number}: signature not checked (no --keys given)")
        return
    key = keys.get((checkpoint.key_name, checkpoint.key_version))
    if key is None:
        check.problems.append(f"checkpoint {checkpoint.number}: signed by unknown key "
                              f"{checkpoint.key_name!r} v{checkpoint.key_version}")
    elif not checkpoint.verify_signature(key.public_key):
        check.problems.append(f"checkpoint {checkpoint.number}: signature does not verify")
