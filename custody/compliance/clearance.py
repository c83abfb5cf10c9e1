"""Clearing a sanctions freeze: two compliance officers, after the case behind it closed as a false positive.

A sanctions hit freezes its user (`custody.freezes`, id ``sanctions:<user>:<key>``,
key = the first 24 hex of SHA-256 over ``<family>:<canonical address>``).
Operators cannot lift it (1125 ``freeze_compliance_owned``); compliance
clears it here, in two steps by two different officers, each with MFA
(checked by the API) and in the security log::

    active --request (officer A, reason)--> clearance requested --approve (officer B != A)--> lifted

Both steps require every case holding a sanctions alert on that address for
that user to be closed with resolution ``false_positive`` (a true positive,
``no_action`` or ``reported`` resolution, or a case still open, keeps the
freeze), and neither officer may be the frozen user. The approval re-checks
everything under a row lock on the freeze, so a case reopened by a new alert
between the steps (a new alert opens a new case) stops it. Both steps are
confirmed approvals of kind ``freeze_lift`` in the one ``approvals`` table
(`custody.access.approvals.add_approval`, role ``compliance``, two distinct
approvers), like the operators' lift of other freezes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody import freezes
from custody.access.approvals import ApprovalKind, Ballot, Confirmed, add_approval, approval_rows
from custody.access.models import User
from custody.compliance.codes import ComplianceCode, ComplianceError
from custody.compliance.models import ComplianceAlert, ComplianceCase
from custody.compliance.screening import SANCTIONS
from policies.roles import Role

PREFIX = "sanctions:"
FALSE_POSITIVE = "false_positive"
CLEAR_APPROVALS = 2


def freeze_key(family: str, normalised: str) -> str:
    """Return the key a sanctions freeze of this canonical address carries (screening's rule)."""
    return hashlib.sha256(f"{family}:{normalised}".encode()).hexdigest()[:24]


class Clearance:
    """The compliance path that lifts sanctions freezes."""

    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], int]) -> None:
        self._sessions = sessions
        self._clock = clock

    def request(self, officer: str, freeze_id: str, reason: str) -> dict[str, Any]:
        """First officer: ask to clear ``freeze_id`` with a reason; a pending request stands as is."""
        reason = reason.strip() if isinstance(reason, str) else ""
        if not reason or len(reason) > freezes.REASON_MAX_LEN:
            raise ComplianceError(ComplianceCode.CLEARANCE_INPUT_INVALID,
                                  f"reason must be 1..{freezes.REASON_MAX_LEN} characters")
        now_ms = self._clock()
        with self._sessions.begin() as session:
            row, cases = self._clearable(session, officer, freeze_id)
            if not approval_rows(session, ApprovalKind.FREEZE_LIFT, row.id):
                _approve(session, row, officer, now_ms, outcome="requested",
                         action="compliance.freeze.clear_request",
                         details={"owner": row.owner, "cases": cases, "reason": reason})
                row.lift_reason = reason
            return _json(session, row, cases)

    def approve(self, officer: str, freeze_id: str) -> dict[str, Any]:
        """Second, different officer: lift the freeze (re-checks the cases under the freeze's lock)."""
        now_ms = self._clock()
        with self._sessions.begin() as session:
            row, cases = self._clearable(session, officer, freeze_id)
            approvals = approval_rows(session, ApprovalKind.FREEZE_LIFT, row.id)
            if not approvals:
                raise ComplianceError(ComplianceCode.FREEZE_NOT_CLEARABLE,
                                      f"nobody requested clearing freeze {row.id[:80]}: a first officer must "
                                      "request it with a reason")
            requester = approvals[0].approver
            if requester == officer[:64]:
                raise ComplianceError(ComplianceCode.CLEARANCE_APPROVER_INVALID,
                                      "a second compliance officer must approve: the requester cannot "
                                      "approve their own request")
            at_ms = max(now_ms, approvals[-1].created_ms + 1)
            met = _approve(session, row, officer, at_ms, outcome="lifted", action="compliance.freeze.clear",
                           details={"owner": row.owner, "requester": requester, "cases": cases,
                                    "reason": row.lift_reason or ""})
            assert met, f"two distinct officers cleared {row.id}"
            row.lifted_ms = now_ms
            session.flush()
            return _json(session, row, cases)

    def active(self, officer: str) -> list[dict[str, Any]]:
        """Return the active sanctions freezes (the officer's own left out), oldest first."""
        with self._sessions() as session:
            rows = session.scalars(select(freezes.AccountFreeze).where(
                freezes.AccountFreeze.id.startswith(PREFIX), freezes.AccountFreeze.lifted_ms.is_(None),
                freezes.AccountFreeze.owner != officer).order_by(freezes.AccountFreeze.created_ms).limit(500))
            return [_json(session, row, [c for c, _ in _cases(session, row)]) for row in rows]

    def _clearable(self, session: Session, officer: str,
                   freeze_id: str) -> tuple[freezes.AccountFreeze, list[int]]:
        row = (session.get(freezes.AccountFreeze, freeze_id, with_for_update=True)
               if isinstance(freeze_id, str) and len(freeze_id) <= freezes.FREEZE_ID_MAX_LEN else None)
        if row is None or row.owner == officer:
            # An officer's own freeze is "not found": its existence is not revealed to them.
            raise ComplianceError(ComplianceCode.FREEZE_NOT_FOUND,
                                  f"freeze {freeze_id[:80]!r} does not exist")
        if not row.id.startswith(PREFIX):
            raise ComplianceError(ComplianceCode.FREEZE_NOT_CLEARABLE,
                                  f"freeze {row.id[:80]} was not raised by sanctions screening: two admins "
                                  "lift it (docs/wallets.md)")
        if row.lifted_ms is not None:
            raise ComplianceError(ComplianceCode.FREEZE_NOT_CLEARABLE,
                                  f"freeze {row.id[:80]} is already lifted")
        cases = _cases(session, row)
        if not cases:
            raise ComplianceError(ComplianceCode.FREEZE_NOT_CLEARABLE,
                                  f"no sanctions case holds the hit behind freeze {row.id[:80]}")
        blocking = [f"case {case_id} is {state}" for case_id, state in cases
                    if state != f"closed:{FALSE_POSITIVE}"]
        if blocking:
            raise ComplianceError(ComplianceCode.FREEZE_NOT_CLEARABLE,
                                  f"freeze {row.id[:80]} stays until every case behind it is closed as "
                                  f"{FALSE_POSITIVE}: {'; '.join(blocking[:5])}")
        return row, [case_id for case_id, _ in cases]


