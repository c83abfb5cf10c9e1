"""Alerts and cases: scored findings with evidence, grouped per user into cases officers work.

Lifecycle (one transition table, checked in the statement that changes it)::

    open --escalate--> escalated
    open / escalated --close (resolution, reason)--> closed
    open / escalated: assign, comment (any number of times)

An alert is idempotent by id (the fact that raised it: list entry and subject),
so screening the same thing twice never raises it twice. A new alert joins
the user's open case of its kind, or opens one. Every step is written to the
security log in the same transaction. Nobody handles a case about themselves:
a compliance officer's own cases are invisible to them ("not found"), and
traders hold no permission that reaches this module at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody import security_log
from custody.compliance.codes import ComplianceCode, ComplianceError
from custody.compliance.models import (
    COMMENT_MAX_LEN,
    REASON_MAX_LEN,
    ComplianceAlert,
    ComplianceCase,
    ComplianceCaseComment,
)

OPEN, ESCALATED, CLOSED = "open", "escalated", "closed"
CASE_STATES = (OPEN, ESCALATED, CLOSED)
ACTIVE_STATES = (OPEN, ESCALATED)
TRANSITIONS: Mapping[tuple[str, str], str] = {
    (OPEN, "escalate"): ESCALATED,
    (OPEN, "close"): CLOSED,
    (ESCALATED, "close"): CLOSED,
    (OPEN, "assign"): OPEN,
    (ESCALATED, "assign"): ESCALATED,
    (OPEN, "comment"): OPEN,
    (ESCALATED, "comment"): ESCALATED,
}
RESOLUTIONS = ("true_positive", "false_positive", "no_action", "reported")
MAX_LIST = 500
MAX_SCORE = 100


@dataclass(frozen=True, slots=True)
class AlertInput:
    """A finding to record: who, what, how sure (0..100) and why."""

    alert_id: str
    kind: str
    rule_id: str
    username: str
    subject_kind: str
    subject: str
    score: int
    evidence: Mapping[str, Any]


def alert_json(row: ComplianceAlert) -> dict[str, Any]:
    return {"id": row.id, "kind": row.kind, "rule_id": row.rule_id, "username": row.username,
            "subject_kind": row.subject_kind, "subject": row.subject, "score": row.score,
            "evidence": json.loads(row.evidence), "created_ms": row.created_ms, "case_id": row.case_id}


def case_json(row: ComplianceCase) -> dict[str, Any]:
    return {"id": row.id, "username": row.username, "kind": row.kind, "state": row.state,
            "score": row.score, "title": row.title, "assignee": row.assignee, "opened_ms": row.opened_ms,
            "updated_ms": row.updated_ms, "closed_by": row.closed_by, "closed_ms": row.closed_ms,
            "resolution": row.resolution, "close_reason": row.close_reason}


def comment_json(row: ComplianceCaseComment) -> dict[str, Any]:
    return {"id": row.id, "author": row.author, "kind": row.kind, "body": row.body, "at_ms": row.at_ms}


def raise_alert(
    session: Session, alert: AlertInput, *, now_ms: int, actor: str
) -> tuple[ComplianceAlert, bool]:
    """Record ``alert`` in the caller's transaction, in the user's open case; False if it existed."""
    assert 0 <= alert.score <= MAX_SCORE, f"score was {alert.score}, must be 0..{MAX_SCORE}"
    existing = session.get(ComplianceAlert, alert.alert_id)
    if existing is not None:
        return existing, False
    case = session.scalar(select(ComplianceCase).where(
        ComplianceCase.username == alert.username, ComplianceCase.kind == alert.kind,
        ComplianceCase.state.in_(ACTIVE_STATES)).order_by(ComplianceCase.id).limit(1).with_for_update())
    if case is None:
        case = ComplianceCase(username=alert.username, kind=alert.kind, state=OPEN, score=alert.score,
                              title=f"{alert.kind}: {alert.rule_id}"[:256], opened_ms=now_ms,
                              updated_ms=now_ms)
        session.add(case)
        session.flush()
        security_log.append(session, at_ms=now_ms, actor=actor, action="compliance.case.open",
                            subject=str(case.id), details={"username": alert.username, "kind": alert.kind})
    case.score, case.updated_ms = max(case.score, alert.score), now_ms
    row = ComplianceAlert(id=alert.alert_id, kind=alert.kind, rule_id=alert.rule_id, username=alert.username,
                          subject_kind=alert.subject_kind, subject=alert.subject[:256], score=alert.score,
                          evidence=json.dumps(dict(alert.evidence), sort_keys=True), created_ms=now_ms,
                          case_id=case.id)
    session.add(row)
    session.flush()
    security_log.append(session, at_ms=now_ms, actor=actor, action="compliance.alert", subject=alert.alert_id,
                        details={"case_id": case.id, "rule_id": alert.rule_id, "score": alert.score,
                                 "username": alert.username})
    return row, True


class Cases:
    """Case management for compliance officers (``viewer`` never sees their own cases)."""

    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], int]) -> None:
        self._sessions = sessions
        self._clock = clock

    def list_cases(self, viewer: str, *, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Return cases, newest first, highest score first within a state (``viewer``'s own left out)."""
        assert 1 <= limit <= MAX_LIST, f"limit was {limit}"
        query = select(ComplianceCase).where(ComplianceCase.username != viewer)
        if state is not None:
            _check_choice(state, CASE_STATES, "state")
            query = query.where(ComplianceCase.state == state)
        with self._sessions() as session:
            rows = session.scalars(query.order_by(ComplianceCase.id.desc()).limit(limit))
            return [case_json(r) for r in rows]

    def queue(self, viewer: str, limit: int = 100) -> list[dict[str, Any]]:
        """Return the active cases to work: escalated first, then by score, unassigned before assigned."""
        with self._sessions() as session:
            rows = list(session.scalars(select(ComplianceCase).where(
                ComplianceCase.username != viewer, ComplianceCase.state.in_(ACTIVE_STATES)).limit(MAX_LIST)))
        rows.sort(key=lambda r: (r.state != ESCALATED, -r.score, r.assignee is not None, r.id))
        return [case_json(r) for r in rows[:limit]]

    def get(self, viewer: str, case_id: int) -> dict[str, Any]:
        """Return one case with its alerts and comments."""
        with self._sessions() as session:
            row = _visible(session, viewer, case_id)
            alerts = session.scalars(select(ComplianceAlert).where(ComplianceAlert.case_id == case_id)
                                     .order_by(ComplianceAlert.created_ms, ComplianceAlert.id))
            comments = session.scalars(select(ComplianceCaseComment).where(
                ComplianceCaseComment.case_id == case_id).order_by(ComplianceCaseComment.id))
            return {**case_json(row), "alerts": [alert_json(a) for a in alerts],
                    "comments": [comment_json(c) for c in comments]}

    def list_alerts(self, viewer: str, *, kind: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Return alerts, newest first (``viewer``'s own left out)."""
        assert 1 <= limit <= MAX_LIST, f"limit was {limit}"
        query = select(ComplianceAlert).where(ComplianceAlert.username != viewer)
        if kind is not None:
            query = query.where(ComplianceAlert.kind == kind)
        with self._sessions() as session:
            rows = session.scalars(query.order_by(ComplianceAlert.created_ms.desc(), ComplianceAlert.id)
                                   .limit(limit))
            return [alert_json(r) for r in rows]

    def assign(self, viewer: str, case_id: int, assignee: str) -> dict[str, Any]:
        """Assign the case to ``assignee`` (a compliance officer other than its subject)."""
        return self._step(viewer, case_id, "assign", assignee, lambda row: setattr(row, "assignee", assignee),
                          assignee=assignee)

    def comment(self, viewer: str, case_id: int, body: str) -> dict[str, Any]:
        """Add a note to the case."""
        _check_text(body, COMMENT_MAX_LEN, "body")
        return self._step(viewer, case_id, "comment", body, lambda row: None)

    def escalate(self, viewer: str, case_id: int, reason: str) -> dict[str, Any]:
        """Escalate the case (to the MLRO), with the reason."""
        _check_text(reason, REASON_MAX_LEN, "reason")
        return self._step(viewer, case_id, "escalate", reason, lambda row: None)

    def close(self, viewer: str, case_id: int, resolution: str, reason: str) -> dict[str, Any]:
        """Close the case with a resolution and reason.

        A sanctions freeze the case raised stays: the admins' two-person freeze lift
        refuses ``sanctions:`` freezes (1125 freeze_compliance_owned); after a close as
        ``false_positive`` two compliance officers clear it (custody.compliance.clearance).
        """
        _check_choice(resolution, RESOLUTIONS, "resolution")
        _check_text(reason, REASON_MAX_LEN, "reason")
        now_ms = self._clock()

        def apply(row: ComplianceCase) -> None:
            row.closed_by, row.closed_ms = viewer, now_ms
            row.resolution, row.close_reason = resolution, reason

        return self._step(viewer, case_id, "close", reason, apply, resolution=resolution)

    def _step(self, viewer: str, case_id: int, action: str, text: str,
              apply: Callable[[ComplianceCase], None],
              **details: str) -> dict[str, Any]:
        now_ms = self._clock()
        with self._sessions.begin() as session:
            row = _visible(session, viewer, case_id, lock=True)
            target = TRANSITIONS.get((row.state, action))
            if target is None:
                raise ComplianceError(ComplianceCode.CASE_TRANSITION_INVALID,
                                      f"case {case_id} is {row.state}; it cannot {action}")
            if action == "assign" and details.get("assignee") == row.username:
                raise ComplianceError(ComplianceCode.CASE_INPUT_INVALID,
                                      "a case cannot be assigned to the user it is about")
            apply(row)
            row.state, row.updated_ms = target, now_ms
            session.add(ComplianceCaseComment(case_id=case_id, author=viewer, kind=action, body=text,
                                              at_ms=now_ms))
            security_log.append(session, at_ms=now_ms, actor=viewer, action=f"compliance.case.{action}",
                                subject=str(case_id), outcome=target, details=details)
            session.flush()
            return case_json(row)


def _visible(session: Session, viewer: str, case_id: int, *, lock: bool = False) -> ComplianceCase:
    row = session.get(ComplianceCase, case_id, with_for_update=lock)
    # A case about the viewer is "not found": its existence is not revealed to them.
    if row is None or row.username == viewer:
        raise ComplianceError(ComplianceCode.CASE_NOT_FOUND, f"case {case_id} does not exist")
    return row


def _check_choice(value: str, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise ComplianceError(ComplianceCode.CASE_INPUT_INVALID,
                              f"{name} was {value[:40]!r}, must be one of {', '.join(allowed)}")


def _check_text(value: str, max_len: int, name: str) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise ComplianceError(ComplianceCode.CASE_INPUT_INVALID,
                              f"{name} must be 1..{max_len} characters and not blank")
