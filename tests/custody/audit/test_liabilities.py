"""Merkle-sum liabilities: proofs verify, sums are computed not trusted, tampering fails."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custody.audit.cli import main as audit_main
from custody.audit.liabilities import (
    U256_MAX,
    SumNode,
    SumTree,
    liability_leaf,
    root_from_proof,
    sum_node,
)

balances = st.lists(st.integers(0, 10**30), min_size=1, max_size=40)


def tree_of(values: list[int]) -> tuple[SumTree, list[SumNode]]:
    leaves = [liability_leaf(bytes([i % 256]) * 32, f"user{i}", b) for i, b in enumerate(values)]
    return SumTree(leaves), leaves


@given(balances, st.data())
@settings(max_examples=100, deadline=None)
def test_every_users_proof_leads_to_the_root_and_the_total(values: list[int], data: st.DataObject) -> None:
    tree, leaves = tree_of(values)
    index = data.draw(st.integers(0, len(values) - 1))
    root = tree.root()
    assert root.total == sum(values)
    assert root_from_proof(leaves[index], index, len(values), tree.proof(index)) == root


@given(balances, st.data())
@settings(max_examples=100, deadline=None)
def test_understated_sibling_sum_or_balance_breaks_the_proof(values: list[int], data: st.DataObject) -> None:
    tree, leaves = tree_of(values)
    index = data.draw(st.integers(0, len(values) - 1))
    path, root = tree.proof(index), tree.root()
    if path:
        at = data.draw(st.integers(0, len(path) - 1))
        if path[at].total:
            cheaper = [*path[:at], SumNode(path[at].hash, path[at].total - 1), *path[at + 1:]]
            assert root_from_proof(leaves[index], index, len(values), cheaper) != root
    if values[index]:
        smaller = liability_leaf(bytes([index % 256]) * 32, f"user{index}", values[index] - 1)
        assert root_from_proof(smaller, index, len(values), path) != root


def test_sums_cannot_be_negative_or_overflow() -> None:
    with pytest.raises(ValueError, match="decimal string"):
        SumNode.from_dict({"hash": "00" * 32, "sum": "-5"})
    with pytest.raises(ValueError, match="decimal string"):
        SumNode.from_dict({"hash": "00" * 32, "sum": str(2**256)})
    big = SumNode(bytes(32), U256_MAX)
    with pytest.raises(OverflowError):
        sum_node(big, SumNode(bytes(32), 1))


def test_verify_liability_cli_accepts_a_proof_and_rejects_a_tampered_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from .test_docs import examples

    proof = json.loads(examples("proof-of-reserves.md")["liability-proof"])
    keys = tmp_path / "keys.json"
    keys.write_text(examples("ledger-export.md")["keys.json"])
    good = tmp_path / "proof.json"
    good.write_text(json.dumps(proof))
    assert audit_main(["verify-liability", str(good), "--keys", str(keys)]) == 0
    assert "VERIFIED: bob holds 25000000 BTC" in capsys.readouterr().out
    bad = copy.deepcopy(proof)
    bad["balance"] = "1"
    good.write_text(json.dumps(bad))
    assert audit_main(["verify-liability", str(good), "--keys", str(keys)]) == 1
    assert "does not lead to the proof's root" in capsys.readouterr().out
    forged = copy.deepcopy(proof)
    forged["snapshot"]["liabilities"]["BTC"]["total"] = "1"
    good.write_text(json.dumps(forged))
    assert audit_main(["verify-liability", str(good), "--json", "--allow-unpinned-keys"]) == 1
    assert "the snapshot signature does not verify" in json.loads(capsys.readouterr().out)["problems"]
