"""Wallet and chain tables: wallets, addresses, limits, seen blocks, deposits, outgoing transactions,
nonces, refill proposals and their signed approvals, and reconciliation runs."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from custody.db import Base
from custody.money import U256

NAME_MAX_LEN = 64
CHAIN_MAX_LEN = 16
ADDRESS_MAX_LEN = 128
TXID_MAX_LEN = 80
RECORD_ID_MAX_LEN = 120
PATH_MAX_LEN = 64


class Wallet(Base):
    """A wallet on one chain. Hot and deposit wallets hold a sealed HD seed; cold ones only addresses."""

    __tablename__ = "wallets"
    __table_args__ = (Index("uq_wallets_name", "name", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX_LEN))
    chain: Mapped[str] = mapped_column(String(CHAIN_MAX_LEN))
    temperature: Mapped[str] = mapped_column(String(16))
    # Envelope-encrypted seed (base64 of SealedSeed bytes) and the keystore KEK that wraps it.
    kek_name: Mapped[str | None] = mapped_column(String(NAME_MAX_LEN))
    sealed_seed: Mapped[str | None] = mapped_column(Text)
    account_path: Mapped[str | None] = mapped_column(String(PATH_MAX_LEN))
    account_xpub: Mapped[str | None] = mapped_column(String(200))
    next_index: Mapped[int] = mapped_column(Integer)
    created_ms: Mapped[int] = mapped_column(BigInteger)


class WalletAddress(Base):
    """An address of a wallet with its BIP32 path; deposit addresses name the user they belong to."""

    __tablename__ = "wallet_addresses"
    __table_args__ = (
        Index("uq_wallet_addresses_chain_address", "chain", "address", unique=True),
        Index("uq_wallet_addresses_wallet_owner", "wallet_id", "owner", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    chain: Mapped[str] = mapped_column(String(CHAIN_MAX_LEN))
    address: Mapped[str] = mapped_column(String(ADDRESS_MAX_LEN))
    owner: Mapped[str | None] = mapped_column(String(128))
    path: Mapped[str | None] = mapped_column(String(PATH_MAX_LEN))
    derivation_index: Mapped[int | None] = mapped_column(Integer)
    created_ms: Mapped[int] = mapped_column(BigInteger)


class WalletLimit(Base):
    """The hot wallet's floor, target and ceiling for one asset on one chain."""

    __tablename__ = "wallet_limits"

    chain: Mapped[str] = mapped_column(String(CHAIN_MAX_LEN), primary_key=True)
    asset: Mapped[str] = mapped_column(String(16), primary_key=True)
    floor_minor: Mapped[int] = mapped_column(U256)
    target_minor: Mapped[int] = mapped_column(U256)
    ceiling_minor: Mapped[int] = mapped_column(U256)


class ChainBlock(Base):
    """A block the deposit watcher has processed, identified by hash (to detect reorgs)."""

    __tablename__ = "chain_blocks"

    chain: Mapped[str] = mapped_column(String(CHAIN_MAX_LEN), primary_key=True)
    height: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    hash: Mapped[str] = mapped_column(String(TXID_MAX_LEN))
    parent_hash: Mapped[str] = mapped_column(String(TXID_MAX_LEN))


