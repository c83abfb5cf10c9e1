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
from collections.abc import Sequence
from dataclasses import dataclass

from custody.audit.merkle import SubtreeCache, fold_inclusion_path

LIABILITY_PROOF_FORMAT = "strongroom.liability-proof"
LIABILITY_PROOF_VERSION = 2
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
