"""RFC 6962 Merkle trees: roots, inclusion and consistency proofs against a naive reference."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from custody.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    MerkleTree,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

# -- the naive reference: RFC 6962 §2.1 transcribed literally -------------------------------

def naive_mth(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + naive_mth(leaves[:k]) + naive_mth(leaves[k:])).digest()


def naive_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*naive_path(m, leaves[:k]), naive_mth(leaves[k:])]
    return [*naive_path(m - k, leaves[k:]), naive_mth(leaves[:k])]


def naive_subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [naive_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*naive_subproof(m, leaves[:k], complete), naive_mth(leaves[k:])]
    return [*naive_subproof(m - k, leaves[k:], False), naive_mth(leaves[:k])]


def leaves_of(n: int) -> list[bytes]:
    return [f"leaf-{i}".encode() for i in range(n)]


leaf_lists = st.lists(st.binary(max_size=12), min_size=1, max_size=70, unique=True)


@given(leaf_lists)
@settings(max_examples=150, deadline=None)
def test_root_matches_naive_tree_for_every_prefix(leaves: list[bytes]) -> None:
    tree = MerkleTree(leaf_hash(x) for x in leaves)
    frontier = Frontier()
    for size, leaf in enumerate(leaves, start=1):
        frontier.append_hash(leaf_hash(leaf))
        expected = naive_mth(leaves[:size])
        assert tree.root(size) == expected
        assert frontier.root() == expected
    assert root_of([leaf_hash(x) for x in leaves]) == naive_mth(leaves)


@given(leaf_lists, st.data())
@settings(max_examples=150, deadline=None)
def test_inclusion_proof_matches_naive_path_and_verifies(leaves: list[bytes], data: st.DataObject) -> None:
    size = data.draw(st.integers(1, len(leaves)))
    index = data.draw(st.integers(0, size - 1))
    tree = MerkleTree(leaf_hash(x) for x in leaves)
    proof = tree.inclusion_proof(index, size)
    assert proof == naive_path(index, leaves[:size])
    root = naive_mth(leaves[:size])
    assert verify_inclusion(leaf_hash(leaves[index]), index, size, proof, root)


@given(leaf_lists, st.data())
@settings(max_examples=150, deadline=None)
def test_consistency_proof_matches_naive_and_verifies(leaves: list[bytes], data: st.DataObject) -> None:
    second = data.draw(st.integers(1, len(leaves)))
    first = data.draw(st.integers(1, second))
    tree = MerkleTree(leaf_hash(x) for x in leaves)
    proof = tree.consistency_proof(first, second)
    assert proof == naive_subproof(first, leaves[:second], True)
    assert verify_consistency(first, second, naive_mth(leaves[:first]), naive_mth(leaves[:second]), proof)


@given(leaf_lists, st.data())
@settings(max_examples=150, deadline=None)
def test_inclusion_proof_tampered_in_any_way_fails(leaves: list[bytes], data: st.DataObject) -> None:
    size = len(leaves)
    index = data.draw(st.integers(0, size - 1))
    tree = MerkleTree(leaf_hash(x) for x in leaves)
    proof, root, hashed = tree.inclusion_proof(index), tree.root(), leaf_hash(leaves[index])
    if proof:
        at = data.draw(st.integers(0, len(proof) - 1))
        bad = [*proof[:at], bytes(32), *proof[at + 1:]]
        assert not verify_inclusion(hashed, index, size, bad, root)
        assert not verify_inclusion(hashed, index, size, proof[:-1], root)
    assert not verify_inclusion(hashed, index, size, [*proof, bytes(32)], root)
    assert not verify_inclusion(leaf_hash(b"other" + leaves[index]), index, size, proof, root)
    if size > 1:
        other = (index + 1) % size
        assert not verify_inclusion(hashed, other, size, proof, root)


@given(leaf_lists, st.data())
@settings(max_examples=150, deadline=None)
def test_consistency_proof_tampered_fails(leaves: list[bytes], data: st.DataObject) -> None:
    second = len(leaves)
    first = data.draw(st.integers(1, second))
    tree = MerkleTree(leaf_hash(x) for x in leaves)
    proof = tree.consistency_proof(first, second)
    r1, r2 = tree.root(first), tree.root(second)
    for at in range(len(proof)):
        bad = [*proof[:at], node_hash(proof[at], proof[at]), *proof[at + 1:]]
        assert not verify_consistency(first, second, r1, r2, bad)
    assert not verify_consistency(first, second, r1, node_hash(r2, r2), proof)
    if first < second:
        assert not verify_consistency(first, second, node_hash(r1, r1), r2, proof)


def test_rfc6962_shapes_for_seven_leaves() -> None:
    # The worked examples of RFC 6962 §2.1.3: tree of 7 leaves d0..d6.
    leaves = leaves_of(7)
    tree = MerkleTree(leaf_hash(x) for x in leaves)
    h = [leaf_hash(x) for x in leaves]
    k = node_hash(h[4], h[5])
    j = node_hash(h[2], h[3])
    i = node_hash(h[0], h[1])
    g = node_hash(i, j)
    assert tree.inclusion_proof(0) == [h[1], j, node_hash(k, h[6])]
    assert tree.inclusion_proof(3) == [h[2], i, node_hash(k, h[6])]
    assert tree.inclusion_proof(6) == [k, g]
    assert tree.consistency_proof(3) == [h[2], h[3], i, node_hash(k, h[6])]
    assert tree.consistency_proof(4) == [node_hash(k, h[6])]
    assert tree.consistency_proof(6) == [k, h[6], g]


def test_empty_tree_root_is_hash_of_empty_string() -> None:
    assert MerkleTree().root() == EMPTY_ROOT == Frontier().root()


def test_frontier_round_trips_through_hex() -> None:
    frontier = Frontier()
    for leaf in leaves_of(13):
        frontier.append_hash(leaf_hash(leaf))
    again = Frontier.from_hex(13, frontier.to_hex())
    again.append_hash(leaf_hash(b"x"))
    assert again.root() == naive_mth([*leaves_of(13), b"x"])
