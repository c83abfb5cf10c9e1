"""Account freezes: an owner whose withdrawals stop until a person looks (docs/wallets.md).

A freeze is raised by a fact the platform cannot undo by itself, today a
deposit reorganised out of the chain *after* it was credited (the watcher's
correcting entry may have left a shortfall the owner must settle). While any
freeze of an owner is active, creating a withdrawal is refused (4112
``account_frozen``) and approved hot withdrawals of that owner are not
dispatched. Freezes are idempotent by id (the fact that raised them), written
in the same database transaction as that fact and its security-log alert.
Lifting one needs two admins (``lift`` records both); nothing lifts a
freeze automatically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Index, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from custody.db import Base

FREEZE_ID_MAX_LEN = 160
REASON_MAX_LEN = 256


class AccountFreeze(Base):
    """One reason an owner's withdrawals are stopped."""

    __tablename__ = "account_freezes"
    __table_args__ = (Index("ix_account_freezes_owner", "owner"),)

    id: Mapped[str] = mapped_column(String(FREEZE_ID_MAX_LEN), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(REASON_MAX_LEN))
    raised_by: Mapped[str] = mapped_column(String(64))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    lifted_by: Mapped[str | None] = mapped_column(String(130))
    lifted_ms: Mapped[int | None] = mapped_column(BigInteger)


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

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "owner": self.owner, "reason": self.reason, "raised_by": self.raised_by,
                "created_ms": self.created_ms, "lifted_by": self.lifted_by, "lifted_ms": self.lifted_ms,
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
    return [_view(row) for row in session.scalars(query.order_by(AccountFreeze.created_ms))]


def lift(session: Session, freeze_id: str, *, admins: tuple[str, str], now_ms: int) -> FreezeView | None:
    """Lift one freeze on the word of two distinct admins (checked by the caller); None if unknown."""
    first, second = admins
    assert first != second, "lifting a freeze needs two different admins"
    row = session.get(AccountFreeze, freeze_id, with_for_update=True)
    if row is None:
        return None
    if row.lifted_ms is None:
        row.lifted_by, row.lifted_ms = f"{first},{second}", now_ms
    return _view(row)


def _view(row: AccountFreeze) -> FreezeView:
    return FreezeView(row.id, row.owner, row.reason, row.raised_by, row.created_ms, row.lifted_by,
                      row.lifted_ms)