def _cases(session: Session, row: freezes.AccountFreeze) -> list[tuple[int, str]]:
    """Return (case id, "state" or "closed:<resolution>") of every case with a hit behind the freeze."""
    key = row.id.rsplit(":", 1)[-1]
    alerts = session.scalars(select(ComplianceAlert).where(
        ComplianceAlert.username == row.owner, ComplianceAlert.kind == SANCTIONS))
    case_ids = set()
    for alert in alerts:
        evidence = json.loads(alert.evidence)
        family, normalised = evidence.get("family"), evidence.get("normalised")
        if isinstance(family, str) and isinstance(normalised, str) and freeze_key(family, normalised) == key:
            case_ids.add(alert.case_id)
    found = []
    for case_id in sorted(case_ids):
        case = session.get(ComplianceCase, case_id)
        assert case is not None
        found.append((case_id, case.state if case.state != "closed" else f"closed:{case.resolution}"))
    return found


def _approve(session: Session, row: freezes.AccountFreeze, officer: str, now_ms: int, *, outcome: str,
             action: str, details: dict[str, Any]) -> bool:
    """Record one officer's confirmed clearance (kind freeze_lift, two compliance officers); True when met."""
    roles = session.scalar(select(User.roles).where(User.username == officer)) or ""
    added = add_approval(session, Ballot(ApprovalKind.FREEZE_LIFT, row.id, ""), officer[:64],
                         Confirmed(frozenset(roles.split(",")), Role.COMPLIANCE.value, CLEAR_APPROVALS),
                         now_ms=now_ms, outcome=outcome, action=action, details=details)
    return added.met


def _json(session: Session, row: freezes.AccountFreeze, cases: list[int]) -> dict[str, Any]:
    session.flush()
    view = freezes.get(session, row.id)
    assert view is not None
    return {"id": view.id, "owner": view.owner, "reason": view.reason, "created_ms": view.created_ms,
            "clear_requested_by": view.lift_requested_by, "clear_reason": view.lift_reason,
            "lifted_by": view.lifted_by, "lifted_ms": view.lifted_ms, "active": view.lifted_ms is None,
            "cases": cases}