class ChainScanCursor(Base):
    """Where the deposit watcher of one chain scans next, and the height it must never start above.

    ``start_height`` is the safe point: the first block scanned for the chain's deposit wallets
    (pinned when the wallets are set up, or configured); ``next_height`` the next block to scan.
    Both survive a restart and a reorg deeper than every stored block (deposit_watcher.py).
    """

    __tablename__ = "chain_scan_cursors"

    chain: Mapped[str] = mapped_column(String(CHAIN_MAX_LEN), primary_key=True)
    start_height: Mapped[int] = mapped_column(BigInteger)
    next_height: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class ChainDeposit(Base):
    """A transfer into a deposit address, and where its ledger credit stands.

    ``attempt`` counts how often the deposit was (re)applied after reorgs; the
    ledger transfer ids embed it so a re-applied deposit gets fresh ids.
    ``ledger_synced`` is false between a status change and the matching ledger
    write, so a restart finishes the write.
    """

    __tablename__ = "chain_deposits"
    __table_args__ = (
        Index("ix_chain_deposits_status", "status"),
        Index("ix_chain_deposits_owner", "owner"),
    )

    id: Mapped[str] = mapped_column(String(RECORD_ID_MAX_LEN), primary_key=True)
    chain: Mapped[str] = mapped_column(String(CHAIN_MAX_LEN))
    asset: Mapped[str] = mapped_column(String(16))
    txid: Mapped[str] = mapped_column(String(TXID_MAX_LEN))
    log_index: Mapped[int] = mapped_column(Integer)
    address: Mapped[str] = mapped_column(String(ADDRESS_MAX_LEN))
    owner: Mapped[str] = mapped_column(String(128))
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    amount_minor: Mapped[int] = mapped_column(U256)
    block_height: Mapped[int] = mapped_column(BigInteger)
    block_hash: Mapped[str] = mapped_column(String(TXID_MAX_LEN))
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    ledger_synced: Mapped[bool] = mapped_column(Boolean)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class ChainTransaction(Base):
    """An outgoing transfer (withdrawal, sweep, consolidation, gas top-up): one nonce, one record."""

    __tablename__ = "chain_transactions"
    __table_args__ = (Index("ix_chain_transactions_status", "status"),)

    id: Mapped[str] = mapped_column(String(RECORD_ID_MAX_LEN), primary_key=True)
    chain: Mapped[str] = mapped_column(String(CHAIN_MAX_LEN))
    purpose: Mapped[str] = mapped_column(String(16))
    asset: Mapped[str] = mapped_column(String(16))
    amount_minor: Mapped[int] = mapped_column(U256)
    source_wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    source_address: Mapped[str] = mapped_column(String(ADDRESS_MAX_LEN))
    source_path: Mapped[str] = mapped_column(String(PATH_MAX_LEN))
    destination: Mapped[str] = mapped_column(String(ADDRESS_MAX_LEN))
    debit_account_id: Mapped[int] = mapped_column(BigInteger)
    credit_account_id: Mapped[int] = mapped_column(BigInteger)
    gas_account_id: Mapped[int] = mapped_column(BigInteger)
    hold_transfer_id: Mapped[str | None] = mapped_column(String(RECORD_ID_MAX_LEN))
    status: Mapped[str] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(String(256))
    nonce: Mapped[int | None] = mapped_column(BigInteger)
    gas_limit: Mapped[int] = mapped_column(BigInteger)
    current_txid: Mapped[str | None] = mapped_column(String(TXID_MAX_LEN))
    broadcast_height: Mapped[int | None] = mapped_column(BigInteger)
    mined_txid: Mapped[str | None] = mapped_column(String(TXID_MAX_LEN))
    mined_height: Mapped[int | None] = mapped_column(BigInteger)
    fee_paid_minor: Mapped[int | None] = mapped_column(U256)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class OutgoingReorg(Base):
    """A settled outgoing transaction that left the best chain, and its correction (outgoing_reorg.py).

    ``status``: ``reversed`` (the settlement is undone in the ledger, the amount waits in the
    destination-side account, the signed transaction is re-broadcast), ``resettled`` (the same
    transaction was mined again and settled once more), ``reverted`` (mined again but failed on
    chain: its gas is booked, the amount stays where the correction put it, for operators).
    """

    __tablename__ = "outgoing_reorgs"
    __table_args__ = (
        Index("ix_outgoing_reorgs_transaction_id", "transaction_id"),
        Index("ix_outgoing_reorgs_chain_status", "chain", "status"),
        CheckConstraint("status IN ('reversed', 'resettled', 'reverted')", name="status"),
    )

    id: Mapped[str] = mapped_column(String(RECORD_ID_MAX_LEN + 8), primary_key=True)
    transaction_id: Mapped[str] = mapped_column(ForeignKey("chain_transactions.id"))
    chain: Mapped[str] = mapped_column(String(CHAIN_MAX_LEN))
    asset: Mapped[str] = mapped_column(String(16))
    amount_minor: Mapped[int] = mapped_column(U256)
    txid: Mapped[str] = mapped_column(String(TXID_MAX_LEN))
    mined_height: Mapped[int] = mapped_column(BigInteger)
    fee_reversed_minor: Mapped[int] = mapped_column(U256)
    status: Mapped[str] = mapped_column(String(16))
    resettled_txid: Mapped[str | None] = mapped_column(String(TXID_MAX_LEN))
    resettled_height: Mapped[int | None] = mapped_column(BigInteger)
    resettle_fee_minor: Mapped[int | None] = mapped_column(U256)
    ledger_synced: Mapped[bool] = mapped_column(Boolean)
    detected_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class ChainTransactionAttempt(Base):
    """One signed version of an outgoing transaction; replacements share the nonce."""

    __tablename__ = "chain_transaction_attempts"
    __table_args__ = (Index("ix_chain_transaction_attempts_transaction_id", "transaction_id"),)

    txid: Mapped[str] = mapped_column(String(TXID_MAX_LEN), primary_key=True)
    transaction_id: Mapped[str] = mapped_column(ForeignKey("chain_transactions.id"))
    nonce: Mapped[int] = mapped_column(BigInteger)
    max_fee_per_gas: Mapped[int] = mapped_column(U256)
    max_priority_fee_per_gas: Mapped[int] = mapped_column(U256)
    # Signed transactions are public once broadcast; storing them lets a restart re-send exactly them.
    raw: Mapped[str] = mapped_column(Text)
    created_ms: Mapped[int] = mapped_column(BigInteger)


