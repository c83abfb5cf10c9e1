"""One approvals table, one way in: ``add_approval()`` for everything that needs approvers.

Withdrawals, treasury refills, policy changes and manual ledger proposals all
wait for people other than their requester. Each kept its own approvals table
and its own collection routine, and they had drifted apart (a refill refused
an approver whose earlier approval had expired; a ledger proposal called
self-approval an "approver mismatch"). Now every approval is a row of the
``approvals`` table, written only here, and every refusal is the same:

- the approver is the requester                 -> ``APPROVAL_SELF``
- a signed approval names someone else          -> ``APPROVER_MISMATCH``
- the approver already has an approval counted  -> ``APPROVER_DUPLICATE``
- the approver lacks the role / approver group  -> ``APPROVER_NOT_IN_GROUP``
- a signed approval that does not verify        -> the quorum check's own code

Two proofs of approval exist. A *signed* approval (``policies.approval``) is
counted by the subject's quorum check, which the caller supplies (the subject,
requirement and key registry differ per kind). A *confirmed* approval is one
the API or CLI accepted after checking the approver's MFA code; it has no
signature and counts once per approver holding the required role.

Concurrency: the caller locks the subject row (``SELECT ... FOR UPDATE``; on
SQLite every write transaction is ``BEGIN IMMEDIATE``) and checks the subject
is still open before calling, so two approvals of one subject are counted one
after the other and only one of them can see the quorum become met.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from custody import security_log
from custody.access.errors import AccessCode, AccessError
from custody.access.models import ApprovalRow
from policies.approval import Approval, current_approvals
from policies.quorum import QuorumResult
from policies.results import PolicyError, ResultCode


class ApprovalKind(StrEnum):
    """What is approved; the value is stored in ``approvals.kind``."""

    WITHDRAWAL = "withdrawal"
    REFILL = "refill"
    POLICY_CHANGE = "policy_change"
    LEDGER_PROPOSAL = "ledger_proposal"
    FREEZE_LIFT = "freeze_lift"
    HALT_LIFT = "halt_lift"


# The security-log action of an approval, per kind (names kept from before the tables merged).
LOG_ACTIONS: Mapping[ApprovalKind, str] = {
    ApprovalKind.WITHDRAWAL: "withdrawal.approve",
    ApprovalKind.REFILL: "refill.approve",
    ApprovalKind.POLICY_CHANGE: "policy.approve",
    ApprovalKind.LEDGER_PROPOSAL: "ledger.approve",
    # Lifts name each step themselves (``action=``): the request, then the lift.
    ApprovalKind.FREEZE_LIFT: "freeze.lift_approve",
    ApprovalKind.HALT_LIFT: "withdrawals.halt_lift_approve",
}

Tally = Callable[[Sequence[Approval]], QuorumResult]


@dataclass(frozen=True, slots=True)
class Ballot:
    """The thing being approved and who asked for it (who therefore may not approve it)."""

    kind: ApprovalKind
    subject_id: str
    requester: str


@dataclass(frozen=True, slots=True)
class Signed:
    """A signed approval and the subject's quorum check (stored approvals + this one, in order)."""

    approval: Approval
    tally: Tally


@dataclass(frozen=True, slots=True)
class Confirmed:
    """An approval the caller confirmed by the approver's MFA code; counts if they hold ``role``."""

    approver_roles: frozenset[str]
    role: str
    required_count: int = 1


@dataclass(frozen=True, slots=True)
class Added:
    """The outcome of one accepted approval."""

    approval_id: str
    met: bool
    approvers: frozenset[str]


