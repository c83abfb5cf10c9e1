from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.approval import Approval, ApprovalSubject
from policies.approver_registry import Approver, ApproverKey, ApproverRegistry
from policies.quorum import (
    DEFAULT_MAX_APPROVAL_AGE_MS,
    MAX_APPROVALS_CHECKED,
    MAX_CLOCK_SKEW_MS,
    QuorumRequirement,
    QuorumResult,
    verify_quorum,
)
from policies.results import PolicyError, ResultCode
from policies.signature_scheme import SignatureScheme, ed25519_public_bytes

from .helpers import HOUR_MS, NOW_MS, Signers, build_signers, private_key, withdrawal_subject

TWO_TREASURY = QuorumRequirement(2, "treasury")


def check(
    signers: Signers,
    subject: ApprovalSubject,
    approvals: Sequence[Approval],
    *,
    initiator: str = "trader-1",
    requirement: QuorumRequirement = TWO_TREASURY,
    now_ms: int = NOW_MS,
) -> QuorumResult:
    return verify_quorum(subject, approvals, signers.registry, requirement, initiator, now_ms)


def only_rejection(result: QuorumResult) -> ResultCode:
    assert len(result.rejected) == 1, result.rejected
    return result.rejected[0].refusal.code


def test_quorum_exactly_met_is_met(signers: Signers, subject: ApprovalSubject) -> None:
    result = check(signers, subject, [signers.approve(k, subject) for k in ("alice-k1", "bob-k1")])
    assert result.met
    assert result.refusal is None
    assert result.approver_ids == {"alice", "bob"}


def test_quorum_one_short_is_not_met(signers: Signers, subject: ApprovalSubject) -> None:
    result = check(signers, subject, [signers.approve("alice-k1", subject)])
    assert not result.met
    assert result.refusal is not None
    assert result.refusal.code is ResultCode.APPROVALS_INSUFFICIENT
    assert "1 of 2" in result.refusal.message


def test_quorum_no_approvals_is_not_met(signers: Signers, subject: ApprovalSubject) -> None:
    assert not check(signers, subject, []).met


def test_quorum_same_approver_twice_counts_once(signers: Signers, subject: ApprovalSubject) -> None:
    first = signers.approve("alice-k1", subject)
    again = signers.approve("alice-k1", subject, signed_at_ms=NOW_MS - 1000)
    result = check(signers, subject, [first, again])
    assert not result.met
    assert only_rejection(result) is ResultCode.APPROVER_DUPLICATE


def test_quorum_two_keys_of_same_approver_count_once(signers: Signers, subject: ApprovalSubject) -> None:
    result = check(signers, subject, [signers.approve(k, subject) for k in ("dave-k1", "dave-k2")])
    assert not result.met
    assert only_rejection(result) is ResultCode.APPROVER_DUPLICATE


def test_quorum_approver_outside_group_rejected(signers: Signers, subject: ApprovalSubject) -> None:
    result = check(signers, subject, [signers.approve(k, subject) for k in ("alice-k1", "erin-k1")])
    assert not result.met
    assert only_rejection(result) is ResultCode.APPROVER_NOT_IN_GROUP


def test_quorum_initiator_approving_own_request_rejected(signers: Signers, subject: ApprovalSubject) -> None:
    approvals = [signers.approve(k, subject) for k in ("alice-k1", "bob-k1")]
    result = check(signers, subject, approvals, initiator="alice")
    assert not result.met
    assert only_rejection(result) is ResultCode.APPROVAL_SELF


def test_quorum_expired_approval_rejected(signers: Signers, subject: ApprovalSubject) -> None:
    expired = signers.approve("bob-k1", subject, expires_at_ms=NOW_MS)
    result = check(signers, subject, [signers.approve("alice-k1", subject), expired])
    assert not result.met
    assert only_rejection(result) is ResultCode.APPROVAL_EXPIRED


def test_quorum_approval_older_than_max_age_rejected(signers: Signers, subject: ApprovalSubject) -> None:
    old = signers.approve("bob-k1", subject, signed_at_ms=NOW_MS - DEFAULT_MAX_APPROVAL_AGE_MS - 1)
    result = check(signers, subject, [signers.approve("alice-k1", subject), old])
    assert only_rejection(result) is ResultCode.APPROVAL_TOO_OLD


