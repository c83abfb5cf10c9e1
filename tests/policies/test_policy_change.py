from __future__ import annotations

import json

import pytest

from policies.approval import Approval
from policies.default_policy import DEFAULT_POLICY_CHANGE_REQUIREMENT, load_default_policy
from policies.policy_change import (
    PolicyChangeProposal,
    check_policy_change,
    propose_policy_change,
)
from policies.policy_document import PolicyDocument
from policies.policy_json import parse_policy_json
from policies.results import PolicyError, ResultCode

from .helpers import NOW_MS, Signers


def next_version(current: PolicyDocument, **changes: object) -> PolicyDocument:
    doc = current.to_json()
    doc["version"] = current.version + 1
    doc.update(changes)
    return parse_policy_json(json.dumps(doc))


@pytest.fixture(scope="module")
def current() -> PolicyDocument:
    return load_default_policy()


@pytest.fixture(scope="module")
def proposed(current: PolicyDocument) -> PolicyDocument:
    return next_version(current, description="Raise nothing; just a new version.")


def approve(signers: Signers, proposal: PolicyChangeProposal, *key_ids: str) -> list[Approval]:
    return [signers.approve(k, proposal.subject) for k in key_ids]


def test_policy_change_two_admins_other_than_proposer_approve(
    signers: Signers, current: PolicyDocument, proposed: PolicyDocument
) -> None:
    proposal = propose_policy_change("pc-1", current, proposed, "erin")
    check = check_policy_change(
        proposal,
        proposed,
        current,
        approve(signers, proposal, "frank-k1", "gina-k1"),
        signers.registry,
        DEFAULT_POLICY_CHANGE_REQUIREMENT,
        NOW_MS,
    )
    assert check.approved
    assert check.quorum is not None and check.quorum.approver_ids == {"frank", "gina"}


def test_policy_change_proposer_approval_does_not_count(
    signers: Signers, current: PolicyDocument, proposed: PolicyDocument
) -> None:
    proposal = propose_policy_change("pc-1", current, proposed, "erin")
    check = check_policy_change(
        proposal,
        proposed,
        current,
        approve(signers, proposal, "erin-k1", "frank-k1"),
        signers.registry,
        DEFAULT_POLICY_CHANGE_REQUIREMENT,
        NOW_MS,
    )
    assert not check.approved
    assert check.refusal is not None and check.refusal.code is ResultCode.APPROVALS_INSUFFICIENT
    assert check.quorum is not None
    assert check.quorum.rejected[0].refusal.code is ResultCode.APPROVAL_SELF


def test_policy_change_treasury_approvals_do_not_count(
    signers: Signers, current: PolicyDocument, proposed: PolicyDocument
) -> None:
    proposal = propose_policy_change("pc-1", current, proposed, "erin")
    check = check_policy_change(
        proposal,
        proposed,
        current,
        approve(signers, proposal, "alice-k1", "bob-k1"),
        signers.registry,
        DEFAULT_POLICY_CHANGE_REQUIREMENT,
        NOW_MS,
    )
    assert not check.approved


def test_policy_change_document_swapped_after_approval_rejected(
    signers: Signers, current: PolicyDocument, proposed: PolicyDocument
) -> None:
    proposal = propose_policy_change("pc-1", current, proposed, "erin")
    swapped = next_version(current, description="Something else entirely.")
    check = check_policy_change(
        proposal,
        swapped,
        current,
        approve(signers, proposal, "frank-k1", "gina-k1"),
        signers.registry,
        DEFAULT_POLICY_CHANGE_REQUIREMENT,
        NOW_MS,
    )
    assert check.refusal is not None
    assert check.refusal.code is ResultCode.APPROVAL_DIGEST_MISMATCH


def test_policy_change_approval_for_other_proposal_rejected(
    signers: Signers, current: PolicyDocument, proposed: PolicyDocument
) -> None:
    proposal = propose_policy_change("pc-1", current, proposed, "erin")
    other = propose_policy_change("pc-2", current, proposed, "erin")
    check = check_policy_change(
        proposal,
        proposed,
        current,
        approve(signers, other, "frank-k1", "gina-k1"),
        signers.registry,
        DEFAULT_POLICY_CHANGE_REQUIREMENT,
        NOW_MS,
    )
    assert not check.approved
    assert check.quorum is not None
    codes = {r.refusal.code for r in check.quorum.rejected}
    assert codes == {ResultCode.APPROVAL_DIGEST_MISMATCH}


def test_policy_change_applied_to_moved_on_policy_rejected(
    signers: Signers, current: PolicyDocument, proposed: PolicyDocument
) -> None:
    proposal = propose_policy_change("pc-1", current, proposed, "erin")
    # Another change reached version 2 first; this proposal is now stale.
    moved_on = next_version(current, description="A competing change.")
    check = check_policy_change(
        proposal,
        proposed,
        moved_on,
        approve(signers, proposal, "frank-k1", "gina-k1"),
        signers.registry,
        DEFAULT_POLICY_CHANGE_REQUIREMENT,
        NOW_MS,
    )
    assert check.refusal is not None
    assert check.refusal.code is ResultCode.POLICY_VERSION_MISMATCH


def test_policy_change_version_must_increase_by_one(current: PolicyDocument) -> None:
    skipping = next_version(current, version=current.version + 2)
    with pytest.raises(PolicyError) as info:
        propose_policy_change("pc-1", current, skipping, "erin")
    assert info.value.code is ResultCode.POLICY_VERSION_MISMATCH


def test_policy_change_other_policy_id_rejected(current: PolicyDocument) -> None:
    with pytest.raises(PolicyError) as info:
        propose_policy_change("pc-1", current, next_version(current, id="other"), "erin")
    assert info.value.code is ResultCode.POLICY_CHANGE_INVALID


def test_policy_change_subject_binds_document_digest(
    current: PolicyDocument, proposed: PolicyDocument
) -> None:
    proposal = propose_policy_change("pc-1", current, proposed, "erin")
    assert proposal.subject.document_sha256 == proposed.digest
    assert proposal.subject.policy_version == current.version + 1
