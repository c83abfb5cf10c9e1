"""Withdrawal policy documents in the database and their governance.

The shipped default policy is stored as version 1 the first time a policy is
needed. A change is a proposal (the full new document) that becomes active
only when `policies.policy_change.check_policy_change` finds an admin quorum
of signed approvals, the proposer not counting.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from custody import security_log
from custody.access.approvals import ApprovalKind, Ballot, Signed, add_approval, approval_rows
from custody.access.approvers import load_registry
from custody.access.errors import AccessCode, AccessError
from custody.access.models import PolicyChangeRow, PolicyDocumentRow
from policies.approval import Approval
from policies.default_policy import DEFAULT_POLICY_CHANGE_REQUIREMENT, load_default_policy
from policies.policy_change import PolicyChangeProposal, check_policy_change, propose_policy_change
from policies.policy_document import PolicyDocument
from policies.policy_json import parse_policy_json, parse_policy_object
from policies.quorum import QuorumRequirement, QuorumResult
from policies.results import PolicyError

OPEN, APPLIED, SUPERSEDED = "open", "applied", "superseded"
PROPOSAL_ID_RANDOM_BYTES = 12


@dataclass(frozen=True, slots=True)
class ActivePolicy:
    document: PolicyDocument
    activated_ms: int

    def to_json(self) -> dict[str, object]:
        return {
            "policy_id": self.document.policy_id,
            "version": self.document.version,
            "digest": self.document.digest,
            "activated_ms": self.activated_ms,
            "document": self.document.to_json(),
        }


@dataclass(frozen=True, slots=True)
class ProposalView:
    proposal: PolicyChangeProposal
    document: PolicyDocument
    state: str
    created_ms: int
    approvals: tuple[tuple[str, str, str], ...]  # (approval_id, approver, key_id)

    def to_json(self) -> dict[str, object]:
        p = self.proposal
        return {
            "proposal_id": p.proposal_id,
            "policy_id": p.policy_id,
            "base_version": p.base_version,
            "new_version": p.new_version,
            "document_sha256": p.document_sha256,
            "proposer": p.proposer_id,
            "state": self.state,
            "created_ms": self.created_ms,
            "required": {
                "count": DEFAULT_POLICY_CHANGE_REQUIREMENT.count,
                "group": DEFAULT_POLICY_CHANGE_REQUIREMENT.group,
            },
            "approvals": [{"approval_id": a, "approver": u, "key_id": k} for a, u, k in self.approvals],
            "subject": _subject_json(p),
            "document": self.document.to_json(),
        }


class PolicyStore:
    """Read the active policy; propose and approve changes."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        clock: Callable[[], int],
        requirement: QuorumRequirement = DEFAULT_POLICY_CHANGE_REQUIREMENT,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._requirement = requirement

    def ensure_default(self) -> None:
        """Store the shipped default policy as version 1 if no policy exists yet."""
        with self._sessions() as session:
            if session.scalar(select(PolicyDocumentRow.version).limit(1)) is not None:
                return
        default = load_default_policy()
        try:
            with self._sessions.begin() as session:
                session.add(_document_row(default, self._clock(), None))
                session.flush()
                security_log.append(
                    session,
                    at_ms=self._clock(),
                    actor="system",
                    action="policy.install_default",
                    subject=default.policy_id,
                    details={"version": default.version, "digest": default.digest},
                )
        except IntegrityError:
            pass  # Another process installed it first.

    def active(self) -> ActivePolicy:
        self.ensure_default()
        with self._sessions() as session:
            return active_policy(session)

    def propose(self, proposer: str, raw_document: object) -> ProposalView:
        """Store a proposal to replace the active policy by ``raw_document`` (a JSON object)."""
        proposed = parse_policy_object(raw_document)
        current = self.active().document
        proposal_id = "pc_" + secrets.token_hex(PROPOSAL_ID_RANDOM_BYTES)
        proposal = propose_policy_change(proposal_id, current, proposed, proposer)
        now_ms = self._clock()
        with self._sessions.begin() as session:
            session.add(
                PolicyChangeRow(
                    proposal_id=proposal_id,
                    policy_id=proposal.policy_id,
                    base_version=proposal.base_version,
                    new_version=proposal.new_version,
                    document=proposed.canonical_bytes().decode("utf-8"),
                    document_sha256=proposal.document_sha256,
                    proposer=proposer,
                    state=OPEN,
                    created_ms=now_ms,
                    closed_ms=None,
                )
            )
            session.flush()
            security_log.append(
                session,
                at_ms=now_ms,
                actor=proposer,
                action="policy.propose",
                subject=proposal_id,
                details={"new_version": proposal.new_version, "digest": proposal.document_sha256},
            )
        return ProposalView(proposal, proposed, OPEN, now_ms, ())

    def get(self, proposal_id: str) -> ProposalView:
        with self._sessions() as session:
            return _proposal_view(session, _proposal_row(session, proposal_id))

    def list_proposals(self, state: str | None = None) -> list[ProposalView]:
        query = select(PolicyChangeRow).order_by(PolicyChangeRow.created_ms, PolicyChangeRow.proposal_id)
        if state is not None:
            query = query.where(PolicyChangeRow.state == state)
        with self._sessions() as session:
            return [_proposal_view(session, row) for row in session.scalars(query)]

    def approve(self, actor: str, proposal_id: str, approval: Approval) -> ProposalView:
        """Add ``actor``'s signed approval; activate the new version once the quorum is met."""
        now_ms = self._clock()
        self.ensure_default()
        with self._sessions.begin() as session:
            row = _proposal_row(session, proposal_id, lock=True)
            if row.state != OPEN:
                raise AccessError(AccessCode.PROPOSAL_CLOSED, f"proposal {proposal_id} is {row.state}")
            view = _proposal_view(session, row)
            current = active_policy(session).document
            registry = load_registry(session)

            def tally(approvals: Sequence[Approval]) -> QuorumResult:
                check = check_policy_change(
                    view.proposal, view.document, current, approvals, registry, self._requirement, now_ms
                )
                if check.quorum is None:
                    assert check.refusal is not None
                    raise PolicyError(check.refusal.code, check.refusal.message)
                return check.quorum

            added = add_approval(
                session, Ballot(ApprovalKind.POLICY_CHANGE, proposal_id, row.proposer), actor,
                Signed(approval, tally), now_ms=now_ms,
            )
            if added.met:
                _activate(session, row, view.document, now_ms)
            session.flush()
            return _proposal_view(session, row)