def test_quorum_approval_signed_in_the_future_rejected(signers: Signers, subject: ApprovalSubject) -> None:
    future = signers.approve(
        "bob-k1",
        subject,
        signed_at_ms=NOW_MS + MAX_CLOCK_SKEW_MS + 1,
        expires_at_ms=NOW_MS + 2 * HOUR_MS,
    )
    result = check(signers, subject, [signers.approve("alice-k1", subject), future])
    assert only_rejection(result) is ResultCode.APPROVAL_NOT_YET_VALID


def test_quorum_forged_signature_rejected(signers: Signers, subject: ApprovalSubject) -> None:
    genuine = signers.approve("bob-k1", subject)
    forged = Approval(
        approver_id="bob",
        key_id="bob-k1",
        scheme=SignatureScheme.ED25519,
        subject=subject,
        signed_at_ms=genuine.signed_at_ms,
        expires_at_ms=genuine.expires_at_ms,
        signature=private_key(999).sign(genuine.digest),
    )
    result = check(signers, subject, [signers.approve("alice-k1", subject), forged])
    assert not result.met
    assert only_rejection(result) is ResultCode.APPROVAL_SIGNATURE_INVALID


def test_quorum_tampered_expiry_breaks_signature(signers: Signers, subject: ApprovalSubject) -> None:
    genuine = signers.approve("bob-k1", subject)
    raw = bytearray(genuine.to_bytes())
    # Expiry sits just before the 2-byte signature length and the 64-byte signature.
    raw[-64 - 2 - 1] ^= 0x01
    result = check(signers, subject, [Approval.from_bytes(bytes(raw))])
    assert only_rejection(result) is ResultCode.APPROVAL_SIGNATURE_INVALID


@pytest.mark.parametrize(
    "changes",
    [
        {"amount_minor": 150_000_001},
        {"destination": "bc1qattackeraddress"},
        {"asset": "ETH"},
        {"subject_id": "wd-43"},
        {"policy_version": 4},
    ],
)
def test_quorum_approval_for_different_subject_rejected(signers: Signers, changes: dict[str, object]) -> None:
    approved = withdrawal_subject()
    deciding = withdrawal_subject(**changes)
    approvals = [signers.approve(k, approved) for k in ("alice-k1", "bob-k1")]
    result = check(signers, deciding, approvals)
    assert not result.met
    assert {r.refusal.code for r in result.rejected} == {ResultCode.APPROVAL_DIGEST_MISMATCH}
    field = next(iter(changes))
    assert field in result.rejected[0].refusal.message


def test_quorum_approval_carrying_wrong_subject_but_signed_right_rejected(
    signers: Signers, subject: ApprovalSubject
) -> None:
    genuine = signers.approve("bob-k1", subject)
    relabelled = Approval(
        approver_id="bob",
        key_id="bob-k1",
        scheme=SignatureScheme.ED25519,
        subject=withdrawal_subject(amount_minor=1),
        signed_at_ms=genuine.signed_at_ms,
        expires_at_ms=genuine.expires_at_ms,
        signature=genuine.signature,
    )
    assert only_rejection(check(signers, subject, [relabelled])) is (ResultCode.APPROVAL_DIGEST_MISMATCH)


def test_quorum_unregistered_key_rejected(signers: Signers, subject: ApprovalSubject) -> None:
    stranger = Approval(
        approver_id="mallory",
        key_id="mallory-k1",
        scheme=SignatureScheme.ED25519,
        subject=subject,
        signed_at_ms=NOW_MS,
        expires_at_ms=NOW_MS + HOUR_MS,
        signature=private_key(77).sign(b"x"),
    )
    assert only_rejection(check(signers, subject, [stranger])) is ResultCode.APPROVER_UNKNOWN


def test_quorum_key_claimed_by_other_approver_rejected(signers: Signers, subject: ApprovalSubject) -> None:
    claimed = signers.approve("bob-k1", subject, approver_id="carol")
    assert only_rejection(check(signers, subject, [claimed])) is ResultCode.APPROVER_UNKNOWN


