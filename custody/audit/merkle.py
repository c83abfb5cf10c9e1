"""RFC 6962 Merkle trees: hashes, roots, inclusion and consistency proofs (pure).

Leaf hash ``SHA-256(0x00 || leaf)``, node hash ``SHA-256(0x01 || left || right)``,
the tree of ``n`` leaves splits at the largest power of two below ``n`` (RFC 6962
§2.1). Proof verification follows the algorithms of RFC 9162 §2.1.3.2 and
§2.1.4.2, which accept exactly the proofs RFC 6962 §2.1.1 and §2.1.2 produce.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
HASH_SIZE_BYTES = 32
# A proof for a tree of up to 2**64 leaves has at most 64 (inclusion) or 128 hashes.
MAX_PROOF_HASHES = 130
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256
T = TypeVar("T")


def leaf_hash(leaf: bytes) -> bytes:
    """Return the RFC 6962 hash of one leaf."""
    return _sha256(LEAF_PREFIX + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 6962 hash of an interior node."""
    return _sha256(NODE_PREFIX + left + right).digest()


def split_point(n: int) -> int:
    """Return the largest power of two strictly less than ``n`` (``n`` >= 2)."""
    assert n >= 2, f"split of a tree of {n} leaves"
    return 1 << ((n - 1).bit_length() - 1)


