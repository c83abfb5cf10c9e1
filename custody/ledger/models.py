"""Ledger tables: accounts with derived balances, the append-only transfer journal, its head."""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from custody.db import Base
from custody.ledger.entry import ACTOR_MAX_LEN
from custody.money import U256

HASH_HEX_LEN = 64
TRANSFER_ID_MAX_LEN = 128
REFERENCE_MAX_LEN = 256


class LedgerAccount(Base):
    """An account holding one asset. Balances are running totals of its journal entries.

    Owner, asset, kind and flags are fixed when the account opens (a hash-chained
    ``open`` entry records them); database triggers refuse to change them.
    """

    __tablename__ = "ledger_accounts"
    __table_args__ = (Index("uq_ledger_accounts_owner_asset_kind", "owner", "asset", "kind", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(128))
    asset: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(32))
    flags: Mapped[int] = mapped_column(Integer)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    debits_pending: Mapped[int] = mapped_column(U256)
    debits_posted: Mapped[int] = mapped_column(U256)
    credits_pending: Mapped[int] = mapped_column(U256)
    credits_posted: Mapped[int] = mapped_column(U256)
    last_seq: Mapped[int] = mapped_column(BigInteger)


class LedgerTransfer(Base):
    """One journal entry. Rows are only ever inserted; triggers reject UPDATE and DELETE."""

    __tablename__ = "ledger_transfers"
    __table_args__ = (
        Index("ix_ledger_transfers_debit_seq", "debit_account_id", "seq"),
        Index("ix_ledger_transfers_credit_seq", "credit_account_id", "seq"),
        # Most entries neither expire nor resolve a pending transfer: partial
        # indexes keep those rows out, which cuts index upkeep on the hot path.
        Index("ix_ledger_transfers_expires", "expires_ms",
              postgresql_where=text("expires_ms IS NOT NULL"), sqlite_where=text("expires_ms IS NOT NULL")),
        # A post or void names the pending transfer it resolves; uniqueness makes
        # "resolved twice" impossible even for a buggy caller.
        Index("uq_ledger_transfers_pending_id", "pending_id", unique=True,
              postgresql_where=text("pending_id IS NOT NULL"), sqlite_where=text("pending_id IS NOT NULL")),
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    id: Mapped[str] = mapped_column(String(TRANSFER_ID_MAX_LEN), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    debit_account_id: Mapped[int] = mapped_column(ForeignKey("ledger_accounts.id"))
    credit_account_id: Mapped[int] = mapped_column(ForeignKey("ledger_accounts.id"))
    asset: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(U256)
    pending_id: Mapped[str | None] = mapped_column(String(TRANSFER_ID_MAX_LEN))
    timeout_s: Mapped[int] = mapped_column(Integer)
    expires_ms: Mapped[int | None] = mapped_column(BigInteger)
    code: Mapped[int] = mapped_column(Integer)
    reference: Mapped[str] = mapped_column(String(REFERENCE_MAX_LEN))
    timestamp_ms: Mapped[int] = mapped_column(BigInteger)
    prev_hash: Mapped[str] = mapped_column(String(HASH_HEX_LEN))
    hash: Mapped[str] = mapped_column(String(HASH_HEX_LEN))
    # Who caused the entry (user:<id> or service:<name>); part of the hash-chained bytes.
    actor: Mapped[str] = mapped_column(String(ACTOR_MAX_LEN))
    # The terms of the account an ``open`` entry opens (NULL on every other entry).
    account_owner: Mapped[str | None] = mapped_column(String(128))
    account_kind: Mapped[str | None] = mapped_column(String(32))
    account_flags: Mapped[int | None] = mapped_column(Integer)


class LedgerHead(Base):
    """The single row that names the journal's tip; writers lock it to serialise appends."""

    __tablename__ = "ledger_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(HASH_HEX_LEN))
