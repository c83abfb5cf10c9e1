from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from policies.approval import APPROVAL_OUTDATED_MESSAGE, Approval, ApprovalSubject, SubjectKind, sign_approval
from policies.approver_registry import Approver, ApproverKey, ApproverRegistry
from policies.quorum import QuorumRequirement, verify_quorum
from policies.results import PolicyError, ResultCode
from policies.signature_scheme import SignatureScheme, ed25519_public_bytes

DOC = Path(__file__).resolve().parents[2] / "docs" / "approvals.md"


def documented() -> dict[str, str]:
    block = re.search(r"```text\n(.*?)```", DOC.read_text(), re.S)
    assert block is not None
    return dict(re.findall(r"^(\w+): (.*)$", block.group(1), re.M))


def test_approval_documented_example_recomputes() -> None:
    doc = documented()
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(doc["private_key_hex"]))
    subject = ApprovalSubject(
        kind=SubjectKind[doc["kind"].upper()],
        subject_id=doc["subject_id"],
        policy_id=doc["policy_id"],
        policy_version=int(doc["policy_version"]),
        asset=doc["asset"],
        amount_minor=int(doc["amount_minor"]),
        destination=doc["destination"],
        rule_id=doc["rule_id"],
        chain=doc["chain"],
        network=doc["network"],
        source_wallet=doc["source_wallet"],
        fee_cap_minor=int(doc["fee_cap_minor"]),
    )
    approval = sign_approval(
        key,
        approver_id=doc["approver_id"],
        key_id=doc["key_id"],
        subject=subject,
        signed_at_ms=int(doc["signed_at_ms"]),
        expires_at_ms=int(doc["expires_at_ms"]),
    )
    assert ed25519_public_bytes(key).hex() == doc["public_key_hex"]
    assert approval.digest.hex() == doc["digest_hex"]
    assert approval.signature.hex() == doc["signature_hex"]
    assert approval.to_bytes().hex() == doc["approval_hex"]
    assert approval.approval_id == doc["approval_id"]


def test_approval_documented_bytes_verify_against_registered_key() -> None:
    doc = documented()
    approval = Approval.from_bytes(bytes.fromhex(doc["approval_hex"]))
    registry = ApproverRegistry.build(
        [Approver("alice", frozenset({"treasury"}))],
        [ApproverKey("alice-k1", "alice", SignatureScheme.ED25519, bytes.fromhex(doc["public_key_hex"]))],
    )
    result = verify_quorum(
        approval.subject,
        [approval],
        registry,
        QuorumRequirement(1, "treasury"),
        initiator_id="trader-1",
        now_ms=int(doc["signed_at_ms"]) + 1,
    )
    assert result.met


# The version 1 worked example this document showed before the transfer terms were bound.
VERSION_1_APPROVAL_HEX = (
    "53524150010005616c6963650008616c6963652d6b3100076564323535313901000577642d3432000764656661"
    "756c74000000000000000100034254430000000000000000000000000000000000000000000000000000000008"
    "f0d1800016626331716578616d706c6564657374696e6174696f6e0000000001977420dc00000001977457ca80"
    "0040c581a5e9b176338750c0b8a75f8342397c25318a1213ec61e23412d74e83eea4b8b03afb41bd8239726a25"
    "6d9144d21a22a642f8a7246b40f34c94136dcc4c01"
)


def test_approval_version_1_bytes_refused_outdated_with_clear_message() -> None:
    with pytest.raises(PolicyError) as info:
        Approval.from_bytes(bytes.fromhex(VERSION_1_APPROVAL_HEX))
    assert info.value.code is ResultCode.APPROVAL_OUTDATED
    assert info.value.message == APPROVAL_OUTDATED_MESSAGE
    assert "approve again" in info.value.message
