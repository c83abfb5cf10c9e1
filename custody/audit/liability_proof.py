"""Verify one user's liability proof offline (pure): leaf, path, root, signed snapshot, pins.

What a user compares (docs/proof-of-reserves.md): the proof must lead from the
user's own leaf (their id, balance and the salt they were given) to the root
published in a snapshot signed by a pinned key; and that snapshot must be the
one everybody else sees. For the second, the user pins the snapshot's hash
(published by the operator and confirmed by auditors, whose ``verify`` prints
it) and/or the hash of the signed checkpoint the snapshot is bound to: a
different tree served to this user has a different root, hence a different
snapshot hash, and cannot name the same signed checkpoint without a second,
forked snapshot chain that an auditor's state file rejects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from custody.audit.liabilities import (
    LIABILITY_PROOF_FORMAT,
    LIABILITY_PROOF_VERSION,
    U256_MAX,
    SumNode,
    liability_leaf,
    root_from_proof,
)
from custody.audit.merkle import MAX_PROOF_HASHES
from custody.audit.snapshots import Snapshot
from custody.audit.untrusted import FormatError, printable

HEX64 = re.compile(r"^[0-9a-f]{64}$")
DIGITS = re.compile(r"^(0|[1-9][0-9]{0,77})$")
PROOF_KEYS = frozenset({
    "format", "version", "asset", "user_id", "salt", "balance", "leaf_index", "tree_size", "path",
    "root", "snapshot", "public_key",
})
MAX_TREE_SIZE = 2**63


@dataclass
class LiabilityCheck:
    """The outcome of verifying one user's liability proof."""

    ok: bool
    problems: list[str]
    asset: str = ""
    user_id: str = ""
    balance: int = 0
    total: int = 0
    key_pinned: bool = False
    snapshot_hash: str = ""
    checkpoint: str = ""
    notes: list[str] = field(default_factory=list)
    unusable: bool = False


@dataclass(frozen=True, slots=True)
class _Proof:
    asset: str
    user_id: str
    salt: bytes
    balance: int
    index: int
    size: int
    path: list[SumNode]
    root: SumNode
    snapshot: Snapshot
    public_key: bytes | None


def verify_liability_proof(
    proof: object,
    pinned_public_key: bytes | None = None,
    *,
    pinned_snapshot_hash: str | None = None,
    pinned_checkpoint: str | None = None,
    pinned_root: str | None = None,
) -> LiabilityCheck:
    """Check a liability proof document; every problem is a message, never an exception."""
    try:
        parsed = _parse(proof)
    except FormatError as exc:
        return LiabilityCheck(False, [f"malformed proof: {exc}"], unusable=True)
    problems: list[str] = []
    recomputed = root_from_proof(liability_leaf(parsed.salt, parsed.user_id, parsed.balance),
                                 parsed.index, parsed.size, parsed.path)
    if recomputed is None or recomputed != parsed.root:
        problems.append("the path from the user's leaf does not lead to the proof's root")
    published = parsed.snapshot.liabilities.get(parsed.asset)
    if published is None or published[:3] != (parsed.root.hash.hex(), parsed.root.total, parsed.size):
        problems.append("the root, total or leaf count differ from the ones the snapshot publishes "
                        "for this asset")
    key = pinned_public_key if pinned_public_key is not None else parsed.public_key
    if key is None or not parsed.snapshot.verify_signature(key):
        problems.append("the snapshot signature does not verify")
    digest = parsed.snapshot.hash()
    notes = []
    if pinned_snapshot_hash is not None and pinned_snapshot_hash.lower() != digest:
        problems.append(f"the snapshot's hash is {digest}, not the pinned {pinned_snapshot_hash[:64]}: "
                        "this user is being shown a different snapshot")
    if pinned_checkpoint is not None and pinned_checkpoint.lower() != parsed.snapshot.checkpoint:
        problems.append(f"the snapshot is bound to checkpoint {parsed.snapshot.checkpoint}, not the "
                        f"pinned {pinned_checkpoint[:64]}")
    if pinned_root is not None and pinned_root.lower() != parsed.root.hash.hex():
        problems.append(f"the {parsed.asset[:20]} root is {parsed.root.hash.hex()}, not the pinned "
                        f"{pinned_root[:64]}: this user is being shown a different tree")
    if pinned_snapshot_hash is None and pinned_checkpoint is None and pinned_root is None:
        notes.append("no snapshot hash or checkpoint pinned: compare the snapshot hash above with "
                     "the published one to rule out a tree made for you alone")
    return LiabilityCheck(not problems, problems, parsed.asset, parsed.user_id, parsed.balance,
                          parsed.root.total, pinned_public_key is not None, digest,
                          parsed.snapshot.checkpoint, notes)


def _parse(proof: object) -> _Proof:
    if not isinstance(proof, dict) or set(proof) != PROOF_KEYS:
        raise FormatError(f"a liability proof must be an object with exactly {sorted(PROOF_KEYS)}")
    if proof["format"] != LIABILITY_PROOF_FORMAT or proof["version"] != LIABILITY_PROOF_VERSION:
        raise FormatError(f"format must be {LIABILITY_PROOF_FORMAT!r} version {LIABILITY_PROOF_VERSION}")
    asset, user_id, salt = proof["asset"], proof["user_id"], proof["salt"]
    if not (isinstance(asset, str) and isinstance(user_id, str) and isinstance(salt, str)):
        raise FormatError("asset, user_id and salt must be strings")
    if not HEX64.match(salt):
        raise FormatError("salt must be 64 lowercase hex digits")
    try:
        user_id.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"user_id {printable(user_id[:60])!r} is not valid Unicode") from None
    balance = proof["balance"]
    if not isinstance(balance, str) or not DIGITS.match(balance) or int(balance) > U256_MAX:
        raise FormatError("balance must be a decimal string 0..2^256-1")
    index, size = proof["leaf_index"], proof["tree_size"]
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (index, size)) or not (
            0 <= index < size <= MAX_TREE_SIZE):
        raise FormatError("leaf_index and tree_size must be integers with 0 <= leaf_index < tree_size")
    path_items = proof["path"]
    if not isinstance(path_items, list) or len(path_items) > MAX_PROOF_HASHES:
        raise FormatError(f"path must be a list of at most {MAX_PROOF_HASHES} nodes")
    try:
        path = [SumNode.from_dict(item) for item in path_items]
        root = SumNode.from_dict(proof["root"])
    except ValueError as exc:
        raise FormatError(str(exc)) from None
    raw_key = proof["public_key"]
    if raw_key is not None and (not isinstance(raw_key, str) or not HEX64.match(raw_key)):
        raise FormatError("public_key must be null or 64 lowercase hex digits")
    snapshot = Snapshot.from_dict(proof["snapshot"])
    return _Proof(asset, user_id, bytes.fromhex(salt), int(balance), index, size, path, root,
                  snapshot, None if raw_key is None else bytes.fromhex(raw_key))


def key_for(proof: object, keys: Mapping[tuple[str, int], object]) -> object | None:
    """Return the pinned key entry for the proof's snapshot signer, or None."""
    snapshot = proof.get("snapshot") if isinstance(proof, dict) else None
    if not isinstance(snapshot, dict):
        return None
    name, version = snapshot.get("key_name"), snapshot.get("key_version")
    if not isinstance(name, str) or isinstance(version, bool) or not isinstance(version, int):
        return None
    return keys.get((name, version))
