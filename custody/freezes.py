"""Account freezes: an owner whose withdrawals stop until a person looks (docs/wallets.md).

A freeze is raised by a fact the platform cannot undo by itself, today a
deposit reorganised out of the chain *after* it was credited (the watcher's
correcting entry may have left a shortfall the owner must settle). While any
freeze of an owner is active, creating a withdrawal is refused (4112
``account_frozen``) and approved hot withdrawals of that owner are not
dispatched. Freezes are idempotent by id (the fact that raised them), written
in the same database transaction as that fact and its security-log alert.
Lifting one needs two admins; nothing lifts a freeze automatically.
Operators lift through ``request_lift`` (a first admin, with a reason) then
``approve_lift`` (a second, different admin), both with MFA checked by the API /
CLI first. Both steps are confirmed approvals (kind ``freeze_lift``) in the one
``approvals`` table, written by ``custody.access.approvals.add_approval`` (which
refuses a non-admin and the same admin twice) together with their security-log
event. Freezes raised by sanctions screening (id ``sanctions:...``) are
compliance's: this path refuses them (1125 ``freeze_compliance_owned``); two
compliance officers clear them (custody/compliance/clearance.py).

State of one freeze::

    active --request_lift (admin A, reason)--> lift requested --approve_lift (admin B != A)--> lifted
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Index, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from custody.access.approvals import ApprovalKind, Ballot, Confirmed, add_approval, approval_rows
from custody.access.errors import AccessCode, AccessError
from custody.db import Base
from policies.roles import Role

FREEZE_ID_MAX_LEN = 160
REASON_MAX_LEN = 256
# Freezes whose id starts so belong to compliance (custody/compliance/screening.py): not liftable here.
COMPLIANCE_PREFIXES = ("sanctions:",)


class AccountFreeze(Base):
    """One reason an owner's withdrawals are stopped."""

    __tablename__ = "account_freezes"
    __table_args__ = (Index("ix_account_freezes_owner", "owner"),)

    id: Mapped[str] = mapped_column(String(FREEZE_ID_MAX_LEN), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(REASON_MAX_LEN))
    raised_by: Mapped[str] = mapped_column(String(64))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    lifted_ms: Mapped[int | None] = mapped_column(BigInteger)
    # Why the first admin asked for the lift; who asked and who approved are approvals
    # (kind freeze_lift, migration 0026_lift_approvals).
    lift_reason: Mapped[str | None] = mapped_column(String(REASON_MAX_LEN))


@dataclass(frozen=True, slots=True)
class FreezeView:
    """A freeze as shown to operators."""

    id: str
    owner: str
    reason: str
    raised_by: str
    created_ms: int
    lifted_by: str | None
    lifted_ms: int | None
    lift_requested_by: str | None = None
    lift_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "owner": self.owner, "reason": self.reason, "raised_by": self.raised_by,
                "created_ms": self.created_ms, "lift_requested_by": self.lift_requested_by,
                "lift_reason": self.lift_reason, "lifted_by": self.lifted_by, "lifted_ms": self.lifted_ms,
                "active": self.lifted_ms is None}


def freeze(session: Session, *, freeze_id: str, owner: str, reason: str, raised_by: str, now_ms: int) -> bool:
    """Freeze ``owner`` for ``freeze_id`` inside the caller's transaction; False if it already exists."""
    assert len(freeze_id) <= FREEZE_ID_MAX_LEN, f"freeze id was {len(freeze_id)} chars"
    if session.get(AccountFreeze, freeze_id) is not None:
        return False
    session.add(AccountFreeze(id=freeze_id, owner=owner, reason=reason[:REASON_MAX_LEN],
                              raised_by=raised_by[:64], created_ms=now_ms))
    session.flush()
    return True


def is_frozen(session: Session, owner: str) -> bool:
    """Return whether ``owner`` has an active freeze."""
    found = session.scalar(select(AccountFreeze.id).where(
        AccountFreeze.owner == owner, AccountFreeze.lifted_ms.is_(None)).limit(1))
    return found is not None


def active(session: Session, owner: str | None = None) -> list[FreezeView]:
    """Return the active freezes (of ``owner``), oldest first."""
    query = select(AccountFreeze).where(AccountFreeze.lifted_ms.is_(None))
    if owner is not None:
        query = query.where(AccountFreeze.owner == owner)
    return [_view(session, row) for row in session.scalars(query.order_by(AccountFreeze.created_ms))]


