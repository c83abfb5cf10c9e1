"""The deposit watcher: follow blocks by hash, credit deposits after N confirmations, undo reorgs.

Ledger entries per deposit attempt ``a`` (ids derive from chain facts, so a
restart at any point re-submits the same ids and the ledger answers "exists"):

- seen:      PENDING deposits_in_flight -> user_available        (``<dep>:a<a>:user``)
             PENDING deposit wallet     -> deposits_in_flight     (``<dep>:a<a>:wallet``)
- confirmed: POST both (user credited; wallet account holds the coins)
- reorged:   VOID both. If the transaction reappears in another block it is
             applied again as attempt ``a+1`` with fresh ids.
- reorged after it was already posted (deeper than N): the owner's withdrawals
  are frozen (``custody.freezes``) and a ``deposit.reorged_after_credit`` alert
  is appended to the security log, in the transaction that records the reorg;
  then a correcting entry by ``service:reorg-correction`` takes the credit
  back (``<dep>:a<a>:user:reversal`` user -> deposits_in_flight and
  ``<dep>:a<a>:wallet:reversal`` deposits_in_flight -> wallet, linked). If the
  owner already spent part of it, the correction takes what the owner still
  has and books the rest to ``platform.reorg-shortfall`` (EXTERNAL, a claim on
  the owner): ``<dep>:a<a>:correction:{user,shortfall,wallet}``, status
  ``shortfall``, and a ``deposit.reorg_shortfall`` alert (docs/wallets.md).

Each status change is committed to ``chain_deposits`` with ``ledger_synced``
false *before* the ledger write, and set true after it; every tick first
finishes unsynced rows, so a crash between the two never loses or doubles a credit.

A :class:`DepositGate` (compliance) decides each new deposit in the
transaction that records it and may name another account to credit than the
owner's available balance (held over a KYC cap, sanctions quarantine).

Where to scan is a persisted cursor per chain (``chain_scan_cursors``): its
``start_height`` (the safe point) is pinned by :meth:`DepositWatcher.pin_start`
when the chain's wallets are set up (the configured start height, else the
chain head then: no deposit address exists before its wallet), and
``next_height`` moves with every scanned block in the block's own transaction.
A first tick without a cursor starts at the configured height, else at the head.
A reorg rewinds ``next_height`` to the fork, never below the safe point, so a
reorg deeper than every stored block rescans from there instead of the tip.

UTXO chains plug in a :class:`BlockObserver`: it sees every scanned block and
every reorg inside the same database transaction as the watcher's own
bookkeeping (Bitcoin keeps its UTXO set this way), so the two never disagree.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from custody import freezes, security_log
from custody.chains.adapter import Block, ChainAdapter
from custody.ledger.codes import LedgerCode, LedgerError
from custody.ledger.entry import SERVICE_ACTOR, AccountKind, TransferKind
from custody.ledger.posting import TransferRequest
from custody.wallets.models import ChainBlock, ChainDeposit, ChainScanCursor
from custody.wallets.wallet import AddressInfo, Temperature, WalletRegistry

log = logging.getLogger(__name__)

MAX_BLOCKS_PER_TICK = 500
MAX_REORG_DEPTH = 128
# Keep enough block hashes to detect any reorg we are willing to handle.
KEPT_BLOCKS = 2 * MAX_REORG_DEPTH
MAX_UNSYNCED_PER_TICK = 1000
DEFAULT_CONFIRMATIONS = {"ETH": 12, "USDC": 12, "BTC": 6}
# The watcher's own entries keep the ledger's service actor; alerts name the watcher.
WATCHER_ACTOR = "service:deposit-watcher"
CORRECTION_ACTOR = "service:reorg-correction"
SHORTFALL_OWNER = "platform.reorg-shortfall"


class DepositStatus:
    """Where a deposit stands."""

    SEEN = "seen"
    CREDITED = "credited"
    VOIDED = "voided"
    REVERSED = "reversed"
    SHORTFALL = "shortfall"


class BlockObserver(Protocol):
    """A chain-specific follower of the watcher's blocks, called inside the watcher's transactions."""

    def on_block(self, session: Session, block: Block, now_ms: int) -> None:
        """Record what ``block`` (now on the best chain) means for us."""
        ...

    def on_reorg(self, session: Session, fork_height: int, now_ms: int) -> None:
        """Undo everything recorded for blocks above ``fork_height``."""
        ...


class DepositGate(Protocol):
    """Compliance's say over incoming deposits (custody.compliance.deposits implements it)."""

    def on_seen(self, session: Session, deposit: ChainDeposit, sender: str, now_ms: int) -> None:
        """Decide, in the transaction that first records ``deposit``, whether it is credited or held."""
        ...

    def credit_account(self, deposit: ChainDeposit) -> int | None:
        """Return the account that receives ``deposit`` instead of its owner's available balance, or None."""
        ...


