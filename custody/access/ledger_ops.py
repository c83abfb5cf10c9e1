"""Manual ledger operations need two people: one admin proposes, another approves with MFA.

An admin key could once post any transfer alone: move a customer's funds, or
mint 2**64 USDC into a user by debiting a platform wallet account. Now a
manual operation (transfers, a post or void of a pending transfer, a mint, a
correction) is stored as a proposal; it touches the ledger only when a second
admin approves it, all transfers together or none (linked). Each step is in
the security log, and every entry it writes records its proposer as actor and
names the proposal in the security log next to the approver. The MFA codes
are checked by the API / CLI layer before these methods run.

State machine::

    proposed --approve (another admin)--> executed | failed (the ledger refused; nothing applied)
             --reject (any admin)--> rejected
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody import security_log
from custody.access.approvals import ApprovalKind, Ballot, Confirmed, add_approval
from custody.access.errors import AccessCode, AccessError
from custody.access.models import LedgerProposalRow, User
from custody.ledger.entry import TransferKind
from custody.ledger.posting import TransferRequest, validate_request_shape
from custody.ledger.service import MAX_BATCH, Ledger, TransferResult
from policies.roles import Role

PROPOSED, EXECUTED, FAILED, REJECTED = "proposed", "executed", "failed", "rejected"
PROPOSAL_STATES = (PROPOSED, EXECUTED, FAILED, REJECTED)
REASON_MAX_CHARS = 256
LIST_MAX = 200
FIELDS = ("id", "kind", "debit_account", "credit_account", "amount", "asset", "pending_id", "timeout_s",
          "code", "reference")


@dataclass(frozen=True, slots=True)
class LedgerProposalView:
    """A proposal as the API and CLI show it."""

    row: LedgerProposalRow

    @property
    def id(self) -> str:
        return self.row.proposal_id

    @property
    def state(self) -> str:
        return self.row.state

    def requests(self) -> list[TransferRequest]:
        return [_request_from_json(item) for item in json.loads(self.row.transfers)]

    def to_json(self) -> dict[str, Any]:
        r = self.row
        return {
            "id": r.proposal_id, "proposer": r.proposer, "reason": r.reason, "state": r.state,
            "transfers": json.loads(r.transfers), "created_ms": r.created_ms, "decided_by": r.decided_by,
            "decided_ms": r.decided_ms, "results": None if r.results is None else json.loads(r.results),
        }


class LedgerOperations:
    """Propose, approve and reject manual ledger operations."""

    def __init__(self, sessions: sessionmaker[Session], ledger: Ledger, clock: Callable[[], int]) -> None:
        self._sessions = sessions
        self._ledger = ledger
        self._clock = clock

    def propose(self, proposer: str, requests: Sequence[TransferRequest], reason: str) -> LedgerProposalView:
        """Store a proposal of ``requests`` (checked for shape now, for funds when approved)."""
        if not 1 <= len(requests) <= MAX_BATCH:
            raise AccessError(AccessCode.PROPOSAL_INVALID, f"a proposal holds 1..{MAX_BATCH} transfers")
        for request in requests:
            validate_request_shape(request)
        self._dry_run(proposer, requests)
        if len(reason) > REASON_MAX_CHARS:
            raise AccessError(AccessCode.PROPOSAL_INVALID, f"reason must be at most {REASON_MAX_CHARS} chars")
        now_ms = self._clock()
        row = LedgerProposalRow(
            proposal_id="lp_" + secrets.token_hex(12), proposer=proposer, reason=reason,
            transfers=json.dumps([_request_json(r) for r in requests], sort_keys=True, separators=(",", ":")),
            state=PROPOSED, created_ms=now_ms,
        )
        with self._sessions.begin() as session:
            session.add(row)
            session.flush()
            security_log.append(session, at_ms=now_ms, actor=proposer, action="ledger.propose",
                                subject=row.proposal_id, outcome=PROPOSED,
                                details={"transfers": len(requests), "reason": reason})
            return LedgerProposalView(row)

    def _dry_run(self, proposer: str, requests: Sequence[TransferRequest]) -> None:
        """Apply ``requests`` in a transaction that is rolled back; refuse what cannot apply now.

        A proposal another admin could only ever see fail (an unknown account, short
        funds, a pending transfer that does not exist) is refused at once. The ledger
        may still change before the approval; then the approval fails, applying nothing.
        """
        with self._sessions() as session:
            try:
                results = self._ledger.submit_in(session, requests, actor=f"user:{proposer}")
            finally:
                session.rollback()
        if not all(r.ok for r in results):
            raise ProposalRefused(results)

    def approve(self, approver: str, proposal_id: str) -> tuple[LedgerProposalView, list[TransferResult]]:
        """Apply the proposal's transfers (all or none) on behalf of its proposer; ``approver`` must differ.

        The transfers, the state change and the security-log event commit in one
        transaction; if the ledger refuses any transfer, none is applied and the
        proposal is closed as ``failed`` with the ledger's answers.
        """
        now_ms = self._clock()
        try:
            with self._sessions.begin() as session:
                row = self._open(session, proposal_id)
                requests = LedgerProposalView(row).requests()
                results = self._ledger.submit_in(session, requests, actor=f"user:{row.proposer}")
                if not all(r.ok for r in results):
                    raise _Refused(results)
                return self._decide(session, row, approver, EXECUTED, results, now_ms), results
        except _Refused as refused:
            # The ledger's transfers rolled back; the approval and the failure are recorded.
            with self._sessions.begin() as session:
                row = self._open(session, proposal_id)
                return self._decide(session, row, approver, FAILED, refused.results, now_ms), refused.results

    def _decide(self, session: Session, row: LedgerProposalRow, approver: str, state: str,
                results: list[TransferResult], now_ms: int) -> LedgerProposalView:
        """Record ``approver``'s approval (refused: nothing is written) and close the proposal."""
        user = session.get(User, approver)
        active = user is not None and user.disabled_ms is None
        roles = frozenset(user.roles.split(",")) if user is not None and active else frozenset[str]()
        add_approval(
            session, Ballot(ApprovalKind.LEDGER_PROPOSAL, row.proposal_id, row.proposer), approver,
            Confirmed(roles, Role.ADMIN.value), now_ms=now_ms, outcome=state,
            details={"proposer": row.proposer, "transfers": [r.id for r in results]},
        )
        row.state, row.decided_by, row.decided_ms = state, approver, now_ms
        row.results = json.dumps([_result_json(r, applied=state == EXECUTED) for r in results],
                                 sort_keys=True, separators=(",", ":"))
        return LedgerProposalView(row)

    def reject(self, admin: str, proposal_id: str, reason: str) -> LedgerProposalView:
        """Close a proposal without touching the ledger."""
        now_ms = self._clock()
        with self._sessions.begin() as session:
            row = self._open(session, proposal_id)
            row.state, row.decided_by, row.decided_ms = REJECTED, admin, now_ms
            security_log.append(session, at_ms=now_ms, actor=admin, action="ledger.reject",
                                subject=proposal_id, outcome=REJECTED,
                                details={"reason": reason[:REASON_MAX_CHARS]})
            return LedgerProposalView(row)

    def get(self, proposal_id: str) -> LedgerProposalView:
        with self._sessions() as session:
            row = session.get(LedgerProposalRow, proposal_id)
            if row is None:
                raise _not_found(proposal_id)
            return LedgerProposalView(row)

    def list(self, state: str | None = None, limit: int = 100) -> list[LedgerProposalView]:
        query = (select(LedgerProposalRow).order_by(LedgerProposalRow.created_ms.desc())
                 .limit(min(limit, LIST_MAX)))
        if state is not None:
            query = query.where(LedgerProposalRow.state == state)
        with self._sessions() as session:
            return [LedgerProposalView(row) for row in session.scalars(query)]

    def _open(self, session: Session, proposal_id: str) -> LedgerProposalRow:
        row = session.get(LedgerProposalRow, proposal_id, with_for_update=True)
        if row is None:
            raise _not_found(proposal_id)
        if row.state != PROPOSED:
            raise AccessError(AccessCode.PROPOSAL_CLOSED, f"ledger proposal {row.proposal_id} is {row.state}")
        return row


