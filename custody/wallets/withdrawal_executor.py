"""The outgoing-transaction pipeline: withdrawals, sweeps, consolidations and gas top-ups, on any chain.

One record per purpose id (``wd:<withdrawal id>``, ``sweep:...``). What differs
per chain is a :class:`ChainSpender` the executor is given (composition, not
subclassing): its fee quote, how it signs, what "replace a stuck transaction"
means and what a failed record releases. Every version of a record spends the
same thing (one nonce on Ethereum, the same coins on Bitcoin), so at most one
version can ever be mined. That is the guarantee that one withdrawal never
becomes two transactions. The account-model steps are
``custody.chains.ethereum.executor``, the coin steps ``custody.chains.bitcoin.executor``.

States (each transition is one database transaction; the ledger calls use
fixed ids, so repeating any step after a crash is a no-op):

    queued    -> the chain's fee quote, the ledger reservation, then the chain signs
                 (nonce or coins assigned, raw stored)                                   -> signed
    signed    -> raw broadcast (re-sending the same raw is harmless)                     -> broadcast
              -> the chain says it can never be mined: hold and reservation voided       -> failed
    broadcast -> a receipt appears                                                       -> mined
              -> no receipt for STUCK_AFTER_BLOCKS: the chain replaces it (fees +25%, capped)
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
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from custody.chains.adapter import ChainAdapter, ChainCode, ChainError, FeeQuote, Receipt
from custody.ledger.codes import LedgerCode, LedgerError
from custody.ledger.entry import AccountKind, TransferKind
from custody.ledger.posting import TransferRequest
from custody.money import U256_MAX
from custody.wallets.codes import WalletCode, WalletError
from custody.wallets.models import ChainTransaction, ChainTransactionAttempt
from custody.wallets.settlement import refusal, settlement_requests
from custody.wallets.wallet import AddressInfo, Temperature, WalletInfo, WalletRegistry

log = logging.getLogger(__name__)

DEFAULT_CONFIRMATIONS = {"ETH": 12, "USDC": 12}
# 500 gwei: above this we wait rather than overpay (Ethereum's cap; the Bitcoin spender has its own).
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


def _queued_record(now_ms: int, **fields: Any) -> ChainTransaction:
    """Return a new queued record: nothing signed, broadcast or mined yet."""
    return ChainTransaction(
        status=TxStatus.QUEUED.value,
        nonce=None,
        current_txid=None,
        broadcast_height=None,
        mined_txid=None,
        mined_height=None,
        fee_paid_minor=None,
        created_ms=now_ms,
        updated_ms=now_ms,
        **fields,
    )


class ChainSpender(Protocol):
    """What sending differs in per chain; the executor keeps records, ledger, broadcast and tracking.

    Implementations: ``custody.chains.ethereum.executor.EthereumSpender`` (one nonce per
    record, EIP-1559 fees, same-nonce replacement) and
    ``custody.chains.bitcoin.executor.BitcoinSpender`` (coin selection and locking,
    fee rates, BIP125 replacement from the change output).
    """

    # True: a withdrawal the chain can never send (dust, bad address) is recorded as failed with
    # its hold voided, instead of the refusal being raised to the dispatcher.
    records_unsendable: bool

    @property
    def adapter(self) -> ChainAdapter:
        """Return the chain the executor reads heights and receipts from and broadcasts to."""
        ...

    def check(self, transfer: OutgoingTransfer, destination: str) -> None:
        """Raise ``WalletError`` if the chain can never send ``transfer`` to ``destination`` (normalised)."""
        ...

    def fee_units(self, asset: str) -> int:
        """Return what a record of ``asset`` stores as ``gas_limit`` (0 where fees are per vbyte)."""
        ...

    def quote(self, row: ChainTransaction) -> FeeQuote | str:
        """Return the fees to sign ``row`` at, or a note saying why it waits (nothing reserved yet)."""
        ...

    def sign(self, record_id: str, fees: FeeQuote) -> None:
        """Sign a reserved queued record and store it as signed in one transaction, or note why not."""
        ...

    def refusal(self, raw: bytes) -> str | None:
        """Return why a signed, unmined transaction can never be mined, or None."""
        ...

    def replace(self, row: ChainTransaction, head: int) -> None:
        """Replace a broadcast transaction stuck for ``stuck_after_blocks`` with one paying more."""
        ...

    def release(self, session: Session, record_id: str) -> None:
        """Free what a failed record held (locked coins) inside the caller's transaction."""
        ...