def get(session: Session, freeze_id: str) -> FreezeView | None:
    """Return one freeze (active or lifted), or None if unknown."""
    row = session.get(AccountFreeze, freeze_id) if len(freeze_id) <= FREEZE_ID_MAX_LEN else None
    return None if row is None else _view(session, row)


# Both lift approvals count; neither admin is "the requester" that add_approval keeps out, and
# add_approval refuses the same admin twice.
_NO_REQUESTER = ""
_LIFT_APPROVALS = 2


def _open_for_lift(session: Session, freeze_id: str) -> AccountFreeze:
    row = session.get(AccountFreeze, freeze_id, with_for_update=True) if len(freeze_id) <= FREEZE_ID_MAX_LEN \
        else None
    if row is None:
        raise AccessError(AccessCode.PROPOSAL_NOT_FOUND, f"freeze {freeze_id[:80]} does not exist")
    if row.id.startswith(COMPLIANCE_PREFIXES):
        raise AccessError(AccessCode.FREEZE_COMPLIANCE_OWNED, f"freeze {row.id[:80]} was raised by "
                          "sanctions screening: compliance must clear it, operators cannot lift it")
    if row.lifted_ms is not None:
        raise AccessError(AccessCode.PROPOSAL_CLOSED, f"freeze {row.id[:80]} is already lifted")
    return row


def _lift_approval(session: Session, row: AccountFreeze, admin: str, roles: Collection[str], now_ms: int,
                   *, outcome: str, action: str, details: dict[str, Any]) -> bool:
    """Record one admin's confirmed lift approval; return whether the lift now has both."""
    added = add_approval(session, Ballot(ApprovalKind.FREEZE_LIFT, row.id, _NO_REQUESTER), admin[:64],
                         Confirmed(frozenset(roles), Role.ADMIN.value, _LIFT_APPROVALS), now_ms=now_ms,
                         outcome=outcome, action=action, details=details)
    return added.met


def request_lift(session: Session, freeze_id: str, *, admin: str, roles: Collection[str], reason: str,
                 now_ms: int) -> FreezeView:
    """Ask for a freeze's lift (first admin, MFA checked by the caller); a pending request stands as is."""
    reason = reason.strip()
    if not reason or len(reason) > REASON_MAX_LEN:
        raise AccessError(AccessCode.PROPOSAL_INVALID, f"reason must be 1..{REASON_MAX_LEN} characters")
    row = _open_for_lift(session, freeze_id)
    if not approval_rows(session, ApprovalKind.FREEZE_LIFT, row.id):
        _lift_approval(session, row, admin, roles, now_ms, outcome="requested", action="freeze.lift_request",
                       details={"owner": row.owner, "reason": reason})
        row.lift_reason = reason
    return _view(session, row)


def approve_lift(session: Session, freeze_id: str, *, admin: str, roles: Collection[str],
                 now_ms: int) -> FreezeView:
    """Approve a requested lift (a second, different admin, MFA checked by the caller): the freeze ends."""
    row = _open_for_lift(session, freeze_id)
    approvals = approval_rows(session, ApprovalKind.FREEZE_LIFT, row.id)
    if not approvals:
        raise AccessError(AccessCode.FREEZE_LIFT_NOT_REQUESTED, f"nobody requested the lift of freeze "
                          f"{row.id[:80]}: a first admin must request it with a reason")
    requester = approvals[0].approver
    if requester == admin[:64]:
        raise AccessError(AccessCode.APPROVER_MISMATCH, "a second admin must approve the lift: the "
                          "requester cannot approve their own request")
    # Stamped after the request even on a coarse clock: the approvals table alone orders the two.
    at_ms = max(now_ms, approvals[-1].created_ms + 1)
    met = _lift_approval(session, row, admin, roles, at_ms, outcome="lifted", action="freeze.lift",
                         details={"owner": row.owner, "requester": requester,
                                  "reason": row.lift_reason or ""})
    assert met, f"two distinct admins approved the lift of {row.id}"
    row.lifted_ms = now_ms
    return _view(session, row)


def _view(session: Session, row: AccountFreeze) -> FreezeView:
    approvers = [a.approver for a in approval_rows(session, ApprovalKind.FREEZE_LIFT, row.id)]
    lifted_by = ",".join(approvers) if row.lifted_ms is not None and approvers else None
    return FreezeView(row.id, row.owner, row.reason, row.raised_by, row.created_ms, lifted_by,
                      row.lifted_ms, approvers[0] if approvers else None, row.lift_reason)
