"""Governance of the withdrawal policy itself: M-of-N admin approval.

A proposal names the policy, the version it replaces and the digest of the
new document. Admins sign an `ApprovalSubject` of kind POLICY_CHANGE built
from the proposal, and `check_policy_change` runs the same `verify_quorum`
that withdrawals use. The proposer never counts towards the quorum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from policies.approval import Approval, ApprovalSubject, SubjectKind
from policies.approver_registry import ApproverRegistry
from policies.identifier import check_identifier
from policies.policy_document import PolicyDocument
from policies.quorum import (
    DEFAULT_MAX_APPROVAL_AGE_MS,
    QuorumRequirement,
    QuorumResult,
    verify_quorum,
)
from policies.results import PolicyError, Refusal, ResultCode


@dataclass(frozen=True, slots=True)
class PolicyChangeProposal:
    """A proposal to replace version `base_version` of a policy by `new_version`."""

    proposal_id: str
    policy_id: str
    base_version: int
    new_version: int
    document_sha256: str
    proposer_id: str

    def __post_init__(self) -> None:
        for name in ("proposal_id", "policy_id", "proposer_id"):
            check_identifier(getattr(self, name), name, ResultCode.POLICY_CHANGE_INVALID)
        if self.new_version != self.base_version + 1:
            raise PolicyError(
                ResultCode.POLICY_VERSION_MISMATCH,
                f"new version was {self.new_version}, must be base version {self.base_version} + 1",
            )

    @property
    def subject(self) -> ApprovalSubject:
        """Return what each admin signs to approve this proposal."""
        return ApprovalSubject(
            kind=SubjectKind.POLICY_CHANGE,
            subject_id=self.proposal_id,
            policy_id=self.policy_id,
            policy_version=self.new_version,
            document_sha256=self.document_sha256,
        )


def propose_policy_change(
    proposal_id: str, current: PolicyDocument, proposed: PolicyDocument, proposer_id: str
) -> PolicyChangeProposal:
    """Build a proposal to replace `current` by `proposed`; raise if it cannot follow it."""
    refusal = _check_succession(current, proposed)
    if refusal is not None:
        raise PolicyError(refusal.code, refusal.message)
    return PolicyChangeProposal(
        proposal_id=proposal_id,
        policy_id=proposed.policy_id,
        base_version=current.version,
        new_version=proposed.version,
        document_sha256=proposed.digest,
        proposer_id=proposer_id,
    )


@dataclass(frozen=True, slots=True)
class PolicyChangeCheck:
    """Whether a proposal may be applied now; `quorum` is None if checks failed earlier."""

    refusal: Refusal | None
    quorum: QuorumResult | None

    @property
    def approved(self) -> bool:
        return self.refusal is None


def check_policy_change(
    proposal: PolicyChangeProposal,
    proposed: PolicyDocument,
    current: PolicyDocument,
    approvals: Sequence[Approval],
    registry: ApproverRegistry,
    requirement: QuorumRequirement,
    now_ms: int,
    *,
    max_age_ms: int = DEFAULT_MAX_APPROVAL_AGE_MS,
) -> PolicyChangeCheck:
    """Check that `proposed` is the proposal's document, follows `current`, and has quorum."""
    if proposed.digest != proposal.document_sha256:
        return PolicyChangeCheck(
            Refusal(
                ResultCode.APPROVAL_DIGEST_MISMATCH,
                f"document digest was {proposed.digest}, proposal approved {proposal.document_sha256}",
            ),
            None,
        )
    refusal = _check_succession(current, proposed)
    if refusal is None and current.version != proposal.base_version:
        refusal = Refusal(
            ResultCode.POLICY_VERSION_MISMATCH,
            f"current version is {current.version}, proposal replaces {proposal.base_version}",
        )
    if refusal is not None:
        return PolicyChangeCheck(refusal, None)
    quorum = verify_quorum(
        proposal.subject,
        approvals,
        registry,
        requirement,
        proposal.proposer_id,
        now_ms,
        max_age_ms=max_age_ms,
    )
    return PolicyChangeCheck(quorum.refusal, quorum)


def _check_succession(current: PolicyDocument, proposed: PolicyDocument) -> Refusal | None:
    if proposed.policy_id != current.policy_id:
        return Refusal(
            ResultCode.POLICY_CHANGE_INVALID,
            f"proposed policy id was {proposed.policy_id!r}, current is {current.policy_id!r}",
        )
    if proposed.version != current.version + 1:
        return Refusal(
            ResultCode.POLICY_VERSION_MISMATCH,
            f"proposed version was {proposed.version}, must be {current.version + 1}",
        )
    return None
