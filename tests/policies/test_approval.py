from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.approval import (
    APPROVAL_DOMAIN,
    Approval,
    ApprovalSubject,
    SubjectKind,
    approval_digest,
)
from policies.results import PolicyError, ResultCode
from policies.signature_scheme import SignatureScheme
from policies.wire_format import MAX_U256, Writer

from .helpers import NOW_MS, Signers, withdrawal_subject

ids = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
subjects = st.builds(
    withdrawal_subject,
    kind=st.sampled_from([SubjectKind.WITHDRAWAL, SubjectKind.REFILL]),
    subject_id=ids,
    policy_id=ids,
    policy_version=st.integers(1, 2**64 - 1),
    asset=ids,
    amount_minor=st.integers(1, MAX_U256),
    destination=ids,
    rule_id=ids,
    chain=ids,
    network=ids,
    source_wallet=ids,
    fee_cap_minor=st.integers(0, MAX_U256),
)
approvals = st.builds(
    Approval,
    approver_id=ids,
    key_id=ids,
    scheme=st.just(SignatureScheme.ED25519),
    subject=subjects,
    signed_at_ms=st.integers(0, 2**63),
    expires_at_ms=st.integers(2**63 + 1, 2**64 - 1),
    signature=st.binary(min_size=1, max_size=200),
)


@given(approvals)
def test_approval_bytes_roundtrip_is_identity(approval: Approval) -> None:
    assert Approval.from_bytes(approval.to_bytes()) == approval


@given(approvals, st.binary(min_size=1, max_size=8))
def test_approval_from_bytes_trailing_bytes_rejected(approval: Approval, extra: bytes) -> None:
    with pytest.raises(PolicyError) as info:
        Approval.from_bytes(approval.to_bytes() + extra)
    assert info.value.code is ResultCode.APPROVAL_MALFORMED
    assert "trailing" in info.value.message


@given(approvals, st.data())
def test_approval_from_bytes_truncated_rejected(approval: Approval, data: st.DataObject) -> None:
    raw = approval.to_bytes()
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(PolicyError) as info:
        Approval.from_bytes(raw[:cut])
    assert info.value.code is ResultCode.APPROVAL_MALFORMED


@given(subjects, subjects)
def test_approval_digest_different_subjects_differ(a: ApprovalSubject, b: ApprovalSubject) -> None:
    if a != b:
        assert approval_digest(a, 1, 2) != approval_digest(b, 1, 2)


def test_approval_digest_matches_documented_encoding(subject: ApprovalSubject) -> None:
    manual = (
        len(APPROVAL_DOMAIN).to_bytes(2, "big")
        + APPROVAL_DOMAIN.encode()
        + bytes([1])
        + b"\x00\x05wd-42"
        + b"\x00\x07default"
        + (3).to_bytes(8, "big")
        + b"\x00\x00" * 4  # rule_id, chain, network, source_wallet: empty in this subject
        + b"\x00\x03BTC"
        + (150_000_000).to_bytes(32, "big")
        + b"\x00\x16bc1qexampledestination"
        + (0).to_bytes(32, "big")  # fee_cap_minor
        + b"\x00\x00"
        + (100).to_bytes(8, "big")
        + (200).to_bytes(8, "big")
    )
    assert approval_digest(subject, 100, 200) == hashlib.sha256(manual).digest()


def test_approval_digest_validity_period_is_signed(subject: ApprovalSubject) -> None:
    assert approval_digest(subject, 100, 200) != approval_digest(subject, 100, 201)
    assert approval_digest(subject, 100, 200) != approval_digest(subject, 101, 200)


def test_approval_subject_eth_amount_above_64_bits_accepted() -> None:
    subject = withdrawal_subject(asset="ETH", amount_minor=10**30)
    assert subject.amount_minor == 10**30


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"amount_minor": 0}, "amount_minor was 0"),
        ({"amount_minor": -5}, "amount_minor was -5"),
        ({"amount_minor": True}, "amount_minor was True"),
        ({"amount_minor": MAX_U256 + 1}, "amount_minor"),
        ({"destination": "bc1 q"}, "destination"),
        ({"destination": "bc1q\u0430"}, "destination"),  # Cyrillic a looks like Latin a.
        ({"asset": ""}, "asset"),
        ({"policy_version": 0}, "policy_version was 0"),
        ({"document_sha256": "ab" * 32}, "document_sha256 must be empty"),
    ],
)
def test_approval_subject_invalid_field_rejected_with_field_name(
    changes: dict[str, object], fragment: str
) -> None:
    with pytest.raises(PolicyError) as info:
        withdrawal_subject(**changes)
    assert info.value.code is ResultCode.APPROVAL_MALFORMED
    assert fragment in info.value.message


def test_approval_subject_policy_change_requires_document_digest() -> None:
    with pytest.raises(PolicyError, match="document_sha256"):
        ApprovalSubject(SubjectKind.POLICY_CHANGE, "pc-1", "default", 2, document_sha256="xyz")
    with pytest.raises(PolicyError, match="must be empty for a policy change"):
        ApprovalSubject(
            SubjectKind.POLICY_CHANGE, "pc-1", "default", 2, asset="BTC", document_sha256="a" * 64
        )


def test_approval_expiry_before_signing_rejected(signers: Signers, subject: ApprovalSubject) -> None:
    with pytest.raises(PolicyError, match="expires_at_ms was 5, must be after signed_at_ms 5"):
        signers.approve("alice-k1", subject, signed_at_ms=5, expires_at_ms=5)


def test_approval_from_bytes_unknown_scheme_rejected(signers: Signers, subject: ApprovalSubject) -> None:
    raw = signers.approve("alice-k1", subject).to_bytes()
    tampered = raw.replace(b"\x00\x07ed25519", b"\x00\x07webauth", 1)
    with pytest.raises(PolicyError) as info:
        Approval.from_bytes(tampered)
    assert info.value.code is ResultCode.APPROVAL_SCHEME_UNSUPPORTED


def test_approval_from_bytes_wrong_magic_rejected() -> None:
    with pytest.raises(PolicyError, match="starts with"):
        Approval.from_bytes(b"XXXX\x01")


def test_approval_id_is_hash_of_canonical_bytes(signers: Signers, subject: ApprovalSubject) -> None:
    approval = signers.approve("alice-k1", subject)
    assert approval.approval_id == hashlib.sha256(approval.to_bytes()).hexdigest()


def test_writer_u256_encodes_big_endian_fixed_width() -> None:
    assert Writer().u256(1).to_bytes() == b"\x00" * 31 + b"\x01"


def test_approval_signed_at_now_is_valid_value(signers: Signers, subject: ApprovalSubject) -> None:
    approval = signers.approve("bob-k1", subject, signed_at_ms=NOW_MS, expires_at_ms=NOW_MS + 1)
    assert approval.digest == approval_digest(subject, NOW_MS, NOW_MS + 1)