def active_policy(session: Session) -> ActivePolicy:
    """Return the policy in force (the highest activated version)."""
    row = session.scalar(
        select(PolicyDocumentRow)
        .order_by(PolicyDocumentRow.activated_ms.desc(), PolicyDocumentRow.version.desc())
        .limit(1)
    )
    assert row is not None, "no withdrawal policy installed; call PolicyStore.ensure_default()"
    return ActivePolicy(parse_policy_json(row.document.encode("utf-8")), row.activated_ms)


def _activate(session: Session, row: PolicyChangeRow, document: PolicyDocument, now_ms: int) -> None:
    session.add(_document_row(document, now_ms, row.proposal_id))
    row.state, row.closed_ms = APPLIED, now_ms
    others = session.scalars(
        select(PolicyChangeRow).where(
            PolicyChangeRow.state == OPEN, PolicyChangeRow.proposal_id != row.proposal_id
        )
    )
    for other in others:
        other.state, other.closed_ms = SUPERSEDED, now_ms
    security_log.append(
        session,
        at_ms=now_ms,
        actor="system",
        action="policy.activate",
        subject=document.policy_id,
        details={"version": document.version, "digest": document.digest, "proposal_id": row.proposal_id},
    )


def _document_row(document: PolicyDocument, now_ms: int, proposal_id: str | None) -> PolicyDocumentRow:
    return PolicyDocumentRow(
        policy_id=document.policy_id,
        version=document.version,
        document=document.canonical_bytes().decode("utf-8"),
        digest=document.digest,
        activated_ms=now_ms,
        proposal_id=proposal_id,
    )


def _proposal_row(session: Session, proposal_id: str, *, lock: bool = False) -> PolicyChangeRow:
    row = session.get(PolicyChangeRow, proposal_id, with_for_update=lock)
    if row is None:
        raise AccessError(AccessCode.PROPOSAL_NOT_FOUND, f"proposal {proposal_id[:140]} does not exist")
    return row


def _proposal_view(session: Session, row: PolicyChangeRow) -> ProposalView:
    document = parse_policy_json(row.document.encode("utf-8"))
    proposal = PolicyChangeProposal(
        row.proposal_id, row.policy_id, row.base_version, row.new_version, row.document_sha256, row.proposer
    )
    approvals = tuple(
        (a.approval_id, a.approver, a.key_id or "")
        for a in approval_rows(session, ApprovalKind.POLICY_CHANGE, row.proposal_id)
    )
    return ProposalView(proposal, document, row.state, row.created_ms, approvals)


def _subject_json(proposal: PolicyChangeProposal) -> dict[str, object]:
    s = proposal.subject
    return {
        "kind": s.kind.name.lower(),
        "subject_id": s.subject_id,
        "policy_id": s.policy_id,
        "policy_version": s.policy_version,
        "document_sha256": s.document_sha256,
    }


def document_json(document: PolicyDocument) -> str:
    """Return the canonical JSON text of a document (for CLI display)."""
    return json.dumps(document.to_json(), indent=2, sort_keys=True)
