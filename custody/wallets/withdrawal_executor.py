"""The outgoing-transaction pipeline: withdrawals, sweeps, consolidations and gas top-ups.

One record per purpose id (``wd:<withdrawal id>``, ``sweep:...``), one nonce
per record, assigned once: replacements re-sign the *same* nonce with higher
fees, so at most one version can ever be mined. That is the guarantee that
one withdrawal never becomes two transactions.

States (each transition is one database transaction; the ledger calls use
fixed ids, so repeating any step after a crash is a no-op):

    queued    -> the ledger reservation is made, then nonce assigned + signed + raw stored -> signed
    signed    -> raw broadcast (re-sending the same raw is harmless)                     -> broadcast
    broadcast -> a receipt appears                                                       -> mined
              -> no receipt for STUCK_AFTER_BLOCKS: replaced (same nonce, fees +25%, capped)
    mined     -> N confirmations: success posts, revert voids (gas is booked either way) -> confirmed/failed
              -> the receipt vanishes (reorg): back to broadcast, the raw is re-sent

Ledger entries (source wallet account W, destination-side account D, hold H from the
withdrawal service: user_available -> withdrawals_in_flight):

    sign:      PENDING D -> W  ``<id>:reserve``   (a hot wallet short in the ledger stays queued)
    success:   POST H, POST ``<id>:reserve``, SINGLE network-fees -> W_ETH ``<id>:gas``
    revert:    VOID H, VOID ``<id>:reserve``,  SINGLE network-fees -> W_ETH ``<id>:gas``

For a withdrawal D = platform withdrawals_in_flight, so after the two posts the
user's balance and the hot wallet are both down by the amount and
withdrawals_in_flight nets to zero. For a sweep D = the cold wallet account;
for a consolidation D = the hot wallet account and W = the deposit wallet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from custody.chains.adapter import ChainAdapter, ChainCode, ChainError, FeeQuote, Receipt
from custody.chains.ethereum.adapter import EthereumAdapter
from custody.chains.ethereum.token import NATIVE_TRANSFER_GAS, TOKEN_TRANSFER_GAS, transfer_calldata
from custody.ledger.codes import LedgerCode, LedgerError
from custody.ledger.entry import AccountKind, TransferKind
from custody.ledger.posting import TransferRequest
from custody.money import U256_MAX
from custody.wallets.codes import WalletCode, WalletError
from custody.wallets.models import ChainNonce, ChainTransaction, ChainTransactionAttempt
from custody.wallets.settlement import refusal, settlement_requests
from custody.wallets.wallet import AddressInfo, Temperature, WalletInfo, WalletRegistry

log = logging.getLogger(__name__)

DEFAULT_CONFIRMATIONS = {"ETH": 12, "USDC": 12}
# 500 gwei: above this we wait rather than overpay.
DEFAULT_FEE_CAP_WEI = 500 * 10**9
STUCK_AFTER_BLOCKS = 3
# Nodes require a replacement to raise both fees by at least 10%; 25% clears that with margin.
FEE_BUMP_PERCENT = 25
MAX_RECORDS_PER_TICK = 200
NOTE_MAX_LEN = 256
WITHDRAWAL_ID_MAX_LEN = 80


class TxStatus(StrEnum):
    """Where an outgoing transaction stands; confirmed and failed are final."""

    QUEUED = "queued"
    SIGNED = "signed"
    BROADCAST = "broadcast"
    MINED = "mined"
    CONFIRMED = "confirmed"
    FAILED = "failed"


OPEN_STATUSES = (TxStatus.QUEUED, TxStatus.SIGNED, TxStatus.BROADCAST, TxStatus.MINED)


class Purpose(StrEnum):
    """Why the platform sends a transaction."""

    WITHDRAWAL = "withdrawal"
    SWEEP = "sweep"
    CONSOLIDATION = "consolidation"
    TOPUP = "topup"
    REFILL = "refill"  # cold -> hot, signed by the offline signers


@dataclass(frozen=True, slots=True)
class ExecutorConfig:
    """Confirmations per asset, the fee cap and the replacement trigger."""

    confirmations: Mapping[str, int]
    fee_cap_wei: int = DEFAULT_FEE_CAP_WEI
    stuck_after_blocks: int = STUCK_AFTER_BLOCKS


@dataclass(frozen=True, slots=True)
class OutgoingTransfer:
    """Everything needed to create an outgoing transaction record."""

    id: str
    purpose: Purpose
    asset: str
    amount_minor: int
    source: WalletInfo
    source_address: AddressInfo
    destination: str
    debit_account_id: int
    hold_transfer_id: str | None = None


@dataclass(frozen=True, slots=True)
class TransactionView:
    """An outgoing transaction record as shown by the API and CLI."""

    id: str
    purpose: str
    asset: str
    amount_minor: int
    source_address: str
    destination: str
    status: TxStatus
    note: str
    nonce: int | None
    txid: str | None
    mined_txid: str | None
    mined_height: int | None
    fee_paid_minor: int | None
    hold_transfer_id: str | None
    attempts: int

    def to_json(self) -> dict[str, Any]:
        """Render for the API (amounts as strings)."""
        return {
            "id": self.id,
            "purpose": self.purpose,
            "asset": self.asset,
            "amount": str(self.amount_minor),
            "source_address": self.source_address,
            "destination": self.destination,
            "status": self.status.value,
            "note": self.note,
            "nonce": self.nonce,
            "txid": self.txid,
            "mined_txid": self.mined_txid,
            "mined_height": self.mined_height,
            "fee_paid": None if self.fee_paid_minor is None else str(self.fee_paid_minor),
            "hold_transfer_id": self.hold_transfer_id,
            "attempts": self.attempts,
        }


def _view(row: ChainTransaction, attempts: int) -> TransactionView:
    return TransactionView(
        id=row.id,
        purpose=row.purpose,
        asset=row.asset,
        amount_minor=row.amount_minor,
        source_address=row.source_address,
        destination=row.destination,
        status=TxStatus(row.status),
        note=row.note,
        nonce=row.nonce,
        txid=row.current_txid,
        mined_txid=row.mined_txid,
        mined_height=row.mined_height,
        fee_paid_minor=row.fee_paid_minor,
        hold_transfer_id=row.hold_transfer_id,
        attempts=attempts,
    )


class WithdrawalExecutor:
    """Drive outgoing transactions on one chain from record to ledger-settled."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        wallets: WalletRegistry,
        adapter: ChainAdapter,
        clock: Callable[[], int],
        config: ExecutorConfig | None = None,
    ) -> None:
        self._sessions = sessions
        self._wallets = wallets
        self._ledger = wallets.ledger
        self._adapter = adapter
        self._chain = adapter.chain
        self._clock = clock
        self.config = config or ExecutorConfig(DEFAULT_CONFIRMATIONS)
        self._chain_id: int | None = None

    # -- entry points -----------------------------------------------------------------------

    def execute(
        self, withdrawal_id: str, asset: str, amount_minor: int, destination: str, hold_transfer_id: str
    ) -> TransactionView:
        """Send an approved withdrawal from the hot wallet (idempotent by ``withdrawal_id``).

        ``hold_transfer_id`` is the withdrawal service's PENDING transfer
        user_available -> withdrawals_in_flight; it is posted when the
        transaction confirms and voided if it reverts.
        """
        if not 0 < len(withdrawal_id) <= WITHDRAWAL_ID_MAX_LEN:
            raise WalletError(
                WalletCode.INVALID_AMOUNT,
                f"withdrawal id was {len(withdrawal_id)} characters, must be 1..{WITHDRAWAL_ID_MAX_LEN}",
            )
        hot = self._wallets.one(self._chain, Temperature.HOT)
        return self.submit(
            OutgoingTransfer(
                id=f"wd:{withdrawal_id}",
                purpose=Purpose.WITHDRAWAL,
                asset=asset,
                amount_minor=amount_minor,
                source=hot,
                source_address=self._wallets.primary_address(hot.id),
                destination=destination,
                debit_account_id=self._wallets.platform_account(AccountKind.WITHDRAWALS_IN_FLIGHT, asset),
                hold_transfer_id=hold_transfer_id,
            )
        )

    def submit(self, transfer: OutgoingTransfer) -> TransactionView:
        """Create the record for ``transfer`` unless it exists, then try to advance it once."""
        destination = self._validate(transfer)
        row = self._create_or_match(transfer, destination)
        try:
            return self.advance(row.id)
        except ChainError as exc:
            # The record is safe in the database; the next tick retries.
            log.warning("transaction %s not advanced: %s", row.id, exc.message)
            return self.get(row.id)

    def tick(self) -> list[TransactionView]:
        """Advance every open record one step (or more); return their views."""
        with self._sessions() as session:
            ids = session.scalars(
                select(ChainTransaction.id)
                .where(
                    ChainTransaction.chain == self._chain,
                    ChainTransaction.status.in_([s.value for s in OPEN_STATUSES]),
                )
                .order_by(ChainTransaction.created_ms, ChainTransaction.id)
                .limit(MAX_RECORDS_PER_TICK)
            ).all()
        return [self.advance(record_id) for record_id in ids]

    def advance(self, record_id: str) -> TransactionView:
        """Move one record as far as it can go right now."""
        for _ in range(len(TxStatus)):
            row = self._load(record_id)
            status = TxStatus(row.status)
            if status is TxStatus.QUEUED:
                self._sign(row)
            elif status is TxStatus.SIGNED:
                self._broadcast(row)
            elif status in (TxStatus.BROADCAST, TxStatus.MINED):
                self._track(row)
            if self._load(record_id).status == row.status:
                break
        return self.get(record_id)

    def get(self, record_id: str) -> TransactionView:
        """Return one record."""
        row = self._load(record_id)
        with self._sessions() as session:
            count = len(
                session.scalars(
                    select(ChainTransactionAttempt.txid).where(
                        ChainTransactionAttempt.transaction_id == record_id
                    )
                ).all()
            )
        return _view(row, count)

    def recent(self, limit: int = 100) -> list[TransactionView]:
        """Return the newest records."""
        with self._sessions() as session:
            ids = session.scalars(
                select(ChainTransaction.id)
                .order_by(ChainTransaction.created_ms.desc(), ChainTransaction.id)
                .limit(limit)
            ).all()
        return [self.get(i) for i in ids]

    def attempts(self, record_id: str) -> list[str]:
        """Return the txids of every signed version of a record, oldest first."""
        with self._sessions() as session:
            return list(
                session.scalars(
                    select(ChainTransactionAttempt.txid)
                    .where(ChainTransactionAttempt.transaction_id == record_id)
                    .order_by(ChainTransactionAttempt.created_ms, ChainTransactionAttempt.nonce)
                ).all()
            )

    # -- creation ---------------------------------------------------------------------------

    def _validate(self, transfer: OutgoingTransfer) -> str:
        if transfer.asset not in self._adapter.assets():
            raise WalletError(
                WalletCode.UNSUPPORTED_ASSET,
                f"asset was {transfer.asset!r}, {self._chain} moves {', '.join(self._adapter.assets())}",
            )
        if (
            isinstance(transfer.amount_minor, bool)
            or not isinstance(transfer.amount_minor, int)
            or not (0 < transfer.amount_minor <= U256_MAX)
        ):
            raise WalletError(
                WalletCode.INVALID_AMOUNT,
                f"amount was {transfer.amount_minor!r}, must be a positive integer in minor units",
            )
        try:
            destination = self._adapter.normalize_address(transfer.destination)
        except ChainError as exc:
            raise WalletError(WalletCode.INVALID_DESTINATION, exc.message) from None
        if destination.lower() == transfer.source_address.address.lower():
            raise WalletError(WalletCode.INVALID_DESTINATION, f"destination {destination} is the source")
        return destination

    def _create_or_match(self, transfer: OutgoingTransfer, destination: str) -> ChainTransaction:
        now = self._clock()
        credit = self._wallets.wallet_account(transfer.source, transfer.asset)
        gas = self._wallets.wallet_account(transfer.source, self._adapter.native_asset)
        assert transfer.source_address.path is not None, "a signing address must have a BIP32 path"
        row = ChainTransaction(
            id=transfer.id,
            chain=self._chain,
            purpose=transfer.purpose.value,
            asset=transfer.asset,
            amount_minor=transfer.amount_minor,
            source_wallet_id=transfer.source.id,
            source_address=transfer.source_address.address,
            source_path=transfer.source_address.path,
            destination=destination,
            debit_account_id=transfer.debit_account_id,
            credit_account_id=credit,
            gas_account_id=gas,
            hold_transfer_id=transfer.hold_transfer_id,
            status=TxStatus.QUEUED.value,
            note="",
            nonce=None,
            gas_limit=self._gas_limit(transfer.asset),
            current_txid=None,
            broadcast_height=None,
            mined_txid=None,
            mined_height=None,
            fee_paid_minor=None,
            created_ms=now,
            updated_ms=now,
        )
        try:
            with self._sessions.begin() as session:
                session.add(row)
        except IntegrityError:
            existing = self._load(transfer.id)
            same = (
                existing.asset,
                existing.amount_minor,
                existing.destination.lower(),
                existing.hold_transfer_id,
                existing.source_address,
            ) == (
                transfer.asset,
                transfer.amount_minor,
                destination.lower(),
                transfer.hold_transfer_id,
                transfer.source_address.address,
            )
            if not same:
                raise WalletError(
                    WalletCode.TRANSACTION_CONFLICT, f"transaction {transfer.id} exists with different fields"
                ) from None
            return existing
        return row

    def _gas_limit(self, asset: str) -> int:
        return NATIVE_TRANSFER_GAS if asset == self._adapter.native_asset else TOKEN_TRANSFER_GAS

    # -- queued -> signed -------------------------------------------------------------------

    def _sign(self, row: ChainTransaction) -> None:
        fees = self._adapter.fee_quote()
        if fees.max_fee_per_gas > self.config.fee_cap_wei:
            base_fee = (fees.max_fee_per_gas - fees.max_priority_fee_per_gas) // 2
            if base_fee >= self.config.fee_cap_wei:
                self._note(
                    row.id,
                    f"waiting: base fee {base_fee} is above the cap of {self.config.fee_cap_wei} wei/gas",
                )
                return
            cap = self.config.fee_cap_wei
            fees = FeeQuote(cap, min(fees.max_priority_fee_per_gas, cap - base_fee))
        shortfall = self._on_chain_shortfall(row, fees)
        if shortfall:
            self._note(row.id, shortfall)
            return
        if not self._reserve(row):
            return
        self._assign_nonce_and_sign(row.id, fees)

    def _on_chain_shortfall(self, row: ChainTransaction, fees: FeeQuote) -> str | None:
        native = self._adapter.native_asset
        gas_wei = row.gas_limit * fees.max_fee_per_gas
        need_native = gas_wei + (row.amount_minor if row.asset == native else 0)
        have_native = self._adapter.balance(row.source_address, native)
        if have_native < need_native:
            return f"queued: {row.source_address} holds {have_native} wei, needs {need_native} (amount + gas)"
        if row.asset != native:
            have = self._adapter.balance(row.source_address, row.asset)
            if have < row.amount_minor:
                return f"queued: {row.source_address} holds {have} {row.asset}, needs {row.amount_minor}"
        return None

    def _reserve(self, row: ChainTransaction) -> bool:
        request = TransferRequest(
            id=f"{row.id}:reserve",
            kind=TransferKind.PENDING,
            debit_account=row.debit_account_id,
            credit_account=row.credit_account_id,
            amount=row.amount_minor,
            reference=f"{row.purpose} to {row.destination}",
        )
        result = self._ledger.submit([request])[0]
        if result.ok:
            return True
        if result.code is LedgerCode.CREDITS_EXCEED_DEBITS:
            self._note(row.id, f"queued: source wallet balance in the ledger is short ({result.message})")
            return False
        raise LedgerError(result.code or LedgerCode.INVALID_FIELD, result.message)

    def _assign_nonce_and_sign(self, record_id: str, fees: FeeQuote) -> None:
        chain_nonce = None
        for _ in range(2):  # a concurrent first use of the address may insert the nonce row first
            try:
                with self._sessions.begin() as session:
                    row = session.scalar(
                        select(ChainTransaction).where(ChainTransaction.id == record_id).with_for_update()
                    )
                    assert row is not None
                    if row.status != TxStatus.QUEUED.value:
                        return  # someone else signed it
                    if chain_nonce is None:
                        chain_nonce = self._adapter.nonce(row.source_address)
                    counter = session.scalar(
                        select(ChainNonce)
                        .where(ChainNonce.chain == self._chain, ChainNonce.address == row.source_address)
                        .with_for_update()
                    )
                    if counter is None:
                        counter = ChainNonce(chain=self._chain, address=row.source_address, next_nonce=0)
                        session.add(counter)
                    nonce = max(counter.next_nonce, chain_nonce)
                    counter.next_nonce = nonce + 1
                    signed = self._sign_version(session, row, nonce, fees)
                    row.nonce, row.current_txid = nonce, signed
                    row.status, row.note, row.updated_ms = TxStatus.SIGNED.value, "", self._clock()
                return
            except IntegrityError:
                continue
        raise RuntimeError(f"could not allocate a nonce for {record_id}")

    def _sign_version(self, session: Session, row: ChainTransaction, nonce: int, fees: FeeQuote) -> str:
        assert row.nonce in (None, nonce), "a record's nonce never changes"
        tx = self._tx_fields(row, nonce, fees)
        signed = self._wallets.sign_ethereum(row.source_wallet_id, row.source_path, tx, session)
        session.add(
            ChainTransactionAttempt(
                txid=signed.txid,
                transaction_id=row.id,
                nonce=nonce,
                max_fee_per_gas=fees.max_fee_per_gas,
                max_priority_fee_per_gas=fees.max_priority_fee_per_gas,
                raw=signed.raw.hex(),
                created_ms=self._clock(),
            )
        )
        return signed.txid

    def _tx_fields(self, row: ChainTransaction, nonce: int, fees: FeeQuote) -> dict[str, Any]:
        adapter = self._adapter
        assert isinstance(adapter, EthereumAdapter), "account-model fields are Ethereum's"
        if self._chain_id is None:
            self._chain_id = adapter.chain_id()
        tx: dict[str, Any] = {
            "type": 2,
            "chainId": self._chain_id,
            "nonce": nonce,
            "gas": row.gas_limit,
            "maxFeePerGas": fees.max_fee_per_gas,
            "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
        }
        if row.asset == self._adapter.native_asset:
            tx.update(to=row.destination, value=row.amount_minor, data=b"")
        else:
            tx.update(
                to=adapter.token_address(row.asset),
                value=0,
                data=transfer_calldata(row.destination, row.amount_minor),
            )
        return tx

    # -- signed -> broadcast ----------------------------------------------------------------

    def _broadcast(self, row: ChainTransaction) -> None:
        assert row.current_txid is not None
        if self._mined_receipt(row.id) is not None:
            self._set(row.id, status=TxStatus.BROADCAST, broadcast_height=self._adapter.head_height())
            return
        try:
            self._adapter.broadcast(self._raw(row.current_txid))
        except ChainError as exc:
            if exc.code is not ChainCode.BROADCAST_REJECTED:
                raise
            self._note(row.id, f"broadcast refused, will retry: {exc.message}"[:NOTE_MAX_LEN])
            return
        self._set(row.id, status=TxStatus.BROADCAST, broadcast_height=self._adapter.head_height(), note="")

    # -- broadcast/mined -> final -----------------------------------------------------------

    def _track(self, row: ChainTransaction) -> None:
        receipt = self._mined_receipt(row.id)
        if receipt is None:
            if row.status == TxStatus.MINED.value:
                log.warning("transaction %s left the best chain (reorg); re-broadcasting", row.id)
                self._set(row.id, status=TxStatus.BROADCAST, mined_txid=None, mined_height=None)
            self._rebroadcast_or_replace(self._load(row.id))
            return
        if row.mined_txid != receipt.txid or row.mined_height != receipt.block_height:
            self._set(
                row.id,
                status=TxStatus.MINED,
                mined_txid=receipt.txid,
                mined_height=receipt.block_height,
                fee_paid_minor=receipt.fee_paid_minor,
            )
        confirmations = self._adapter.head_height() - receipt.block_height + 1
        if confirmations >= self.config.confirmations.get(row.asset, DEFAULT_CONFIRMATIONS["ETH"]):
            self._finalize(self._load(row.id), receipt)

    def _mined_receipt(self, record_id: str) -> Receipt | None:
        for txid in self.attempts(record_id):
            receipt = self._adapter.receipt(txid)
            if receipt is not None:
                return receipt
        return None

    def _rebroadcast_or_replace(self, row: ChainTransaction) -> None:
        """Send the current transaction again; once stuck for ``stuck_after_blocks``, replace it.

        Shared by every chain: what "replace" means (same nonce with higher fees on
        Ethereum, BIP125 from the change output on Bitcoin) is the chain's `_replace`.
        """
        assert row.current_txid is not None
        head = self._adapter.head_height()
        waited = head - (row.broadcast_height if row.broadcast_height is not None else head)
        if waited < self.config.stuck_after_blocks:
            try:
                self._adapter.broadcast(self._raw(row.current_txid))
            except ChainError as exc:
                log.info("re-broadcast of %s refused: %s", row.id, exc.message)
            return
        self._replace(row, head)

    def _replace(self, row: ChainTransaction, head: int) -> None:
        """Re-sign the same nonce with fees raised by FEE_BUMP_PERCENT (capped), and send it."""
        assert row.current_txid is not None and row.nonce is not None
        with self._sessions() as session:
            last = session.get(ChainTransactionAttempt, row.current_txid)
            assert last is not None
            old_max, old_tip = last.max_fee_per_gas, last.max_priority_fee_per_gas
        quote = self._adapter.fee_quote()
        bump = 100 + FEE_BUMP_PERCENT
        new_max = min(max(quote.max_fee_per_gas, old_max * bump // 100 + 1), self.config.fee_cap_wei)
        new_tip = min(max(quote.max_priority_fee_per_gas, old_tip * bump // 100 + 1), new_max)
        if new_max * 100 < old_max * 110 or new_tip * 100 < old_tip * 110:
            self._note(row.id, f"stuck: fee cap of {self.config.fee_cap_wei} wei/gas reached, not replacing")
            self._set(row.id, broadcast_height=head)
            return
        with self._sessions.begin() as session:
            fresh = session.scalar(
                select(ChainTransaction).where(ChainTransaction.id == row.id).with_for_update()
            )
            assert fresh is not None
            if fresh.current_txid != row.current_txid or fresh.status != TxStatus.BROADCAST.value:
                return
            txid = self._sign_version(session, fresh, row.nonce, FeeQuote(new_max, new_tip))
            fresh.current_txid, fresh.broadcast_height = txid, head
            fresh.note, fresh.updated_ms = f"replaced with max fee {new_max} wei/gas", self._clock()
        log.info("replaced stuck transaction %s (nonce %d) with %s", row.id, row.nonce, txid)
        try:
            self._adapter.broadcast(self._raw(txid))
        except ChainError as exc:
            log.info("broadcast of replacement %s refused: %s", txid, exc.message)

    def _finalize(self, row: ChainTransaction, receipt: Receipt) -> None:
        requests = settlement_requests(
            prefix=row.id, receipt=receipt, hold_transfer_id=row.hold_transfer_id,
            reserve_transfer_id=f"{row.id}:reserve",
            network_fees_account=self._wallets.network_fees_account(self._adapter.native_asset),
            gas_account=row.gas_account_id)
        refused = refusal(self._ledger.submit(requests, linked=True))
        if refused is not None:
            message = f"ledger refused settlement of {row.id}: {refused}"
            log.error(message)
            self._note(row.id, message[:NOTE_MAX_LEN])
            return
        status = TxStatus.CONFIRMED if receipt.success else TxStatus.FAILED
        note = "" if receipt.success else f"reverted on chain in {receipt.txid}; hold voided"
        self._set(row.id, status=status, note=note[:NOTE_MAX_LEN])
        log.info("%s %s: %s", row.purpose, row.id, status.value)

    # -- persistence helpers ----------------------------------------------------------------

    def _load(self, record_id: str) -> ChainTransaction:
        with self._sessions() as session:
            row = session.get(ChainTransaction, record_id)
            if row is None:
                raise WalletError(
                    WalletCode.TRANSACTION_NOT_FOUND, f"transaction {record_id!r} does not exist"
                )
            return row

    def _raw(self, txid: str) -> bytes:
        with self._sessions() as session:
            attempt = session.get(ChainTransactionAttempt, txid)
            assert attempt is not None, f"attempt {txid} is missing"
            return bytes.fromhex(attempt.raw)

    def _note(self, record_id: str, note: str) -> None:
        self._set(record_id, note=note[:NOTE_MAX_LEN])

    def _set(self, record_id: str, **fields: Any) -> None:
        with self._sessions.begin() as session:
            row = session.get(ChainTransaction, record_id)
            assert row is not None
            for name, value in fields.items():
                setattr(row, name, value.value if isinstance(value, TxStatus) else value)
            row.updated_ms = self._clock()