class Frontier:
    """The roots of the perfect subtrees covering the leaves so far (O(log n) memory).

    Appending a leaf costs one leaf hash plus, amortised, one node hash; the
    root of the tree so far folds the frontier right to left. This is how the
    verifier and the checkpoint writer compute roots while streaming entries.
    """

    __slots__ = ("_stack", "size")

    def __init__(self, size: int = 0, stack: Sequence[bytes] = ()) -> None:
        assert len(stack) == bin(size).count("1"), "frontier does not match its size"
        self.size = size
        self._stack = list(stack)

    def append_hash(self, hashed_leaf: bytes) -> None:
        """Append a leaf given its leaf hash."""
        stack = self._stack
        stack.append(hashed_leaf)
        self.size += 1
        count = self.size
        while not count & 1:
            right = stack.pop()
            stack[-1] = _sha256(NODE_PREFIX + stack[-1] + right).digest()
            count >>= 1

    def root(self) -> bytes:
        """Return the RFC 6962 root of the leaves appended so far."""
        if not self._stack:
            return EMPTY_ROOT
        root = self._stack[-1]
        for left in reversed(self._stack[:-1]):
            root = _sha256(NODE_PREFIX + left + root).digest()
        return root

    def to_hex(self) -> list[str]:
        """Return the frontier hashes as hex, for persistence."""
        return [h.hex() for h in self._stack]

    @classmethod
    def from_hex(cls, size: int, hashes: Iterable[str]) -> Frontier:
        """Rebuild a frontier persisted with :meth:`to_hex`."""
        return cls(size, [bytes.fromhex(h) for h in hashes])


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return the RFC 6962 root of a list of leaf hashes."""
    frontier = Frontier()
    for hashed in leaf_hashes:
        frontier.append_hash(hashed)
    return frontier.root()


class SubtreeCache(Generic[T]):
    """All perfect aligned subtree values of a growing tree, for proofs in O(log^2 n).

    ``levels[k][i]`` combines leaves ``[i * 2**k, (i + 1) * 2**k)``. Every subtree
    RFC 6962 proofs need is a perfect aligned subtree or splits into one plus a
    smaller right part, so any root or proof of any prefix size is cheap.
    ``combine`` makes a parent from two children (a hash, or a hash with a sum).
    """

    def __init__(self, combine: Callable[[T, T], T], leaves: Iterable[T] = ()) -> None:
        self.combine = combine
        self.levels: list[list[T]] = [[]]
        for leaf in leaves:
            self.append(leaf)

    @property
    def size(self) -> int:
        """Return the number of leaves."""
        return len(self.levels[0])

    def append(self, leaf: T) -> None:
        """Append a leaf value."""
        levels = self.levels
        levels[0].append(leaf)
        level = 0
        while not len(levels[level]) & 1:
            below = levels[level]
            if level + 1 == len(levels):
                levels.append([])
            levels[level + 1].append(self.combine(below[-2], below[-1]))
            level += 1

    def check_size(self, size: int) -> None:
        """Refuse a tree size this cache cannot answer for."""
        if not 1 <= size <= self.size:
            raise ValueError(f"tree size was {size}, must be 1..{self.size}")

    def subtree(self, start: int, end: int) -> T:
        """Return the value of the RFC 6962 tree over leaves ``[start, end)``."""
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:
            return self.levels[n.bit_length() - 1][start // n]
        k = split_point(n)
        return self.combine(self.subtree(start, start + k), self.subtree(start + k, end))

    def path(self, m: int, start: int, end: int) -> list[T]:
        """Return RFC 6962 §2.1.1 PATH(m, D[start:end]), ``m`` relative to ``start``."""
        n = end - start
        if n == 1:
            return []
        k = split_point(n)
        if m < k:
            return [*self.path(m, start, start + k), self.subtree(start + k, end)]
        return [*self.path(m - k, start + k, end), self.subtree(start, start + k)]

    def subproof(self, m: int, start: int, end: int, complete: bool) -> list[T]:
        """Return RFC 6962 §2.1.2 SUBPROOF(m, D[start:end], complete)."""
        n = end - start
        if m == n:
            return [] if complete else [self.subtree(start, end)]
        k = split_point(n)
        if m <= k:
            return [*self.subproof(m, start, start + k, complete), self.subtree(start + k, end)]
        return [*self.subproof(m - k, start + k, end, False), self.subtree(start, start + k)]


class MerkleTree(SubtreeCache[bytes]):
    """An RFC 6962 hash tree over leaf hashes, answering for every prefix size."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        super().__init__(node_hash, leaf_hashes)

    def root(self, size: int | None = None) -> bytes:
        """Return the root of the first ``size`` leaves (all by default)."""
        size = self.size if size is None else size
        if size == 0:
            return EMPTY_ROOT
        self.check_size(size)
        return self.subtree(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Return the audit path of leaf ``index`` in the tree of the first ``size`` leaves."""
        size = self.size if size is None else size
        self.check_size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf index was {index}, must be 0..{size - 1}")
        return self.path(index, 0, size)

    def consistency_proof(self, first_size: int, second_size: int | None = None) -> list[bytes]:
        """Return the proof that the tree of ``second_size`` leaves extends the first ``first_size``."""
        second_size = self.size if second_size is None else second_size
        self.check_size(second_size)
        if not 1 <= first_size <= second_size:
            raise ValueError(f"first tree size was {first_size}, must be 1..{second_size}")
        return self.subproof(first_size, 0, second_size, True)


def fold_inclusion_path(
    leaf: T, index: int, size: int, path: Sequence[T], combine: Callable[[T, T], T]
) -> T | None:
    """Recompute the root from a leaf and its audit path (RFC 9162 §2.1.3.2); None if malformed."""
    if not 0 <= index < size or len(path) > MAX_PROOF_HASHES:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = combine(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = combine(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def verify_inclusion(
    hashed_leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Return True if ``proof`` shows leaf ``index`` (hash given) is in the tree ``root`` of ``size``."""
    return fold_inclusion_path(hashed_leaf, index, size, proof, node_hash) == root


def verify_consistency(
    first_size: int, second_size: int, first_root: bytes, second_root: bytes,
    proof: Sequence[bytes],
) -> bool:
    """Return True if ``proof`` shows the tree ``second_root`` extends the tree ``first_root``."""
    if not 1 <= first_size <= second_size or len(proof) > MAX_PROOF_HASHES:
        return False
    if first_size == second_size:
        return not proof and first_root == second_root
    if not proof:
        return False
    path = list(proof)
    if first_size & (first_size - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first_size - 1, second_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == first_root and sr == second_root