def add_approval(
    session: Session,
    ballot: Ballot,
    approver: str,
    proof: Signed | Confirmed,
    *,
    now_ms: int,
    outcome: str = "ok",
    details: Mapping[str, Any] | None = None,
    action: str | None = None,
) -> Added:
    """Store ``approver``'s approval of ``ballot`` and log it, or raise a refusal and store nothing.

    The caller holds the subject's row lock and has checked the subject accepts approvals.
    ``action`` names the security-log event instead of the kind's default.
    """
    if isinstance(proof, Signed) and proof.approval.approver_id != approver:
        raise AccessError(
            AccessCode.APPROVER_MISMATCH,
            f"approval is by {proof.approval.approver_id[:64]}; submit your own approval",
        )
    if approver == ballot.requester:
        raise PolicyError(
            ResultCode.APPROVAL_SELF,
            f"{approver} requested {ballot.kind} {ballot.subject_id[:80]} and cannot approve it",
        )
    rows = approval_rows(session, ballot.kind, ballot.subject_id)
    if isinstance(proof, Signed):
        added = _count_signed(rows, proof)
        row = ApprovalRow(approval_id=added.approval_id, key_id=proof.approval.key_id,
                          approval=proof.approval.to_bytes())
    else:
        added = _count_confirmed(ballot, rows, approver, proof, now_ms)
        row = ApprovalRow(approval_id=added.approval_id, key_id=None, approval=None)
    row.kind, row.subject_id = ballot.kind.value, ballot.subject_id
    row.approver, row.created_ms = approver, now_ms
    session.add(row)
    security_log.append(
        session, at_ms=now_ms, actor=approver, action=action or LOG_ACTIONS[ballot.kind],
        subject=ballot.subject_id, outcome=outcome,
        details={"approval_id": added.approval_id, "key_id": row.key_id, **(details or {})},
    )
    session.flush()
    return added


def _count_signed(rows: Sequence[ApprovalRow], proof: Signed) -> Added:
    stored = signed_approvals(rows)
    result = proof.tally([*stored, proof.approval])
    for rejected in result.rejected:
        if rejected.index == len(stored):
            raise PolicyError(rejected.refusal.code, rejected.refusal.message)
    assert any(a.approval_id == proof.approval.approval_id for a in result.valid), "a counted approval"
    return Added(proof.approval.approval_id, result.met, frozenset(result.approver_ids))


def _count_confirmed(
    ballot: Ballot, rows: Sequence[ApprovalRow], approver: str, proof: Confirmed, now_ms: int
) -> Added:
    if proof.role not in proof.approver_roles:
        raise PolicyError(
            ResultCode.APPROVER_NOT_IN_GROUP, f"{approver} does not hold the {proof.role} role"
        )
    counted = {r.approver for r in rows if r.approval is None}
    if approver in counted:
        raise PolicyError(
            ResultCode.APPROVER_DUPLICATE,
            f"{approver} already approved {ballot.kind} {ballot.subject_id[:80]}",
        )
    digest = hashlib.sha256(
        f"confirmed\n{ballot.kind.value}\n{ballot.subject_id}\n{approver}\n{now_ms}".encode()
    ).hexdigest()
    approvers = frozenset({*counted, approver})
    return Added(digest, len(approvers) >= proof.required_count, approvers)


def approval_rows(session: Session, kind: ApprovalKind, subject_id: str) -> list[ApprovalRow]:
    """Return every stored approval of one subject, oldest first."""
    return list(
        session.scalars(
            select(ApprovalRow)
            .where(ApprovalRow.kind == kind.value, ApprovalRow.subject_id == subject_id)
            .order_by(ApprovalRow.created_ms, ApprovalRow.approval_id)
        )
    )


def signed_approvals(rows: Sequence[ApprovalRow]) -> list[Approval]:
    """Return the signed approvals among ``rows`` that still count (outdated formats left out)."""
    return current_approvals(r.approval for r in rows if r.approval is not None)


def stored_approvals(session: Session, kind: ApprovalKind, subject_id: str) -> list[Approval]:
    """Return one subject's signed approvals, oldest first (what a bundle carries to the signer)."""
    return signed_approvals(approval_rows(session, kind, subject_id))
