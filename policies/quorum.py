"""M-of-N approval quorums: the one check withdrawals, refills, policy
changes and the offline signer all share.

`verify_quorum` is pure: registry, approvals and the current time come in,
a `QuorumResult` comes out. Each approval either counts or is rejected with
a code and a reason; the quorum is met when enough distinct approvers of the
required group count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from policies.approval import Approval, ApprovalSubject, approval_digest
from policies.approver_registry import ApproverKey, ApproverRegistry
from policies.identifier import check_identifier
from policies.results import PolicyError, Refusal, ResultCode
from policies.signature_scheme import DEFAULT_VERIFIERS, SignatureScheme, Verifier

MAX_REQUIRED_APPROVALS = 16
MAX_APPROVALS_CHECKED = 64
DEFAULT_MAX_APPROVAL_AGE_MS = 72 * 3600 * 1000
# Approver clocks drift; an approval signed slightly "in the future" is fine.
MAX_CLOCK_SKEW_MS = 5 * 60 * 1000


@dataclass(frozen=True, slots=True)
class QuorumRequirement:
    """`count` distinct approvers from `group` must approve."""

    count: int
    group: str

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not 1 <= self.count <= MAX_REQUIRED_APPROVALS:
            raise PolicyError(
                ResultCode.POLICY_DOCUMENT_INVALID,
                f"approval count was {self.count!r}, must be 1..{MAX_REQUIRED_APPROVALS}",
            )
        check_identifier(self.group, "approval group", ResultCode.POLICY_DOCUMENT_INVALID)


@dataclass(frozen=True, slots=True)
class RejectedApproval:
    """An approval that did not count, and why."""

    index: int
    approval: Approval
    refusal: Refusal


@dataclass(frozen=True, slots=True)
class QuorumResult:
    """Outcome of `verify_quorum`: which approvals counted and which did not."""

    requirement: QuorumRequirement
    valid: tuple[Approval, ...]
    rejected: tuple[RejectedApproval, ...]

    @property
    def met(self) -> bool:
        return len(self.valid) >= self.requirement.count

    @property
    def approver_ids(self) -> frozenset[str]:
        return frozenset(a.approver_id for a in self.valid)

    @property
    def refusal(self) -> Refusal | None:
        """Return `approvals_insufficient` if the quorum is not met, else None."""
        if self.met:
            return None
        return Refusal(
            ResultCode.APPROVALS_INSUFFICIENT,
            f"{len(self.valid)} of {self.requirement.count} required approvals from group "
            f"{self.requirement.group} are valid ({len(self.rejected)} rejected)",
        )


@dataclass(frozen=True, slots=True)
class QuorumCheck:
    """Everything `verify_quorum` needs besides the approvals themselves."""

    subject: ApprovalSubject
    registry: ApproverRegistry
    requirement: QuorumRequirement
    initiator_id: str
    now_ms: int
    max_age_ms: int = DEFAULT_MAX_APPROVAL_AGE_MS


def verify_quorum(
    subject: ApprovalSubject,
    approvals: Sequence[Approval],
    registry: ApproverRegistry,
    requirement: QuorumRequirement,
    initiator_id: str,
    now_ms: int,
    *,
    max_age_ms: int = DEFAULT_MAX_APPROVAL_AGE_MS,
    verifiers: Mapping[SignatureScheme, Verifier] = DEFAULT_VERIFIERS,
) -> QuorumResult:
    """Check `approvals` for `subject` against `requirement`.

    An approval counts when its key is registered to the claimed approver and
    not revoked, its signature covers this exact subject, it has not expired
    and is not older than `max_age_ms`, the approver is not the initiator, is
    in the required group, and has not already been counted (by approver id
    or by key).
    """
    check = QuorumCheck(subject, registry, requirement, initiator_id, now_ms, max_age_ms)
    valid: list[Approval] = []
    rejected: list[RejectedApproval] = []
    seen_approvers: set[str] = set()
    seen_keys: set[bytes] = set()
    for index, approval in enumerate(approvals):
        refusal = _refuse_extra(index) or _check_one(check, approval, verifiers)
        if refusal is None:
            key = registry.keys[approval.key_id]
            refusal = _check_distinct(approval, key, seen_approvers, seen_keys)
        if refusal is None:
            valid.append(approval)
        else:
            rejected.append(RejectedApproval(index, approval, refusal))
    result = QuorumResult(requirement, tuple(valid), tuple(rejected))
    assert len(result.approver_ids) == len(result.valid), "an approver was counted twice"
    return result


def _refuse_extra(index: int) -> Refusal | None:
    # Bound the work an attacker can cause by submitting thousands of approvals.
    if index < MAX_APPROVALS_CHECKED:
        return None
    return Refusal(
        ResultCode.APPROVALS_TOO_MANY,
        f"approval #{index} ignored: at most {MAX_APPROVALS_CHECKED} approvals are checked",
    )


def _check_one(
    check: QuorumCheck, approval: Approval, verifiers: Mapping[SignatureScheme, Verifier]
) -> Refusal | None:
    """Check one approval on its own; distinctness is checked by the caller."""
    key = check.registry.key(approval.key_id)
    refusal = _check_key(check, approval, key)
    if refusal is not None or key is None:
        return refusal
    refusal = _check_signature(check, approval, key, verifiers)
    return refusal or _check_time(check, approval) or _check_approver(check, approval)


def _check_key(check: QuorumCheck, approval: Approval, key: ApproverKey | None) -> Refusal | None:
    if key is None:
        return Refusal(ResultCode.APPROVER_UNKNOWN, f"key {approval.key_id} is not registered")
    if key.approver_id != approval.approver_id:
        return Refusal(
            ResultCode.APPROVER_UNKNOWN,
            f"key {key.key_id} belongs to {key.approver_id}, approval claims {approval.approver_id}",
        )
    if key.is_revoked(check.now_ms):
        return Refusal(
            ResultCode.APPROVER_KEY_REVOKED,
            f"key {key.key_id} was revoked at {key.revoked_at_ms} ms",
        )
    if approval.scheme is not key.scheme:
        return Refusal(
            ResultCode.APPROVAL_SCHEME_UNSUPPORTED,
            f"approval uses {approval.scheme.value}, key {key.key_id} is {key.scheme.value}",
        )
    return None


def _check_signature(
    check: QuorumCheck,
    approval: Approval,
    key: ApproverKey,
    verifiers: Mapping[SignatureScheme, Verifier],
) -> Refusal | None:
    verifier = verifiers.get(approval.scheme)
    if verifier is None:
        return Refusal(
            ResultCode.APPROVAL_SCHEME_UNSUPPORTED,
            f"no verifier for scheme {approval.scheme.value}",
        )
    differences = check.subject.differences(approval.subject)
    if differences:
        return Refusal(
            ResultCode.APPROVAL_DIGEST_MISMATCH,
            "approval is for a different subject: " + "; ".join(differences),
        )
    # Verify against the digest of the subject being decided, not the copy the
    # approval carries: a signature only ever counts for this exact subject.
    digest = approval_digest(check.subject, approval.signed_at_ms, approval.expires_at_ms)
    if verifier(key.public_key, digest, approval.signature):
        return None
    return Refusal(
        ResultCode.APPROVAL_SIGNATURE_INVALID,
        f"signature by key {key.key_id} does not verify",
    )


def _check_time(check: QuorumCheck, approval: Approval) -> Refusal | None:
    now_ms = check.now_ms
    if approval.expires_at_ms <= now_ms:
        return Refusal(
            ResultCode.APPROVAL_EXPIRED,
            f"approval expired at {approval.expires_at_ms} ms, now is {now_ms} ms",
        )
    if approval.signed_at_ms > now_ms + MAX_CLOCK_SKEW_MS:
        return Refusal(
            ResultCode.APPROVAL_NOT_YET_VALID,
            f"approval signed at {approval.signed_at_ms} ms, more than "
            f"{MAX_CLOCK_SKEW_MS} ms after now ({now_ms} ms)",
        )
    age_ms = now_ms - approval.signed_at_ms
    if age_ms > check.max_age_ms:
        return Refusal(
            ResultCode.APPROVAL_TOO_OLD,
            f"approval is {age_ms} ms old, at most {check.max_age_ms} ms allowed",
        )
    return None


def _check_approver(check: QuorumCheck, approval: Approval) -> Refusal | None:
    if approval.approver_id == check.initiator_id:
        return Refusal(
            ResultCode.APPROVAL_SELF,
            f"{approval.approver_id} initiated this request and cannot approve it",
        )
    approver = check.registry.approver(approval.approver_id)
    group = check.requirement.group
    if approver is None or group not in approver.groups:
        return Refusal(
            ResultCode.APPROVER_NOT_IN_GROUP,
            f"{approval.approver_id} is not in approval group {group}",
        )
    return None


def _check_distinct(
    approval: Approval, key: ApproverKey, seen_approvers: set[str], seen_keys: set[bytes]
) -> Refusal | None:
    if approval.approver_id in seen_approvers or key.public_key in seen_keys:
        return Refusal(
            ResultCode.APPROVER_DUPLICATE,
            f"{approval.approver_id} has already approved (key {key.key_id})",
        )
    seen_approvers.add(approval.approver_id)
    seen_keys.add(key.public_key)
    return None
