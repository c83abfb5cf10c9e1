"""Hand approved hot withdrawals to the chain executor and close them when the chain decides.

State machine, continued from custody.withdrawals.service::

    approved --dispatch--> broadcasting --confirmed--> completed   (hold posted by the executor)
                                        --failed-----> failed      (hold voided by the executor)

The executor is idempotent by withdrawal id (``wd:<id>``) and owns the ledger
hold from here on: it posts the hold when the transaction confirms and voids
it if the transaction fails. A withdrawal in ``broadcasting`` cannot be
cancelled, so its hold can never be voided while a transaction is in flight.
Cold-source withdrawals are not touched here: custody.bundles exports them to
the offline signer (approved -> awaiting_signature), imports the signed
bundle, broadcasts it and closes them the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody import freezes, withdrawal_halts
from custody.ledger.entry import TransferKind
from custody.ledger.posting import REFERENCE_MAX_LEN, TransferRequest
from custody.ledger.service import Ledger
from custody.wallets.codes import WalletCode, WalletError
from custody.wallets.withdrawal_executor import TxStatus, WithdrawalExecutor
from custody.withdrawals import lifecycle
from custody.withdrawals.lifecycle import Event, Kind
from custody.withdrawals.models import WithdrawalRequest
from custody.withdrawals.service import APPROVED, BROADCASTING, FAILED, hold_is_live

log = logging.getLogger(__name__)

DISPATCH_BATCH_MAX = 100
HOT = "hot"


@dataclass(frozen=True, slots=True)
class DispatchReport:
    """What one round did: withdrawal ids dispatched, completed and failed."""

    dispatched: list[str]
    completed: list[str]
    failed: list[str]


class WithdrawalDispatcher:
    """Move approved hot withdrawals of the executor's assets on chain, and record the outcome."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        executor: WithdrawalExecutor,
        assets: Collection[str],
        clock: Callable[[], int],
        ledger: Ledger,
        on_sent: Callable[[str, str], object] | None = None,
    ) -> None:
        # on_sent(withdrawal_id, txid): told once the transaction has a txid, again every round while
        # it is in flight (the receiver is idempotent, e.g. the travel-rule notification). It can
        # fail: the broadcast already happened and nothing here depends on it.
        self._on_sent = on_sent
        self._sessions = sessions
        self._ledger = ledger
        self._executor = executor
        self._assets = frozenset(assets)
        self._clock = clock

    def run(self, limit: int = DISPATCH_BATCH_MAX) -> DispatchReport:
        """Dispatch approved withdrawals, then close those whose transaction is final."""
        dispatched = [row_id for row_id in self._ids(APPROVED, limit) if self._dispatch(row_id)]
        completed: list[str] = []
        failed: list[str] = []
        for row_id in self._ids(BROADCASTING, limit):
            status = self._status(row_id)
            if status is TxStatus.CONFIRMED:
                self._move(row_id, BROADCASTING, Event.CONFIRM, "transaction confirmed")
                completed.append(row_id)
            elif status is TxStatus.FAILED:
                failed.append(row_id)
            if status is not TxStatus.FAILED:
                self._announce(row_id)
        return DispatchReport(dispatched, completed, failed)

    def _status(self, row_id: str) -> TxStatus:
        """Return the executor record's status, repairing a claim whose record was never made."""
        try:
            status = self._executor.get(f"wd:{row_id}").status
        except WalletError as exc:
            if exc.code is not WalletCode.TRANSACTION_NOT_FOUND:
                raise
            # Claimed, then the process stopped before execute() recorded anything: do it now.
            status = self._execute(row_id)
        if status is TxStatus.FAILED:
            self._move(row_id, BROADCASTING, Event.FAIL, "transaction failed; hold returned")
        return status

    def _execute(self, row_id: str) -> TxStatus:
        """Call the executor; a request it refuses outright fails the withdrawal and frees the hold."""
        with self._sessions() as session:
            row = session.get(WithdrawalRequest, row_id)
            assert row is not None
            asset, amount, destination, hold = row.asset, row.amount, row.destination, row.hold_transfer_id
        try:
            return self._executor.execute(row_id, asset, amount, destination, hold).status
        except WalletError as exc:
            # execute() validates before it records anything, so no transaction exists:
            # returning the funds is safe, and leaving them held would strand them.
            log.warning("withdrawal %s refused by the executor: %s", row_id, exc.message)
            reason = f"withdrawal {row_id} refused on chain: {exc.code.name.lower()}"
            self._ledger.submit([TransferRequest(id=f"{row_id}:void", kind=TransferKind.VOID, pending_id=hold,
                                                 reference=reason[:REFERENCE_MAX_LEN])],
                                actor="service:withdrawal-dispatch")
            self._move(row_id, BROADCASTING, Event.FAIL, f"refused by the hot wallet: {exc.message}"[:256])
            return TxStatus.FAILED

    def _ids(self, state: str, limit: int) -> list[str]:
        with self._sessions() as session:
            return list(session.scalars(
                select(WithdrawalRequest.id)
                .where(WithdrawalRequest.state == state, WithdrawalRequest.source_wallet == HOT,
                       WithdrawalRequest.asset.in_(sorted(self._assets)))
                .order_by(WithdrawalRequest.created_ms).limit(limit)))

    def _dispatch(self, row_id: str) -> bool:
        with self._sessions() as session:
            owner, asset = session.execute(select(WithdrawalRequest.username, WithdrawalRequest.asset)
                                           .where(WithdrawalRequest.id == row_id)).one_or_none() or (None, "")
            if owner is not None and freezes.is_frozen(session, owner):
                return False  # frozen (a deposit reorged out after credit): wait for the review
            if withdrawal_halts.halted(session, asset) is not None:
                return False  # withdrawals of its chain (or all) are halted: it waits, its hold intact
        # Claim first: once broadcasting, nothing can void the hold behind the executor's back.
        # The claim checks the hold is live: coins are never sent for funds nobody holds.
        handed = "handed to the hot wallet"
        if not self._move(row_id, APPROVED, Event.DISPATCH, handed, require_live_hold=True):
            return False
        # execute() persists its record before any chain call and is idempotent by id,
        # so a crash here is repaired by the next round (see _status).
        if self._execute(row_id) is not TxStatus.FAILED:
            self._announce(row_id)
        return True

    def _announce(self, row_id: str) -> None:
        """Tell ``on_sent`` the withdrawal's txid, if it has one; a failure is logged, never raised."""
        if self._on_sent is None:
            return
        try:
            txid = self._executor.get(f"wd:{row_id}").txid
            if txid is not None:
                self._on_sent(row_id, txid)
        except Exception as exc:  # the hook never blocks or undoes a broadcast
            log.warning("withdrawal %s: on_sent hook failed (%s); retried next round", row_id,
                        type(exc).__name__)

    def _move(self, row_id: str, from_state: str, event: Event, reason: str,
              *, require_live_hold: bool = False) -> bool:
        now_ms = self._clock()
        with self._sessions.begin() as session:
            row = session.get(WithdrawalRequest, row_id, with_for_update=True)
            if row is None or row.state != from_state:
                return False
            if require_live_hold and not hold_is_live(session, row.hold_transfer_id):
                lifecycle.transition(
                    session, Kind.WITHDRAWAL, row_id, from_state, Event.FAIL, actor="system", now_ms=now_ms,
                    values={"closed_by": "system", "close_reason": "not sent: its ledger hold is not live"},
                    action="withdrawal.hold_not_live", outcome=FAILED, details={"hold": row.hold_transfer_id},
                )
                log.error("withdrawal %s not sent: hold %s is not live", row_id, row.hold_transfer_id)
                return False
            closing = event in (Event.CONFIRM, Event.FAIL)
            moved = lifecycle.transition(
                session, Kind.WITHDRAWAL, row_id, from_state, event, actor="system", now_ms=now_ms,
                values={"closed_by": "system", "close_reason": reason} if closing else None,
                details={"reason": reason},
            )
        to_state = moved.to_state
        log.info("withdrawal %s: %s -> %s", row_id, from_state, to_state)
        return True