class ReorgTooDeep(RuntimeError):
    """The chain forked deeper than MAX_REORG_DEPTH: stop and let an operator look."""


@dataclass(slots=True)
class TickReport:
    """What one watcher tick did."""

    scanned_to: int = 0
    seen: int = 0
    credited: int = 0
    voided: int = 0
    reorg_depth: int = 0
    alerts: list[str] = field(default_factory=list)


def deposit_id(chain: str, txid: str, index: int) -> str:
    """Return the stable id of a deposit: chain, transaction and log index (``n`` for native)."""
    where = "n" if index < 0 else str(index)
    return f"dep:{chain}:{txid.removeprefix('0x')}:{where}"


class DepositWatcher:
    """Scan one chain for deposits into the deposit wallet's addresses."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        wallets: WalletRegistry,
        adapter: ChainAdapter,
        clock: Callable[[], int],
        confirmations: Mapping[str, int] | None = None,
        start_height: int | None = None,
        observer: BlockObserver | None = None,
        gate: DepositGate | None = None,
    ) -> None:
        self._sessions = sessions
        self._observer = observer
        self._gate = gate
        self._wallets = wallets
        self._ledger = wallets.ledger
        self._adapter = adapter
        self._chain = adapter.chain
        self._clock = clock
        self.confirmations = dict(DEFAULT_CONFIRMATIONS if confirmations is None else confirmations)
        for asset, n in self.confirmations.items():
            assert n >= 1, f"confirmations for {asset} were {n}, must be >= 1"
        self._start_height = start_height

    # -- the loop body ----------------------------------------------------------------------

    def tick(self) -> TickReport:
        """Sync the ledger, undo any reorg, scan new blocks, then confirm what is deep enough."""
        report = TickReport()
        self._sync_ledger(report)
        head = self._adapter.head_height()
        report.reorg_depth = self._handle_reorg(report)
        self._sync_ledger(report)
        next_height = self._next_height(head)
        last = min(head, next_height + MAX_BLOCKS_PER_TICK - 1)
        watched = self._watched()
        ours = set(self._wallets.address_index(self._chain))
        for height in range(next_height, last + 1):
            self._scan(self._adapter.block(height), watched, ours, report)
        report.scanned_to = max(last, next_height - 1)
        self._sync_ledger(report)
        self._confirm(report.scanned_to, report)
        self._sync_ledger(report)
        return report

    def scanned_height(self) -> int | None:
        """Return the height of the last processed block, or None before the first scan."""
        with self._sessions() as session:
            return session.scalar(select(func.max(ChainBlock.height)).where(ChainBlock.chain == self._chain))

    def pin_start(self) -> int:
        """Create the chain's scan cursor if missing (configured height, else the head); return its start.

        Called when the chain's wallets are set up, so deposits to their addresses made before the
        watcher's first tick are still scanned. An existing cursor is kept as it is.
        """
        with self._sessions.begin() as session:
            cursor = session.get(ChainScanCursor, self._chain, with_for_update=True)
            if cursor is None:
                cursor = self._new_cursor(session, self._adapter.head_height())
            return cursor.start_height

    def cursor(self) -> tuple[int, int] | None:
        """Return the scan cursor's (start_height, next_height), or None before it exists."""
        with self._sessions() as session:
            cursor = session.get(ChainScanCursor, self._chain)
            return None if cursor is None else (cursor.start_height, cursor.next_height)

    def _new_cursor(self, session: Session, head: int) -> ChainScanCursor:
        scanned = session.scalar(select(func.max(ChainBlock.height)).where(ChainBlock.chain == self._chain))
        start = self._start_height if self._start_height is not None else head
        if scanned is not None:  # blocks scanned before cursors existed: resume after them
            start = min(start, scanned + 1)
        cursor = ChainScanCursor(chain=self._chain, start_height=start,
                                 next_height=start if scanned is None else scanned + 1,
                                 updated_ms=self._clock())
        session.add(cursor)
        session.flush()
        return cursor

    def _next_height(self, head: int) -> int:
        with self._sessions.begin() as session:
            cursor = session.get(ChainScanCursor, self._chain)
            if cursor is None:
                cursor = self._new_cursor(session, head)
            return cursor.next_height

    def _watched(self) -> dict[str, AddressInfo]:
        deposit_wallets = {
            w.id for w in self._wallets.list_wallets(self._chain) if w.temperature is Temperature.DEPOSIT
        }
        return {
            key: info
            for key, info in self._wallets.address_index(self._chain).items()
            if info.wallet_id in deposit_wallets and info.owner is not None
        }

    # -- reorgs -----------------------------------------------------------------------------

    def _handle_reorg(self, report: TickReport) -> int:
        """Walk back from our newest block until our hash matches the chain's; undo everything above."""
        with self._sessions() as session:
            stored = session.scalars(
                select(ChainBlock)
                .where(ChainBlock.chain == self._chain)
                .order_by(ChainBlock.height.desc())
                .limit(MAX_REORG_DEPTH + 1)
            ).all()
            known = [(b.height, b.hash) for b in stored]
        fork_height: int | None = None
        for height, block_hash in known:
            if self._adapter.block_hash(height) == block_hash:
                fork_height = height
                break
        if known and fork_height == known[0][0]:
            return 0
        if fork_height is None and known:
            if len(known) > MAX_REORG_DEPTH:
                raise ReorgTooDeep(f"{self._chain}: no common block in the last {MAX_REORG_DEPTH} blocks")
            fork_height = known[-1][0] - 1
        if fork_height is None:
            return 0
        depth = known[0][0] - fork_height
        log.warning("%s reorg: dropping %d blocks above %d", self._chain, depth, fork_height)
        now = self._clock()
        with self._sessions.begin() as session:
            dropped = session.scalars(
                select(ChainDeposit).where(
                    ChainDeposit.chain == self._chain,
                    ChainDeposit.block_height > fork_height,
                    ChainDeposit.status.in_([DepositStatus.SEEN, DepositStatus.CREDITED]),
                )
            ).all()
            for row in dropped:
                if row.status == DepositStatus.CREDITED:
                    _alert_reorged_credit(session, row, fork_height, now)
                row.status = (
                    DepositStatus.VOIDED if row.status == DepositStatus.SEEN else DepositStatus.REVERSED
                )
                row.ledger_synced = False
                row.updated_ms = now
                report.voided += 1
            session.execute(
                delete(ChainBlock).where(ChainBlock.chain == self._chain, ChainBlock.height > fork_height)
            )
            cursor = session.get(ChainScanCursor, self._chain, with_for_update=True)
            if cursor is not None:
                # Deeper than every stored block: rescan from the safe point, never from the tip.
                cursor.next_height = max(min(cursor.next_height, fork_height + 1), cursor.start_height)
                cursor.updated_ms = now
            if self._observer is not None:
                self._observer.on_reorg(session, fork_height, now)
        return depth

    # -- scanning ---------------------------------------------------------------------------

    def _scan(
        self, block: Block, watched: dict[str, AddressInfo], ours: set[str], report: TickReport
    ) -> None:
        """Record one block and the deposits in it, in one database transaction."""
        now = self._clock()
        with self._sessions.begin() as session:
            for transfer in block.transfers:
                target = watched.get(transfer.recipient.lower())
                # Our own movements (gas top-ups from the hot wallet) are not user deposits.
                if target is None or transfer.sender.lower() in ours:
                    continue
                if transfer.asset not in self.confirmations:
                    continue
                dep_id = deposit_id(self._chain, transfer.txid, transfer.index)
                row = session.get(ChainDeposit, dep_id)
                if row is None:
                    assert target.owner is not None
                    row = ChainDeposit(
                        id=dep_id,
                        chain=self._chain,
                        asset=transfer.asset,
                        txid=transfer.txid,
                        log_index=transfer.index,
                        address=target.address,
                        owner=target.owner,
                        wallet_id=target.wallet_id,
                        amount_minor=transfer.amount_minor,
                        block_height=block.height,
                        block_hash=block.hash,
                        attempt=0,
                        status=DepositStatus.SEEN,
                        ledger_synced=False,
                        updated_ms=now,
                    )
                    session.add(row)
                    if self._gate is not None:
                        self._gate.on_seen(session, row, transfer.sender, now)
                    report.seen += 1
                elif row.status in (DepositStatus.VOIDED, DepositStatus.REVERSED) and row.ledger_synced:
                    # The transaction came back in another block: apply it again with fresh ids.
                    assert row.amount_minor == transfer.amount_minor and row.asset == transfer.asset
                    row.attempt += 1
                    row.block_height, row.block_hash = block.height, block.hash
                    row.status, row.ledger_synced, row.updated_ms = DepositStatus.SEEN, False, now
                    report.seen += 1
            if self._observer is not None:
                self._observer.on_block(session, block, now)
            session.add(
                ChainBlock(
                    chain=self._chain, height=block.height, hash=block.hash, parent_hash=block.parent_hash
                )
            )
            cursor = session.get(ChainScanCursor, self._chain, with_for_update=True)
            if cursor is None:
                cursor = ChainScanCursor(chain=self._chain, start_height=block.height, next_height=0,
                                         updated_ms=now)
                session.add(cursor)
            cursor.next_height, cursor.updated_ms = block.height + 1, now
            session.execute(
                delete(ChainBlock).where(
                    ChainBlock.chain == self._chain, ChainBlock.height <= block.height - KEPT_BLOCKS
                )
            )

    def _confirm(self, height: int, report: TickReport) -> None:
        now = self._clock()
        with self._sessions.begin() as session:
            rows = session.scalars(
                select(ChainDeposit).where(
                    ChainDeposit.chain == self._chain,
                    ChainDeposit.status == DepositStatus.SEEN,
                    ChainDeposit.ledger_synced.is_(True),
                )
            ).all()
            for row in rows:
                if height - row.block_height + 1 >= self.confirmations[row.asset]:
                    row.status, row.ledger_synced, row.updated_ms = DepositStatus.CREDITED, False, now
                    report.credited += 1

    # -- ledger -----------------------------------------------------------------------------

    def _sync_ledger(self, report: TickReport) -> None:
        """Make the ledger match every deposit row whose status changed since its last ledger write."""
        with self._sessions() as session:
            rows = session.scalars(
                select(ChainDeposit)
                .where(ChainDeposit.ledger_synced.is_(False))
                .order_by(ChainDeposit.updated_ms)
                .limit(MAX_UNSYNCED_PER_TICK)
            ).all()
        for row in rows:
            status = self._apply(row, report)
            with self._sessions.begin() as session:
                fresh = session.get(ChainDeposit, row.id)
                assert fresh is not None
                if fresh.status == row.status and fresh.attempt == row.attempt:
                    fresh.status, fresh.ledger_synced = status, True

    def _apply(self, row: ChainDeposit, report: TickReport) -> str:
        held = self._gate.credit_account(row) if self._gate is not None else None
        user = self._wallets.user_account(row.owner, row.asset) if held is None else held
        in_flight = self._wallets.platform_account(AccountKind.DEPOSITS_IN_FLIGHT, row.asset)
        wallet = self._wallets.wallet_account(self._wallets.get_by_id(row.wallet_id), row.asset)
        base = f"{row.id}:a{row.attempt}"
        ref = f"deposit {row.txid} block {row.block_height}"
        if row.status == DepositStatus.SEEN:
            requests = [
                TransferRequest(
                    id=f"{base}:user",
                    kind=TransferKind.PENDING,
                    debit_account=in_flight,
                    credit_account=user,
                    amount=row.amount_minor,
                    reference=ref,
                ),
                TransferRequest(
                    id=f"{base}:wallet",
                    kind=TransferKind.PENDING,
                    debit_account=wallet,
                    credit_account=in_flight,
                    amount=row.amount_minor,
                    reference=ref,
                ),
            ]
        elif row.status in (DepositStatus.CREDITED, DepositStatus.VOIDED):
            kind = TransferKind.POST if row.status == DepositStatus.CREDITED else TransferKind.VOID
            requests = [
                TransferRequest(
                    id=f"{base}:{leg}:{kind.value}", kind=kind, pending_id=f"{base}:{leg}", reference=ref
                )
                for leg in ("user", "wallet")
            ]
        elif row.status == DepositStatus.REVERSED:
            requests = [
                TransferRequest(
                    id=f"{base}:user:reversal",
                    debit_account=user,
                    credit_account=in_flight,
                    amount=row.amount_minor,
                    reference=f"reorg correction of {ref}",
                ),
                TransferRequest(
                    id=f"{base}:wallet:reversal",
                    debit_account=in_flight,
                    credit_account=wallet,
                    amount=row.amount_minor,
                    reference=f"reorg correction of {ref}",
                ),
            ]
        else:
            return row.status
        actor = CORRECTION_ACTOR if row.status == DepositStatus.REVERSED else SERVICE_ACTOR
        results = self._ledger.submit(requests, linked=True, actor=actor)
        failed = [r for r in results if not r.ok and r.code is not LedgerCode.LINKED_TRANSFER_FAILED]
        if not failed:
            return row.status
        if row.status == DepositStatus.VOIDED and failed[0].code is LedgerCode.PENDING_TRANSFER_NOT_FOUND:
            return row.status  # the pending was never written: nothing to undo
        if row.status == DepositStatus.REVERSED and failed[0].code is LedgerCode.INSUFFICIENT_FUNDS:
            return self._correct_shortfall(row, user, in_flight, wallet, report)
        raise LedgerError(failed[0].code or LedgerCode.INVALID_FIELD, failed[0].message)

    def _correct_shortfall(
        self, row: ChainDeposit, user: int, in_flight: int, wallet: int, report: TickReport
    ) -> str:
        """Take back what the owner still has; book the rest as a claim on the owner; alert."""
        available = self._ledger.get_account(user).balance.credit_balance_available
        taken = max(0, min(available, row.amount_minor))
        missing = row.amount_minor - taken
        shortfall = self._ledger.ensure_account(SHORTFALL_OWNER, row.asset, AccountKind.EXTERNAL).id
        base, ref = f"{row.id}:a{row.attempt}:correction", f"reorg correction of deposit {row.txid}"
        requests = [
            TransferRequest(id=f"{base}:user", debit_account=user, credit_account=in_flight, amount=taken,
                            reference=ref) if taken else None,
            TransferRequest(id=f"{base}:shortfall", debit_account=shortfall, credit_account=in_flight,
                            amount=missing, reference=f"{ref}: owed by {row.owner}"),
            TransferRequest(id=f"{base}:wallet", debit_account=in_flight, credit_account=wallet,
                            amount=row.amount_minor, reference=ref),
        ]
        results = self._ledger.submit([r for r in requests if r is not None], linked=True,
                                      actor=CORRECTION_ACTOR)
        failed = [r for r in results if not r.ok and r.code is not LedgerCode.LINKED_TRANSFER_FAILED]
        if failed:
            # The owner spent more meanwhile: the row stays unsynced and the next tick recomputes.
            raise LedgerError(failed[0].code or LedgerCode.INVALID_FIELD, failed[0].message)
        alert = (
            f"deposit {row.id} was reorged out after crediting {row.owner}, who has already "
            f"spent it: shortfall of {missing} {row.asset} booked to {SHORTFALL_OWNER}"
        )
        log.error(alert)
        report.alerts.append(alert)
        with self._sessions.begin() as session:
            security_log.append(session, at_ms=self._clock(), actor=CORRECTION_ACTOR,
                                action="deposit.reorg_shortfall", subject=row.id, outcome="alert",
                                details={"owner": row.owner, "asset": row.asset, "taken": str(taken),
                                         "shortfall": str(missing)})
        return DepositStatus.SHORTFALL


def _alert_reorged_credit(session: Session, row: ChainDeposit, fork_height: int, now_ms: int) -> None:
    """Freeze the owner's withdrawals and raise the alert, in the reorg's own transaction."""
    reason = (f"deposit {row.txid} of {row.amount_minor} {row.asset} left the {row.chain} chain "
              f"after it was credited (fork below block {row.block_height})")
    freezes.freeze(session, freeze_id=f"reorg:{row.id}:a{row.attempt}", owner=row.owner, reason=reason,
                   raised_by=WATCHER_ACTOR, now_ms=now_ms)
    security_log.append(session, at_ms=now_ms, actor=WATCHER_ACTOR, action="deposit.reorged_after_credit",
                        subject=row.id, outcome="alert",
                        details={"owner": row.owner, "asset": row.asset, "amount": str(row.amount_minor),
                                 "txid": row.txid, "block_height": row.block_height,
                                 "fork_height": fork_height})
    log.error("security alert: %s; %s's withdrawals are frozen", reason, row.owner)
