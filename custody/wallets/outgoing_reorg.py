"""Outgoing transactions reorganised out *after* they were settled: detect, freeze, alert, correct.

The executor settles a withdrawal, sweep, consolidation or gas top-up after N
confirmations (``confirmed`` is final for it). A reorg deeper than N can still
take that transaction out of the best chain, or put it back as a failure. This
check follows every confirmed transaction of the last ``WINDOW_BLOCKS`` blocks
and, when one is no longer mined successfully, records an ``outgoing_reorgs``
row ``<record id>:r<n>`` in one database transaction with:

- the **freeze**: a withdrawal's owner (``account_freezes``, id ``reorg-out:<row id>``,
  the owner read from the withdrawal's hold in the ledger); a sweep, consolidation
  or top-up halts the chain's withdrawals (``withdrawal_halts``, scope ``chain:<chain>``);
- the **alert**: ``withdrawal.reorged_after_settlement`` in the security log and an ERROR line.

Then the **correcting entry** (actor ``service:reorg-correction``, linked, ids fixed by ``n``):

- ``<id>:r<n>:reserve:reversal`` W -> D: the wallet holds the coins again (they never left
  on the best chain) and the destination-side account D (withdrawals_in_flight for a
  withdrawal) holds the amount that is still owed; the user's hold stays posted;
- ``<id>:r<n>:gas:reversal`` W_native -> network-fees: the fee was not paid after all.

While the row is ``reversed`` the signed transaction is re-broadcast every tick (still
valid: on Ethereum its nonce was never used by anything else of ours, on Bitcoin its coins
stay locked to the record). When it is mined again successfully with N confirmations the
row becomes ``resettled`` and books, once, ``<id>:r<n>:resettle`` D -> W and
``<id>:r<n>:gas`` network-fees -> W_native with the fee of the receipt. Mined again but
failed: ``reverted``, only the gas is booked and the amount stays in D for operators (an
alert says so). A second reorg of the same transaction is ``r<n+1>``.

Each status change is committed with ``ledger_synced`` false before the ledger write and set
true after it, so a crash between the two is finished by the next tick (the ids make the
repeat a no-op). The freeze stays until two admins lift it (custody/freezes.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from custody import freezes, security_log, withdrawal_halts
from custody.chains.adapter import ChainAdapter, ChainError, Receipt
from custody.ledger.codes import LedgerCode, LedgerError
from custody.ledger.entry import AccountKind, TransferKind
from custody.ledger.posting import TransferRequest
from custody.wallets.models import ChainTransaction, ChainTransactionAttempt, OutgoingReorg
from custody.wallets.wallet import WalletRegistry

log = logging.getLogger(__name__)

# Settled transactions mined in the last WINDOW_BLOCKS blocks are re-checked every tick.
WINDOW_BLOCKS = 256
MAX_CHECKED_PER_TICK = 500
CHECK_ACTOR = "service:outgoing-reorg"
CORRECTION_ACTOR = "service:reorg-correction"
FREEZE_PREFIX = "reorg-out:"


class ReorgStatus:
    """Where a reorged outgoing transaction stands."""

    REVERSED = "reversed"
    RESETTLED = "resettled"
    REVERTED = "reverted"


@dataclass(slots=True)
class OutgoingReorgReport:
    """What one check did."""

    checked: int = 0
    reversed: list[str] = field(default_factory=list)
    resettled: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)


class OutgoingReorgCheck:
    """Re-check the settled outgoing transactions of one chain against its best chain."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        wallets: WalletRegistry,
        adapter: ChainAdapter,
        clock: Callable[[], int],
        confirmations: dict[str, int],
    ) -> None:
        for asset, n in confirmations.items():
            assert n >= 1, f"confirmations for {asset} were {n}, must be >= 1"
        self._sessions = sessions
        self._wallets = wallets
        self._ledger = wallets.ledger
        self._adapter = adapter
        self._chain = adapter.chain
        self._clock = clock
        self._confirmations = dict(confirmations)

    def tick(self) -> OutgoingReorgReport:
        """Finish unsynced corrections, detect new reorgs, follow the open ones."""
        report = OutgoingReorgReport()
        self._sync_ledger()
        head = self._adapter.head_height()
        open_ids = self._open_transaction_ids()
        for row in self._settled_recently(head):
            report.checked += 1
            if row.id in open_ids or row.mined_txid is None:
                continue
            receipt = self._adapter.receipt(row.mined_txid)
            if receipt is None or not receipt.success:
                self._detect(row, report)
        self._follow_open(head, report)
        self._sync_ledger()
        return report

    # -- detection --------------------------------------------------------------------------

    def _settled_recently(self, head: int) -> list[ChainTransaction]:
        with self._sessions() as session:
            return list(session.scalars(
                select(ChainTransaction).where(
                    ChainTransaction.chain == self._chain,
                    ChainTransaction.status == "confirmed",
                    ChainTransaction.mined_height > head - WINDOW_BLOCKS,
                ).order_by(ChainTransaction.mined_height.desc()).limit(MAX_CHECKED_PER_TICK)
            ))

    def _open_transaction_ids(self) -> set[str]:
        with self._sessions() as session:
            return set(session.scalars(select(OutgoingReorg.transaction_id).where(
                OutgoingReorg.chain == self._chain, OutgoingReorg.status == ReorgStatus.REVERSED)))

    def _detect(self, tx: ChainTransaction, report: OutgoingReorgReport) -> None:
        """Record the reorg, the freeze (or chain halt) and the alert in one transaction."""
        assert tx.mined_txid is not None and tx.mined_height is not None
        owner = self._owner(tx)
        now = self._clock()
        with self._sessions.begin() as session:
            locked = session.get(ChainTransaction, tx.id, with_for_update=True)
            assert locked is not None
            earlier = session.scalar(select(func.count()).select_from(OutgoingReorg).where(
                OutgoingReorg.transaction_id == tx.id)) or 0
            if session.scalar(select(OutgoingReorg.id).where(
                    OutgoingReorg.transaction_id == tx.id,
                    OutgoingReorg.status == ReorgStatus.REVERSED)) is not None:
                return  # another checker got here first
            row = OutgoingReorg(
                id=f"{tx.id}:r{earlier}", transaction_id=tx.id, chain=tx.chain, asset=tx.asset,
                amount_minor=tx.amount_minor, txid=tx.mined_txid, mined_height=tx.mined_height,
                fee_reversed_minor=tx.fee_paid_minor or 0, status=ReorgStatus.REVERSED,
                ledger_synced=False, detected_ms=now, updated_ms=now)
            session.add(row)
            reason = (f"{tx.purpose} {tx.id} ({tx.amount_minor} {tx.asset}, tx {tx.mined_txid}) left the "
                      f"{tx.chain} chain after it was settled (was mined at {tx.mined_height})")
            if owner is not None:
                freezes.freeze(session, freeze_id=f"{FREEZE_PREFIX}{row.id}", owner=owner, reason=reason,
                               raised_by=CHECK_ACTOR, now_ms=now)
            else:
                withdrawal_halts.halt(session, scope=f"chain:{tx.chain}", reason=reason[:256],
                                      admin=CHECK_ACTOR, now_ms=now)
            security_log.append(session, at_ms=now, actor=CHECK_ACTOR,
                                action="withdrawal.reorged_after_settlement", subject=row.id,
                                outcome="alert",
                                details={"transaction": tx.id, "purpose": tx.purpose, "owner": owner,
                                         "asset": tx.asset, "amount": str(tx.amount_minor),
                                         "txid": tx.mined_txid, "mined_height": tx.mined_height})
        frozen = f"{owner}'s withdrawals are frozen" if owner else f"{tx.chain} withdrawals are halted"
        log.error("security alert: %s; %s", reason, frozen)
        report.reversed.append(row.id)
        report.alerts.append(reason)

    def _owner(self, tx: ChainTransaction) -> str | None:
        """Return the user whose withdrawal this is (the debit side of its hold), or None."""
        if tx.hold_transfer_id is None:
            return None
        try:
            hold = self._ledger.get_transfer(tx.hold_transfer_id)
        except LedgerError:
            return None
        account = self._ledger.get_account(hold.debit_account)
        return account.owner if account.kind == AccountKind.USER_AVAILABLE else None

    # -- the open ones: re-broadcast until mined again --------------------------------------

    def _follow_open(self, head: int, report: OutgoingReorgReport) -> None:
        with self._sessions() as session:
            rows = list(session.scalars(select(OutgoingReorg).where(
                OutgoingReorg.chain == self._chain, OutgoingReorg.status == ReorgStatus.REVERSED,
                OutgoingReorg.ledger_synced.is_(True)).limit(MAX_CHECKED_PER_TICK)))
        for row in rows:
            receipt = self._adapter.receipt(row.txid)
            if receipt is None:
                self._rebroadcast(row)
                continue
            needed = self._confirmations.get(row.asset, max(self._confirmations.values(), default=1))
            if head - receipt.block_height + 1 < needed:
                continue
            self._mined_again(row, receipt, report)

    def _rebroadcast(self, row: OutgoingReorg) -> None:
        with self._sessions() as session:
            attempt = session.get(ChainTransactionAttempt, row.txid)
            raw = None if attempt is None else bytes.fromhex(attempt.raw)
        if raw is None:
            return
        try:
            self._adapter.broadcast(raw)
        except ChainError as exc:
            log.info("re-broadcast of reorged %s refused: %s", row.id, exc.message)

    def _mined_again(self, row: OutgoingReorg, receipt: Receipt, report: OutgoingReorgReport) -> None:
        now = self._clock()
        status = ReorgStatus.RESETTLED if receipt.success else ReorgStatus.REVERTED
        with self._sessions.begin() as session:
            fresh = session.get(OutgoingReorg, row.id, with_for_update=True)
            assert fresh is not None
            if fresh.status != ReorgStatus.REVERSED:
                return
            fresh.status, fresh.ledger_synced, fresh.updated_ms = status, False, now
            fresh.resettled_txid, fresh.resettled_height = receipt.txid, receipt.block_height
            fresh.resettle_fee_minor = receipt.fee_paid_minor
            security_log.append(session, at_ms=now, actor=CHECK_ACTOR,
                                action="withdrawal.reorg_resettled", subject=row.id,
                                outcome="ok" if receipt.success else "alert",
                                details={"txid": receipt.txid, "block_height": receipt.block_height,
                                         "success": receipt.success})
        if receipt.success:
            report.resettled.append(row.id)
        else:
            alert = (f"reorged {row.transaction_id} was mined again in {receipt.txid} but failed on chain: "
                     f"{row.amount_minor} {row.asset} stay in the destination-side account for operators")
            log.error("security alert: %s", alert)
            report.alerts.append(alert)

    # -- ledger -----------------------------------------------------------------------------

    def _sync_ledger(self) -> None:
        with self._sessions() as session:
            pending = list(session.scalars(select(OutgoingReorg).where(
                OutgoingReorg.chain == self._chain, OutgoingReorg.ledger_synced.is_(False)
            ).order_by(OutgoingReorg.updated_ms).limit(MAX_CHECKED_PER_TICK)))
            txs = {r.transaction_id: session.get(ChainTransaction, r.transaction_id) for r in pending}
        for row in pending:
            tx = txs[row.transaction_id]
            assert tx is not None
            entries = self._entries(row, tx)
            results = self._ledger.submit(entries, linked=True, actor=CORRECTION_ACTOR) if entries else []
            failed = [r for r in results if not r.ok and r.code is not LedgerCode.LINKED_TRANSFER_FAILED]
            if failed:
                # Stays unsynced: the next tick tries again; operators see the alert meanwhile.
                log.error("ledger refused the reorg correction %s: %s", row.id, failed[0].message)
                continue
            with self._sessions.begin() as session:
                fresh = session.get(OutgoingReorg, row.id)
                assert fresh is not None
                if fresh.status == row.status:
                    fresh.ledger_synced = True

    def _entries(self, row: OutgoingReorg, tx: ChainTransaction) -> list[TransferRequest]:
        """Return the linked entries of ``row``'s current status (fixed ids: a repeat is a no-op)."""
        base, fees = f"{row.id}", self._wallets.network_fees_account(self._adapter.native_asset)
        ref = f"reorg correction of {tx.purpose} {tx.id} (tx {row.txid})"
        if row.status == ReorgStatus.REVERSED:
            entries = [TransferRequest(id=f"{base}:reserve:reversal", kind=TransferKind.SINGLE,
                                       debit_account=tx.credit_account_id, credit_account=tx.debit_account_id,
                                       amount=row.amount_minor, reference=ref)]
            if row.fee_reversed_minor > 0:
                entries.append(TransferRequest(id=f"{base}:gas:reversal", kind=TransferKind.SINGLE,
                                               debit_account=tx.gas_account_id, credit_account=fees,
                                               amount=row.fee_reversed_minor, reference=ref))
            return entries
        entries = []
        if row.status == ReorgStatus.RESETTLED:
            entries.append(TransferRequest(id=f"{base}:resettle", kind=TransferKind.SINGLE,
                                           debit_account=tx.debit_account_id,
                                           credit_account=tx.credit_account_id,
                                           amount=row.amount_minor, reference=f"{ref}: mined again"))
        if row.resettle_fee_minor:
            entries.append(TransferRequest(id=f"{base}:gas", kind=TransferKind.SINGLE, debit_account=fees,
                                           credit_account=tx.gas_account_id, amount=row.resettle_fee_minor,
                                           reference=f"gas of {row.resettled_txid}"))
        return entries