def _request_json(request: TransferRequest) -> dict[str, Any]:
    data = {name: getattr(request, name) for name in FIELDS}
    data["kind"] = request.kind.value
    if request.amount is not None:
        data["amount"] = str(request.amount)
    return data


def _request_from_json(data: dict[str, Any]) -> TransferRequest:
    amount = data.get("amount")
    return TransferRequest(
        id=data["id"], kind=TransferKind(data["kind"]), debit_account=data.get("debit_account"),
        credit_account=data.get("credit_account"), amount=None if amount is None else int(amount),
        asset=data.get("asset"), pending_id=data.get("pending_id"), timeout_s=data.get("timeout_s", 0),
        code=data.get("code", 0), reference=data.get("reference", ""),
    )


def _not_found(proposal_id: str) -> AccessError:
    return AccessError(AccessCode.PROPOSAL_NOT_FOUND, f"ledger proposal {proposal_id[:80]} does not exist")


class ProposalRefused(Exception):
    """The ledger would refuse the proposed transfers now: nothing was stored."""

    def __init__(self, results: list[TransferResult]) -> None:
        super().__init__("the ledger would refuse the proposal")
        self.results = results


class _Refused(Exception):
    """Roll the approval back: the ledger refused a transfer of the proposal."""

    def __init__(self, results: list[TransferResult]) -> None:
        super().__init__("the ledger refused the proposal")
        self.results = results


def _result_json(result: TransferResult, *, applied: bool) -> dict[str, Any]:
    status = result.status.value if applied or result.code is not None else "not_applied"
    body: dict[str, Any] = {"index": result.index, "id": result.id, "status": status}
    if applied and result.entry is not None:
        body["transfer"] = result.entry.to_dict()
    if result.code is not None:
        body.update(code=int(result.code), error=result.code.error, message=result.message)
    return body
