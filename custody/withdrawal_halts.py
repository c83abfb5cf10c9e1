"""Withdrawal kill switches: a per-chain halt and the global freeze (docs/operations.md).

One admin stops withdrawals at once: of one chain (``chain:bitcoin``,
``chain:ethereum``) or of everything (``global``). While a halt covers a
withdrawal's chain, creating it is refused (4120 ``withdrawals_halted``) and
an approved one is not handed to the hot wallet (it waits, its hold intact).
Lifting needs two people: one admin proposes the lift, a *different* admin
approves it with MFA (checked by the API / CLI before these functions run).
Both steps are confirmed approvals (kind ``halt_lift``) in the one ``approvals``
table, written by ``custody.access.approvals.add_approval`` (migration
0026_lift_approvals moved them out of this table). Every step is in the
security log, in the same transaction as the change.

State of one halt::

    active --propose_lift (admin A)--> lift proposed --approve_lift (admin B != A)--> lifted
"""

from __future__ import annotations

import secrets
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import BigInteger, Index, String, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from custody import security_log
from custody.access.approvals import ApprovalKind, Ballot, Confirmed, add_approval, approval_rows
from custody.access.errors import AccessCode, AccessError
from custody.db import Base
from policies.roles import Role

GLOBAL: Final = "global"
CHAIN_OF_ASSET: Final[dict[str, str]] = {"BTC": "bitcoin", "ETH": "ethereum", "USDC": "ethereum"}
SCOPES: Final = (GLOBAL, *sorted({f"chain:{c}" for c in CHAIN_OF_ASSET.values()}))
REASON_MAX_CHARS: Final = 256


class WithdrawalHalt(Base):
    """One halt of withdrawals (global or one chain), until two admins lift it."""

    __tablename__ = "withdrawal_halts"
    __table_args__ = (
        Index("ix_withdrawal_halts_scope", "scope"),
        # At most one active halt per scope, whatever runs concurrently (migration 0022_halt_unique):
        # two admins halting at once on PostgreSQL could each insert a row (FOR UPDATE locks no
        # row that does not exist yet).
        Index("uq_withdrawal_halts_active_scope", "scope", unique=True,
              sqlite_where=text("lifted_ms IS NULL"), postgresql_where=text("lifted_ms IS NULL")),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    scope: Mapped[str] = mapped_column(String(40))
    reason: Mapped[str] = mapped_column(String(REASON_MAX_CHARS))
    raised_by: Mapped[str] = mapped_column(String(64))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    # Who proposed and who approved the lift are approvals (kind halt_lift).
    lifted_ms: Mapped[int | None] = mapped_column(BigInteger)


@dataclass(frozen=True, slots=True)
class HaltView:
    """A halt as operators see it."""

    id: str
    scope: str
    reason: str
    raised_by: str
    created_ms: int
    lift_proposed_by: str | None
    lifted_by: str | None
    lifted_ms: int | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "scope": self.scope, "reason": self.reason, "raised_by": self.raised_by,
                "created_ms": self.created_ms, "lift_proposed_by": self.lift_proposed_by,
                "lifted_by": self.lifted_by, "lifted_ms": self.lifted_ms, "active": self.lifted_ms is None}


def scope_of_asset(asset: str) -> str | None:
    """Return the chain scope (``chain:<name>``) an asset's withdrawals move on, if known."""
    chain = CHAIN_OF_ASSET.get(asset)
    return None if chain is None else f"chain:{chain}"


def halted(session: Session, asset: str) -> HaltView | None:
    """Return the active halt that stops withdrawals of ``asset`` (the global freeze first), or None."""
    scopes = [GLOBAL]
    chain = scope_of_asset(asset)
    if chain is not None:
        scopes.append(chain)
    rows = session.scalars(select(WithdrawalHalt).where(
        WithdrawalHalt.scope.in_(scopes), WithdrawalHalt.lifted_ms.is_(None)
    ).order_by(WithdrawalHalt.created_ms))
    found = sorted(rows, key=lambda r: (r.scope != GLOBAL, r.created_ms))
    return _view(session, found[0]) if found else None