def test_quorum_revoked_key_rejected(subject: ApprovalSubject) -> None:
    signers = build_signers()
    bob_key = signers.registry.keys["bob-k1"]
    revoked = ApproverKey(bob_key.key_id, "bob", bob_key.scheme, bob_key.public_key, revoked_at_ms=NOW_MS - 1)
    registry = ApproverRegistry.build(
        signers.registry.approvers.values(),
        [revoked if k.key_id == "bob-k1" else k for k in signers.registry.keys.values()],
    )
    approval = signers.approve("bob-k1", subject)
    result = verify_quorum(subject, [approval], registry, TWO_TREASURY, "trader-1", NOW_MS)
    assert only_rejection(result) is ResultCode.APPROVER_KEY_REVOKED


def test_quorum_more_approvals_than_checked_are_rejected(signers: Signers, subject: ApprovalSubject) -> None:
    spam = [signers.approve("alice-k1", subject)] * (MAX_APPROVALS_CHECKED + 1)
    result = check(signers, subject, spam)
    assert result.rejected[-1].refusal.code is ResultCode.APPROVALS_TOO_MANY
    assert len(result.valid) == 1


def test_quorum_rejection_lists_index_of_each_bad_approval(
    signers: Signers, subject: ApprovalSubject
) -> None:
    approvals = [
        signers.approve("erin-k1", subject),
        signers.approve("alice-k1", subject),
        signers.approve("alice-k1", subject),
    ]
    result = check(signers, subject, approvals)
    assert [(r.index, r.refusal.code) for r in result.rejected] == [
        (0, ResultCode.APPROVER_NOT_IN_GROUP),
        (2, ResultCode.APPROVER_DUPLICATE),
    ]


def test_quorum_requirement_out_of_range_rejected() -> None:
    with pytest.raises(PolicyError):
        QuorumRequirement(0, "treasury")
    with pytest.raises(PolicyError):
        QuorumRequirement(2, "")


def test_registry_same_public_key_for_two_approvers_rejected() -> None:
    public = ed25519_public_bytes(private_key(1))
    with pytest.raises(PolicyError) as info:
        ApproverRegistry.build(
            [Approver("a", frozenset({"treasury"})), Approver("b", frozenset({"treasury"}))],
            [
                ApproverKey("a-k", "a", SignatureScheme.ED25519, public),
                ApproverKey("b-k", "b", SignatureScheme.ED25519, public),
            ],
        )
    assert info.value.code is ResultCode.APPROVER_REGISTRY_INVALID


def test_registry_key_for_unknown_approver_rejected() -> None:
    with pytest.raises(PolicyError, match="unknown approver"):
        ApproverRegistry.build([], [ApproverKey("k", "ghost", SignatureScheme.ED25519, b"\x01" * 32)])


def test_registry_group_members_lists_group(signers: Signers) -> None:
    assert signers.registry.group_members("treasury") == {"alice", "bob", "carol", "dave"}


KEY_IDS = ["alice-k1", "bob-k1", "carol-k1", "dave-k1", "dave-k2", "erin-k1", "gina-k1"]


@settings(max_examples=40, deadline=None)
@given(
    chosen=st.lists(st.sampled_from(KEY_IDS), max_size=8),
    initiator=st.sampled_from(["alice", "bob", "trader-1"]),
    count=st.integers(1, 4),
    data=st.data(),
)
def test_quorum_valid_count_is_distinct_eligible_approvers_in_any_order(
    chosen: list[str], initiator: str, count: int, data: st.DataObject
) -> None:
    signers = _SIGNERS
    subject = withdrawal_subject()
    approvals = [signers.approve(k, subject) for k in chosen]
    shuffled = data.draw(st.permutations(approvals))
    requirement = QuorumRequirement(count, "treasury")
    a = verify_quorum(subject, approvals, signers.registry, requirement, initiator, NOW_MS)
    b = verify_quorum(subject, shuffled, signers.registry, requirement, initiator, NOW_MS)
    eligible = {
        signers.registry.keys[k].approver_id
        for k in chosen
        if "treasury" in signers.registry.approvers[signers.registry.keys[k].approver_id].groups
    } - {initiator}
    assert a.approver_ids == b.approver_ids == eligible
    assert a.met == b.met == (len(eligible) >= count)
    assert len(a.valid) + len(a.rejected) == len(approvals)


_SIGNERS = build_signers()
