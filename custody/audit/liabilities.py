"""Proof of liabilities: a Merkle-sum tree over user balances per asset (pure).

Leaf: ``SHA-256(0x00 || salt || u256be(balance) || utf8(user_id))`` with sum
``balance``. Node: ``SHA-256(0x01 || left.hash || u256be(left.sum) || right.hash
|| u256be(right.sum))`` with sum ``left.sum + right.sum``. The tree has the
RFC 6962 shape. Sums are unsigned 256-bit integers, and every node hash commits
to both child sums, so a verifier that recomputes each parent sum from the
proof can neither meet a negative sibling nor one whose sum disagrees with what
the root commits to (docs/proof-of-reserves.md explains why that matters).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from custody.audit.merkle import SubtreeCache, fold_inclusion_path
from custody.ledger.entry import canonical_json

LIABILITY_PROOF_FORMAT = "strongroom.liability-proof"
SNAPSHOT_FORMAT_VERSION = 1
SNAPSHOT_SIGNING_DOMAIN = b"strongroom.reserves.snapshot.v1\x00"
SALT_BYTES = 32
SUM_BYTES = 32
U256_MAX = 2**256 - 1
HEX64 = re.compile(r"^[0-9a-f]{64}$")
DIGITS = re.compile(r"^(0|[1-9][0-9]{0,77})$")


@dataclass(frozen=True, slots=True)
class SumNode:
    """A node of a Merkle-sum tree: its hash and the sum of the balances below it."""

    hash: bytes
    total: int

    def to_dict(self) -> dict[str, str]:
        """Return the JSON form (hash as hex, sum as a decimal string)."""
        return {"hash": self.hash.hex(), "sum": str(self.total)}

    @classmethod
    def from_dict(cls, data: object) -> SumNode:
        """Parse ``{"hash", "sum"}``; a sum outside 0..2**256-1 cannot be expressed."""
        if not isinstance(data, dict) or set(data) != {"hash", "sum"}:
            raise ValueError("a sum node must have exactly hash and sum")
        digest, total = data["hash"], data["sum"]
        if not isinstance(digest, str) or not HEX64.match(digest):
            raise ValueError("a sum node hash must be 64 lowercase hex digits")
        if not isinstance(total, str) or not DIGITS.match(total) or int(total) > U256_MAX:
            raise ValueError(f"a sum node sum was {total!r}, must be a decimal string 0..2**256-1")
        return cls(bytes.fromhex(digest), int(total))


def liability_leaf(salt: bytes, user_id: str, balance: int) -> SumNode:
    """Return the leaf committing to one user's balance under a per-snapshot salt."""
    assert len(salt) == SALT_BYTES, f"salt was {len(salt)} bytes, must be {SALT_BYTES}"
    assert 0 <= balance <= U256_MAX, f"balance was {balance}, must be 0..2**256-1"
    data = b"\x00" + salt + balance.to_bytes(SUM_BYTES, "big") + user_id.encode("utf-8")
    return SumNode(hashlib.sha256(data).digest(), balance)


def sum_node(left: SumNode, right: SumNode) -> SumNode:
    """Combine two children; the parent's sum is computed here, never taken on trust."""
    total = left.total + right.total
    if total > U256_MAX:
        raise OverflowError(f"sum {total} exceeds 2**256-1")
    data = (b"\x01" + left.hash + left.total.to_bytes(SUM_BYTES, "big") + right.hash
            + right.total.to_bytes(SUM_BYTES, "big"))
    return SumNode(hashlib.sha256(data).digest(), total)


class SumTree(SubtreeCache[SumNode]):
    """A Merkle-sum tree over liability leaves, in the RFC 6962 shape."""

    def __init__(self, leaves: Sequence[SumNode]) -> None:
        assert leaves, "a liabilities tree needs at least one leaf"
        super().__init__(sum_node, leaves)

    def root(self) -> SumNode:
        """Return the root: its hash and the total liabilities."""
        return self.subtree(0, self.size)

    def proof(self, index: int) -> list[SumNode]:
        """Return the siblings from leaf ``index`` up to the root."""
        if not 0 <= index < self.size:
            raise ValueError(f"leaf index was {index}, must be 0..{self.size - 1}")
        return self.path(index, 0, self.size)