def halt(session: Session, *, scope: str, reason: str, admin: str, now_ms: int) -> HaltView:
    """Stop withdrawals of ``scope`` now (one admin); an active halt of the scope is returned as is."""
    if scope not in SCOPES:
        raise AccessError(AccessCode.PROPOSAL_INVALID, f"scope was {scope[:40]!r}, must be one of "
                          f"{', '.join(SCOPES)}")
    if len(reason) > REASON_MAX_CHARS:
        raise AccessError(AccessCode.PROPOSAL_INVALID, f"reason must be at most {REASON_MAX_CHARS} chars")
    existing = _active(session, scope)
    if existing is not None:
        return _view(session, existing)
    row = WithdrawalHalt(id="wh_" + secrets.token_hex(12), scope=scope, reason=reason, raised_by=admin[:64],
                         created_ms=now_ms)
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        # A concurrent halt of the same scope committed first (the unique index waited for it):
        # that halt is the one in force.
        won = _active(session, scope)
        assert won is not None, f"the unique index refused a second active halt of {scope}"
        return _view(session, won)
    security_log.append(session, at_ms=now_ms, actor=admin, action="withdrawals.halt", subject=row.id,
                        outcome="halted", details={"scope": scope, "reason": reason})
    return _view(session, row)


def _active(session: Session, scope: str) -> WithdrawalHalt | None:
    return session.scalars(select(WithdrawalHalt).where(
        WithdrawalHalt.scope == scope, WithdrawalHalt.lifted_ms.is_(None)).with_for_update()).first()


# Both lift approvals count; neither admin is "the requester" that add_approval keeps out, and
# add_approval refuses the same admin twice.
_NO_REQUESTER = ""
_LIFT_APPROVALS = 2


def lift(session: Session, halt_id: str, *, admin: str, roles: Collection[str], now_ms: int) -> HaltView:
    """Propose the lift (first admin) or approve it (a second, different admin): the halt ends then."""
    row = session.get(WithdrawalHalt, halt_id, with_for_update=True) if len(halt_id) <= 40 else None
    if row is None:
        raise AccessError(AccessCode.PROPOSAL_NOT_FOUND, f"withdrawal halt {halt_id[:80]} does not exist")
    if row.lifted_ms is not None:
        raise AccessError(AccessCode.PROPOSAL_CLOSED, f"withdrawal halt {row.id} is already lifted")
    approvals = approval_rows(session, ApprovalKind.HALT_LIFT, row.id)
    proof = Confirmed(frozenset(roles), Role.ADMIN.value, _LIFT_APPROVALS)
    ballot = Ballot(ApprovalKind.HALT_LIFT, row.id, _NO_REQUESTER)
    if not approvals:
        add_approval(session, ballot, admin[:64], proof, now_ms=now_ms, outcome="proposed",
                     action="withdrawals.halt_lift_propose", details={"scope": row.scope})
        return _view(session, row)
    proposer = approvals[0].approver
    if proposer == admin[:64]:
        raise AccessError(AccessCode.APPROVER_MISMATCH, "a second admin must approve the lift: the "
                          "proposer cannot approve their own proposal")
    # Stamped after the proposal even on a coarse clock: the approvals table alone orders the two.
    at_ms = max(now_ms, approvals[-1].created_ms + 1)
    added = add_approval(session, ballot, admin[:64], proof, now_ms=at_ms, outcome="lifted",
                         action="withdrawals.halt_lift", details={"scope": row.scope, "proposer": proposer})
    assert added.met, f"two distinct admins approved the lift of {row.id}"
    row.lifted_ms = now_ms
    return _view(session, row)


def listing(session: Session, *, active_only: bool = True) -> list[HaltView]:
    """Return the halts (active ones only by default), oldest first."""
    query = select(WithdrawalHalt).order_by(WithdrawalHalt.created_ms).limit(500)
    if active_only:
        query = query.where(WithdrawalHalt.lifted_ms.is_(None))
    return [_view(session, row) for row in session.scalars(query)]


def _view(session: Session, row: WithdrawalHalt) -> HaltView:
    approvers = [a.approver for a in approval_rows(session, ApprovalKind.HALT_LIFT, row.id)]
    lifted_by = approvers[-1] if row.lifted_ms is not None and approvers else None
    return HaltView(row.id, row.scope, row.reason, row.raised_by, row.created_ms,
                    approvers[0] if approvers else None, lifted_by, row.lifted_ms)