class TransactionRecords:
    """Read and write outgoing-transaction records: shared by the executor and the chain spenders."""

    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], int]) -> None:
        self._sessions = sessions
        self._clock = clock

    def load(self, record_id: str) -> ChainTransaction:
        """Return the record or raise transaction_not_found."""
        with self._sessions() as session:
            row = session.get(ChainTransaction, record_id)
            if row is None:
                raise WalletError(
                    WalletCode.TRANSACTION_NOT_FOUND, f"transaction {record_id!r} does not exist"
                )
            return row

    def get(self, record_id: str) -> TransactionView:
        """Return the view of one record."""
        row = self.load(record_id)
        return _view(row, len(self.attempts(row.id)))

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

    def raw(self, txid: str) -> bytes:
        """Return the signed bytes of one version."""
        with self._sessions() as session:
            attempt = session.get(ChainTransactionAttempt, txid)
            assert attempt is not None, f"attempt {txid} is missing"
            return bytes.fromhex(attempt.raw)

    def note(self, record_id: str, note: str) -> None:
        """Set the record's note (truncated to NOTE_MAX_LEN)."""
        self.set(record_id, note=note[:NOTE_MAX_LEN])

    def set(self, record_id: str, **fields: Any) -> None:
        """Update fields of the record in their own transaction."""
        with self._sessions.begin() as session:
            row = session.get(ChainTransaction, record_id)
            assert row is not None
            for name, value in fields.items():
                setattr(row, name, value.value if isinstance(value, TxStatus) else value)
            row.updated_ms = self._clock()