class ChainNonce(Base):
    """The next nonce the platform will use for an address it signs for."""

    __tablename__ = "chain_nonces"

    chain: Mapped[str] = mapped_column(String(CHAIN_MAX_LEN), primary_key=True)
    address: Mapped[str] = mapped_column(String(ADDRESS_MAX_LEN), primary_key=True)
    next_nonce: Mapped[int] = mapped_column(BigInteger)


class RefillProposal(Base):
    """A proposal to move funds cold -> hot; needs treasury approvals, then the offline signer."""

    __tablename__ = "wallet_refill_proposals"
    __table_args__ = (
        Index("ix_wallet_refill_proposals_status", "status"),
        # custody.withdrawals.lifecycle.RefillState (SQLite: triggers, migration 0016_lifecycle_states).
        CheckConstraint(
            "status IN ('proposed', 'awaiting_signer', 'awaiting_signature', 'broadcasting', "
            "'completed', 'failed')",
            name="status",
        ),
    )

    id: Mapped[str] = mapped_column(String(RECORD_ID_MAX_LEN), primary_key=True)
    chain: Mapped[str] = mapped_column(String(CHAIN_MAX_LEN))
    asset: Mapped[str] = mapped_column(String(16))
    amount_minor: Mapped[int] = mapped_column(U256)
    source_wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    destination: Mapped[str] = mapped_column(String(ADDRESS_MAX_LEN))
    status: Mapped[str] = mapped_column(String(24))
    required_approvals: Mapped[int] = mapped_column(Integer)
    # Its approvals are in the approvals table (custody.access.approvals, kind "refill").
    proposed_by: Mapped[str] = mapped_column(String(128))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class ReconciliationRun(Base):
    """One reconciliation of on-chain balances against the ledger, with its full report."""

    __tablename__ = "reconciliation_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    chain: Mapped[str] = mapped_column(String(CHAIN_MAX_LEN))
    height: Mapped[int] = mapped_column(BigInteger)
    run_ms: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    report: Mapped[str] = mapped_column(Text)
