"""Withdrawal tables: whitelisted destinations and withdrawal requests (approvals: access.approvals)."""

from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from custody.db import Base
from custody.money import U256

WITHDRAWAL_ID_MAX_LEN = 64
ADDRESS_MAX_LEN = 256


class WhitelistAddress(Base):
    """A destination a user may withdraw to; `added_ms` starts the policy timelock."""

    __tablename__ = "withdrawal_whitelist"
    __table_args__ = (
        Index("uq_withdrawal_whitelist_username_asset_address", "username", "asset", "address", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(ForeignKey("access_users.username"))
    asset: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(ADDRESS_MAX_LEN))
    label: Mapped[str] = mapped_column(String(128))
    added_ms: Mapped[int] = mapped_column(BigInteger)
    removed_ms: Mapped[int | None] = mapped_column(BigInteger)


class WithdrawalRequest(Base):
    """A withdrawal and the policy decision that governs it."""

    __tablename__ = "withdrawal_requests"
    __table_args__ = (
        Index("ix_withdrawal_requests_username_created", "username", "created_ms"),
        Index("ix_withdrawal_requests_state", "state"),
        Index("ix_withdrawal_requests_created", "created_ms"),
        # custody.withdrawals.lifecycle.WithdrawalState (SQLite: triggers, migration 0016_lifecycle_states).
        CheckConstraint(
            "state IN ('pending_approval', 'delayed', 'approved', 'rejected', 'cancelled', 'blocked', "
            "'awaiting_signature', 'broadcasting', 'completed', 'failed')",
            name="state",
        ),
    )

    id: Mapped[str] = mapped_column(String(WITHDRAWAL_ID_MAX_LEN), primary_key=True)
    username: Mapped[str] = mapped_column(ForeignKey("access_users.username"))
    asset: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(U256)
    amount_usd_cents: Mapped[int] = mapped_column(U256)
    destination: Mapped[str] = mapped_column(String(ADDRESS_MAX_LEN))
    source_wallet: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(24))
    policy_id: Mapped[str] = mapped_column(String(128))
    policy_version: Mapped[int] = mapped_column(BigInteger)
    policy_digest: Mapped[str] = mapped_column(String(64))
    rule_id: Mapped[str | None] = mapped_column(String(128))
    decision: Mapped[str] = mapped_column(Text)  # Decision.to_json() as JSON.
    required_count: Mapped[int] = mapped_column(Integer)
    required_group: Mapped[str | None] = mapped_column(String(128))
    release_at_ms: Mapped[int | None] = mapped_column(BigInteger)
    delays_served: Mapped[str] = mapped_column(String(512))  # Comma-separated rule ids.
    hold_transfer_id: Mapped[str] = mapped_column(String(128))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)
    closed_by: Mapped[str | None] = mapped_column(String(64))
    close_reason: Mapped[str | None] = mapped_column(String(256))