class WithdrawalExecutor:
    """Drive outgoing transactions on one chain from record to ledger-settled."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        wallets: WalletRegistry,
        spender: ChainSpender,
        clock: Callable[[], int],
        config: ExecutorConfig | None = None,
    ) -> None:
        self._sessions = sessions
        self._wallets = wallets
        self._ledger = wallets.ledger
        self.spender = spender
        self._adapter = spender.adapter
        self._chain = spender.adapter.chain
        self._clock = clock
        self.config = config or ExecutorConfig(DEFAULT_CONFIRMATIONS)
        self._records = TransactionRecords(sessions, clock)

    # -- entry points -----------------------------------------------------------------------

    def execute(
        self, withdrawal_id: str, asset: str, amount_minor: int, destination: str, hold_transfer_id: str
    ) -> TransactionView:
        """Send an approved withdrawal from the hot wallet (idempotent by ``withdrawal_id``).

        ``hold_transfer_id`` is the withdrawal service's PENDING transfer
        user_available -> withdrawals_in_flight; it is posted when the
        transaction confirms and voided if it reverts. Where the chain records
        unsendable withdrawals (Bitcoin: dust, a bad address), one that can never
        be sent fails at once (hold voided, record ``failed``) instead of raising,
        which lets the dispatcher close the withdrawal and return the user's funds.
        """
        try:
            return self._execute(withdrawal_id, asset, amount_minor, destination, hold_transfer_id)
        except WalletError as exc:
            unsendable = exc.code in (WalletCode.INVALID_AMOUNT, WalletCode.INVALID_DESTINATION)
            if not (unsendable and self.spender.records_unsendable):
                raise
            return self._refuse(
                f"wd:{withdrawal_id}", asset, amount_minor, destination, hold_transfer_id, exc.message
            )

    def _execute(
        self, withdrawal_id: str, asset: str, amount_minor: int, destination: str, hold_transfer_id: str
    ) -> TransactionView:
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
        return self._records.get(record_id)

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
        return self._records.attempts(record_id)

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
        self.spender.check(transfer, destination)
        return destination

    def _create_or_match(self, transfer: OutgoingTransfer, destination: str) -> ChainTransaction:
        now = self._clock()
        credit = self._wallets.wallet_account(transfer.source, transfer.asset)
        gas = self._wallets.wallet_account(transfer.source, self._adapter.native_asset)
        assert transfer.source_address.path is not None, "a signing address must have a BIP32 path"
        row = _queued_record(
            now,
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
            note="",
            gas_limit=self.spender.fee_units(transfer.asset),
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

    # -- queued -> signed -------------------------------------------------------------------

    def _sign(self, row: ChainTransaction) -> None:
        fees = self.spender.quote(row)
        if isinstance(fees, str):
            self._note(row.id, fees)
            return
        if not self._reserve(row):
            return
        self.spender.sign(row.id, fees)

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

    # -- signed -> broadcast ----------------------------------------------------------------

    def _broadcast(self, row: ChainTransaction) -> None:
        assert row.current_txid is not None
        if self._mined_receipt(row.id) is not None:
            self._set(row.id, status=TxStatus.BROADCAST, broadcast_height=self._adapter.head_height())
            return
        raw = self._raw(row.current_txid)
        reason = self.spender.refusal(raw)
        if reason is not None:
            self._fail(row, reason)
            return
        try:
            self._adapter.broadcast(raw)
        except ChainError as exc:
            if exc.code is not ChainCode.BROADCAST_REJECTED:
                raise
            self._note(row.id, f"broadcast refused, will retry: {exc.message}"[:NOTE_MAX_LEN])
            return
        self._set(row.id, status=TxStatus.BROADCAST, broadcast_height=self._adapter.head_height(), note="")

    def _fail(self, row: ChainTransaction, reason: str) -> None:
        """Fail a record whose transaction can never be mined: void hold and reservation, release."""
        requests = [
            TransferRequest(
                id=f"{row.id}:reserve:void",
                kind=TransferKind.VOID,
                pending_id=f"{row.id}:reserve",
                reference=reason[:100],
            )
        ]
        if row.hold_transfer_id is not None:
            requests.insert(
                0,
                TransferRequest(
                    id=f"{row.id}:hold:void",
                    kind=TransferKind.VOID,
                    pending_id=row.hold_transfer_id,
                    reference=reason[:100],
                ),
            )
        results = self._ledger.submit(requests, linked=True)
        if not all(r.ok for r in results):
            self._note(row.id, f"could not void after failure: {results[0].message}")
            return
        with self._sessions.begin() as session:
            self.spender.release(session, row.id)
        self._set(row.id, status=TxStatus.FAILED, note=reason[:NOTE_MAX_LEN])
        log.error("%s %s failed: %s", row.purpose, row.id, reason)

    def _refuse(
        self, record_id: str, asset: str, amount: int, destination: str, hold: str, reason: str
    ) -> TransactionView:
        """Record a withdrawal that can never be sent as failed and void its hold (idempotent)."""
        hot = self._wallets.one(self._chain, Temperature.HOT)
        source = self._wallets.primary_address(hot.id)
        now = self._clock()
        account = self._wallets.wallet_account(hot, asset)
        with self._sessions.begin() as session:
            if session.get(ChainTransaction, record_id) is None:
                session.add(
                    _queued_record(
                        now,
                        id=record_id,
                        chain=self._chain,
                        purpose=Purpose.WITHDRAWAL.value,
                        asset=asset,
                        amount_minor=max(amount, 0),
                        source_wallet_id=hot.id,
                        source_address=source.address,
                        source_path=source.path or "",
                        destination=str(destination)[:128],
                        debit_account_id=0,
                        credit_account_id=account,
                        gas_account_id=account,
                        hold_transfer_id=hold,
                        note=reason[:NOTE_MAX_LEN],
                        gas_limit=0,
                    )
                )
        row = self._load(record_id)
        if row.status == TxStatus.QUEUED.value and row.current_txid is None:
            result = self._ledger.submit(
                [
                    TransferRequest(
                        id=f"{record_id}:hold:void",
                        kind=TransferKind.VOID,
                        pending_id=hold,
                        reference=reason[:100],
                    )
                ]
            )[0]
            if result.ok:
                self._set(record_id, status=TxStatus.FAILED, note=reason[:NOTE_MAX_LEN])
        return self.get(record_id)

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
        Ethereum, BIP125 from the change output on Bitcoin) is the spender's ``replace``.
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
        self.spender.replace(row, head)

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
        return self._records.load(record_id)

    def _raw(self, txid: str) -> bytes:
        return self._records.raw(txid)

    def _note(self, record_id: str, note: str) -> None:
        self._records.note(record_id, note)

    def _set(self, record_id: str, **fields: Any) -> None:
        self._records.set(record_id, **fields)
