"""Audit tables: signed checkpoints and proof-of-reserves snapshots with their leaves."""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from custody.db import Base
from custody.money import U256

HASH_HEX_LEN = 64


class AuditCheckpoint(Base):
    """One signed checkpoint. ``record`` holds its canonical bytes, the authoritative form."""

    __tablename__ = "audit_checkpoints"

    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    first_seq: Mapped[int] = mapped_column(BigInteger)
    last_seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    checkpoint_hash: Mapped[str] = mapped_column(String(HASH_HEX_LEN), unique=True)
    timestamp_ms: Mapped[int] = mapped_column(BigInteger)
    record: Mapped[str] = mapped_column(Text)
    # The Merkle frontier after last_seq (JSON list of hex), so the next checkpoint
    # reads only the entries after this one.
    frontier: Mapped[str] = mapped_column(Text)


class AuditLiabilitySnapshot(Base):
    """A signed proof-of-reserves snapshot: liabilities roots and reserves per asset."""

    __tablename__ = "audit_liability_snapshots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    ledger_seq: Mapped[int] = mapped_column(BigInteger)
    record: Mapped[str] = mapped_column(Text)


class AuditLiabilityLeaf(Base):
    """One user's liability in one asset of a snapshot, at its position in the Merkle-sum tree."""

    __tablename__ = "audit_liability_leaves"
    __table_args__ = (Index("ix_audit_liability_leaves_owner", "snapshot_id", "owner", "asset"),)

    snapshot_id: Mapped[int] = mapped_column(
        ForeignKey("audit_liability_snapshots.id"), primary_key=True, autoincrement=False)
    asset: Mapped[str] = mapped_column(String(16), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    owner: Mapped[str] = mapped_column(String(128))
    salt: Mapped[str] = mapped_column(String(HASH_HEX_LEN))
    balance: Mapped[int] = mapped_column(U256)