def root_from_proof(leaf: SumNode, index: int, size: int, path: Sequence[SumNode]) -> SumNode | None:
    """Recompute the root from a leaf and its siblings; None if the path is malformed."""
    try:
        return fold_inclusion_path(leaf, index, size, path, sum_node)
    except OverflowError:
        return None


def snapshot_signing_message(body: Mapping[str, object]) -> bytes:
    """Return the domain-separated bytes signed for a snapshot body (every field but the signature)."""
    return SNAPSHOT_SIGNING_DOMAIN + canonical_json(dict(body))


def snapshot_body(snapshot: Mapping[str, object]) -> dict[str, object]:
    """Return the signed part of a snapshot record."""
    return {k: v for k, v in snapshot.items() if k != "signature"}


@dataclass(frozen=True, slots=True)
class LiabilityCheck:
    """The outcome of verifying one user's liability proof."""

    ok: bool
    problems: list[str]
    asset: str
    user_id: str
    balance: int
    total: int
    key_pinned: bool


def verify_liability_proof(
    proof: Mapping[str, object], pinned_public_key: bytes | None = None
) -> LiabilityCheck:
    """Check a liability proof document: leaf, path, root, and the snapshot's signature."""
    problems: list[str] = []
    try:
        asset, user_id, salt, balance, index, size, path, root = _parse_proof(proof)
    except (ValueError, KeyError, TypeError) as exc:
        return LiabilityCheck(False, [f"malformed proof: {exc}"], "", "", 0, 0, False)
    recomputed = root_from_proof(liability_leaf(salt, user_id, balance), index, size, path)
    if recomputed is None or recomputed != root:
        problems.append(f"the path from {user_id}'s leaf does not lead to the {asset} root")
    snapshot = proof["snapshot"]
    assert isinstance(snapshot, dict)
    published = snapshot.get("liabilities", {}).get(asset)
    if not isinstance(published, dict) or published.get("root") != root.hash.hex() or (
            published.get("total") != str(root.total) or published.get("leaves") != size):
        problems.append(f"the {asset} root, total or size differ from the snapshot's published ones")
    key = pinned_public_key if pinned_public_key is not None else _embedded_key(proof)
    signature_ok = _snapshot_signature_ok(snapshot, key)
    if not signature_ok:
        problems.append("the snapshot signature does not verify")
    return LiabilityCheck(not problems, problems, asset, user_id, balance, root.total,
                          pinned_public_key is not None)


def _parse_proof(
    proof: Mapping[str, object],
) -> tuple[str, str, bytes, int, int, int, list[SumNode], SumNode]:
    if proof.get("format") != LIABILITY_PROOF_FORMAT or proof.get("version") != 1:
        raise ValueError(f"format must be {LIABILITY_PROOF_FORMAT!r} version 1")
    asset, user_id, salt = proof["asset"], proof["user_id"], proof["salt"]
    balance, index, size = proof["balance"], proof["leaf_index"], proof["tree_size"]
    if not (isinstance(asset, str) and isinstance(user_id, str) and isinstance(salt, str)):
        raise ValueError("asset, user_id and salt must be strings")
    if not HEX64.match(salt):
        raise ValueError("salt must be 64 lowercase hex digits")
    if not isinstance(balance, str) or not DIGITS.match(balance) or int(balance) > U256_MAX:
        raise ValueError("balance must be a decimal string 0..2**256-1")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (index, size)):
        raise ValueError("leaf_index and tree_size must be integers")
    path_items = proof["path"]
    if not isinstance(path_items, list) or not isinstance(proof.get("snapshot"), dict):
        raise ValueError("path must be a list and snapshot an object")
    path = [SumNode.from_dict(item) for item in path_items]
    return (asset, user_id, bytes.fromhex(salt), int(balance), index, size, path,  # type: ignore[return-value]
            SumNode.from_dict(proof["root"]))


def _embedded_key(proof: Mapping[str, object]) -> bytes | None:
    raw = proof.get("public_key")
    return bytes.fromhex(raw) if isinstance(raw, str) and HEX64.match(raw) else None


def _snapshot_signature_ok(snapshot: Mapping[str, object], public_key: bytes | None) -> bool:
    signature = snapshot.get("signature")
    if public_key is None or not isinstance(signature, str) or len(signature) != 128:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            bytes.fromhex(signature), snapshot_signing_message(snapshot_body(snapshot)))
    except (InvalidSignature, ValueError):
        return False
    return True
