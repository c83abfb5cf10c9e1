"""Cold-transfer tables: every bundle exported for a withdrawal or refill, and the signatures imported.

A bundle row is the platform's own record of what it asked the offline
signer to sign (the exact canonical bytes) and, once a signed result comes
back, of the transaction it broadcast and how it settled in the ledger.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from custody.db import Base
from custody.money import U256

BUNDLE_ID_MAX_LEN = 128
REQUEST_ID_MAX_LEN = 128
TXID_MAX_LEN = 80
ADDRESS_MAX_LEN = 256
NOTE_MAX_LEN = 256


class ColdBundle(Base):
    """One bundle: exported -> signed -> broadcast -> confirmed / failed, or superseded."""

    __tablename__ = "cold_bundles"
    __table_args__ = (
        Index("uq_cold_bundles_request_attempt", "request_kind", "request_id", "attempt", unique=True),
        Index("ix_cold_bundles_state", "state"),
    )

    bundle_id: Mapped[str] = mapped_column(String(BUNDLE_ID_MAX_LEN), primary_key=True)
    chain: Mapped[str] = mapped_column(String(16))
    request_kind: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[str] = mapped_column(String(REQUEST_ID_MAX_LEN))
    attempt: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    # The exact canonical bytes handed to the signer; their SHA-256 is `digest`.
    bundle: Mapped[bytes] = mapped_column(LargeBinary)
    digest: Mapped[str] = mapped_column(String(64))
    expires_at_ms: Mapped[int] = mapped_column(BigInteger)
    source_wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    asset: Mapped[str] = mapped_column(String(16))
    amount_minor: Mapped[int] = mapped_column(U256)
    destination: Mapped[str] = mapped_column(String(ADDRESS_MAX_LEN))
    # Ledger: PENDING debit -> credit (the cold wallet) `<bundle_id>:reserve`; the request's hold if any.
    debit_account_id: Mapped[int] = mapped_column(BigInteger)
    credit_account_id: Mapped[int] = mapped_column(BigInteger)
    gas_account_id: Mapped[int] = mapped_column(BigInteger)
    reserve_transfer_id: Mapped[str] = mapped_column(String(BUNDLE_ID_MAX_LEN + 16))
    hold_transfer_id: Mapped[str | None] = mapped_column(String(BUNDLE_ID_MAX_LEN + 16))
    # The finished transaction (public once broadcast) and its fate on chain.
    raw_transaction: Mapped[str | None] = mapped_column(Text)
    txid: Mapped[str | None] = mapped_column(String(TXID_MAX_LEN))
    broadcast_height: Mapped[int | None] = mapped_column(BigInteger)
    mined_height: Mapped[int | None] = mapped_column(BigInteger)
    fee_paid_minor: Mapped[int | None] = mapped_column(U256)
    note: Mapped[str] = mapped_column(String(NOTE_MAX_LEN))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class ColdBundleSignature(Base):
    """One signed result imported for a bundle (Bitcoin multisig needs several, Ethereum one)."""

    __tablename__ = "cold_bundle_signatures"
    __table_args__ = (
        Index("uq_cold_bundle_signatures_bundle_signer", "bundle_id", "signer_id", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    bundle_id: Mapped[str] = mapped_column(ForeignKey("cold_bundles.bundle_id"))
    signer_id: Mapped[str] = mapped_column(String(128))
    signed: Mapped[bytes] = mapped_column(LargeBinary)
    digest: Mapped[str] = mapped_column(String(64))
    imported_ms: Mapped[int] = mapped_column(BigInteger)
