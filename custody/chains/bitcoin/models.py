"""Bitcoin tables: the UTXO set of our wallets, cold multisig descriptors, and cold spends (PSBTs)."""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from custody.db import Base
from custody.wallets.models import (
    ADDRESS_MAX_LEN,
    CHAIN_MAX_LEN,
    PATH_MAX_LEN,
    RECORD_ID_MAX_LEN,
    TXID_MAX_LEN,
)


class UtxoStatus:
    """Where a coin of ours stands."""

    UNSPENT = "unspent"  # confirmed on the best chain, free to select
    LOCKED = "locked"  # selected by an outgoing transaction (``locked_by``), not yet spent on chain
    SPENT = "spent"  # an input of a transaction on the best chain spends it
    ORPHANED = "orphaned"  # its block was reorganised away; comes back if the output reappears


class BitcoinUtxo(Base):
    """An output paying one of our addresses, seen in a block of the best chain."""

    __tablename__ = "btc_utxos"
    __table_args__ = (
        Index("ix_btc_utxos_wallet_status", "wallet_id", "status"),
        Index("ix_btc_utxos_locked_by", "locked_by"),
    )

    id: Mapped[str] = mapped_column(String(RECORD_ID_MAX_LEN), primary_key=True)  # "<txid>:<vout>"
    chain: Mapped[str] = mapped_column(String(CHAIN_MAX_LEN))
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    address: Mapped[str] = mapped_column(String(ADDRESS_MAX_LEN))
    txid: Mapped[str] = mapped_column(String(TXID_MAX_LEN))
    vout: Mapped[int] = mapped_column(Integer)
    amount_sat: Mapped[int] = mapped_column(BigInteger)
    block_height: Mapped[int] = mapped_column(BigInteger)
    block_hash: Mapped[str] = mapped_column(String(TXID_MAX_LEN))
    status: Mapped[str] = mapped_column(String(16))
    locked_by: Mapped[str | None] = mapped_column(String(RECORD_ID_MAX_LEN))
    spent_txid: Mapped[str | None] = mapped_column(String(TXID_MAX_LEN))
    spent_height: Mapped[int | None] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class BitcoinColdWallet(Base):
    """A watch-only 2-of-3 P2WSH wallet: its output descriptor (with key origins) and change counter."""

    __tablename__ = "btc_cold_wallets"

    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"), primary_key=True)
    network: Mapped[str] = mapped_column(String(16))
    descriptor: Mapped[str] = mapped_column(Text)
    next_change: Mapped[int] = mapped_column(Integer)


class BitcoinColdSpend(Base):
    """A spend from the cold wallet: the unsigned PSBT, its bundle, and the broadcast outcome.

    ``id`` is the refill proposal (or cold withdrawal) id. The PSBT's inputs
    are locked to ``record_id`` (the outgoing transaction record) from the
    moment the PSBT is built until it confirms.
    """

    __tablename__ = "btc_cold_spends"

    id: Mapped[str] = mapped_column(String(RECORD_ID_MAX_LEN), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(RECORD_ID_MAX_LEN))
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    destination: Mapped[str] = mapped_column(String(ADDRESS_MAX_LEN))
    amount_sat: Mapped[int] = mapped_column(BigInteger)
    fee_sat: Mapped[int] = mapped_column(BigInteger)
    change_index: Mapped[int | None] = mapped_column(Integer)
    change_address: Mapped[str | None] = mapped_column(String(ADDRESS_MAX_LEN))
    change_path: Mapped[str | None] = mapped_column(String(PATH_MAX_LEN))
    psbt: Mapped[str] = mapped_column(Text)
    # The exported bundle (canonical bytes, base64) once the platform has signed it.
    bundle: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    txid: Mapped[str | None] = mapped_column(String(TXID_MAX_LEN))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)
