"""Reconciliation: per wallet and asset, the on-chain balance against the ledger's wallet account.

Everything is compared at one block height H, the deposit watcher's last
scanned block, so chain and ledger are read at the same instant. The ledger
side (H itself, the wallet accounts' balances, deposits, outgoing records and
our addresses) is read in ONE database transaction (repeatable read), so a
watcher round or a settlement committing meanwhile cannot be half-counted.
The chain side is the chain's :class:`Holdings` at H: the node's state at block
H on Ethereum, one UTXO-set scan rolled back to H on Bitcoin
(custody.chains.bitcoin.holdings), so a block mined while the run reads is
not drift:

    expected(H) = ledger posted balance of the wallet account
                + unconfirmed deposits seen at or below H           (on chain, not yet posted)
                + effect of outgoing transactions mined at or below H but not yet settled
                - effect of settled ones mined above H               (posted, not yet on chain at H)

where a transaction's effect is -amount (if it succeeded) and -gas on its
source wallet and +amount on its destination if that is one of our wallets.
Outgoing transactions are the hot executor's records (``chain_transactions``)
and the cold transfers (``cold_bundles`` of custody.bundles: a bundle signed
or broadcast is unsettled, one confirmed or failed is settled), on every chain.
Any difference is a discrepancy: a transfer made outside the platform, a
missed deposit or a ledger bug. It is logged as an error and stored with the run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody.bundles.models import ColdBundle
from custody.chains.adapter import ChainAdapter, Receipt
from custody.ledger.models import LedgerAccount
from custody.wallets.codes import WalletCode, WalletError
from custody.wallets.models import (
    ChainBlock,
    ChainDeposit,
    ChainTransaction,
    ChainTransactionAttempt,
    OutgoingReorg,
    ReconciliationRun,
    WalletAddress,
)
from custody.wallets.wallet import WalletRegistry

log = logging.getLogger(__name__)

SETTLED = ("confirmed", "failed")
# Cold bundles (custody.bundles) whose transaction may be on chain: signed or broadcast ones are
# unsettled like unsettled chain_transactions; settled ones may still be above the reconciled height.
COLD_SETTLED = ("confirmed", "failed")
COLD_TRACKED = ("signed", "broadcast", *COLD_SETTLED)
MAX_OPEN_TRANSACTIONS = 1000


class Holdings(Protocol):
    """What a chain's addresses held at one height."""

    def balances(
        self, addresses: Sequence[str], height: int, block_hash: str | None
    ) -> dict[tuple[str, str], int]:
        """Return ``{(address, asset): minor units}`` at block ``height`` (hash ``block_hash`` if known)."""
        ...


class AdapterHoldings:
    """Holdings from the adapter's balance at a block (account chains keep history: Ethereum)."""

    def __init__(self, adapter: ChainAdapter) -> None:
        self._adapter = adapter

    def balances(
        self, addresses: Sequence[str], height: int, block_hash: str | None
    ) -> dict[tuple[str, str], int]:
        """Return each address's balance of every asset at block ``height``."""
        return {
            (address, asset): self._adapter.balance(address, asset, height)
            for address in addresses
            for asset in self._adapter.assets()
        }


@dataclass(frozen=True, slots=True)
class _LedgerSide:
    """Everything the database says, read in one transaction."""

    height: int
    block_hash: str | None
    posted: dict[int, int]  # ledger account id -> debits_posted - credits_posted
    addresses: dict[int, list[str]]  # wallet id -> its addresses
    seen: list[ChainDeposit]
    outgoing: list[_Outgoing]
    attempts: dict[str, list[str]]  # chain_transactions id -> txids of its versions


@dataclass(frozen=True, slots=True)
class ReconciliationLine:
    """One wallet and asset: what the chain holds and what the ledger says it should."""

    wallet: str
    temperature: str
    asset: str
    on_chain_minor: int
    ledger_posted_minor: int
    in_flight_minor: int

    @property
    def expected_minor(self) -> int:
        """Return what the chain should hold at the reconciled height."""
        return self.ledger_posted_minor + self.in_flight_minor

    @property
    def difference_minor(self) -> int:
        """Return on-chain minus expected (positive: unexplained coins; negative: missing coins)."""
        return self.on_chain_minor - self.expected_minor

    def to_json(self) -> dict[str, Any]:
        """Render with amounts as strings."""
        return {
            "wallet": self.wallet,
            "temperature": self.temperature,
            "asset": self.asset,
            "on_chain": str(self.on_chain_minor),
            "ledger_posted": str(self.ledger_posted_minor),
            "in_flight": str(self.in_flight_minor),
            "expected": str(self.expected_minor),
            "difference": str(self.difference_minor),
            "status": "ok" if self.difference_minor == 0 else "discrepancy",
        }


@dataclass(frozen=True, slots=True)
class ReconciliationReport:
    """A stored reconciliation run."""

    id: int
    chain: str
    height: int
    run_ms: int
    status: str
    lines: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """Render for the API and CLI."""
        return {
            "id": self.id,
            "chain": self.chain,
            "height": self.height,
            "run_ms": self.run_ms,
            "status": self.status,
            "lines": self.lines,
        }


class Reconciler:
    """Compare chain and ledger for every wallet of one chain."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        wallets: WalletRegistry,
        adapter: ChainAdapter,
        clock: Callable[[], int],
        holdings: Holdings | None = None,
    ) -> None:
        self._sessions = sessions
        self._wallets = wallets
        self._adapter = adapter
        self._clock = clock
        self._holdings = holdings or AdapterHoldings(adapter)

    def run(self, height: int | None = None) -> ReconciliationReport:
        """Reconcile at ``height`` (default: the watcher's last scanned block, else the head)."""
        chain = self._adapter.chain
        wallets = self._wallets.list_wallets(chain)
        assets = self._adapter.assets()
        # Creating a missing account writes, so it happens before the read-only snapshot.
        accounts = {
            (w.id, asset): self._wallets.wallet_account(w, asset) for w in wallets for asset in assets
        }
        side = self._ledger_side(height, sorted(set(accounts.values())), [w.id for w in wallets])
        every_address = [a for w in wallets for a in side.addresses.get(w.id, [])]
        held = self._holdings.balances(every_address, side.height, side.block_hash)
        in_flight = self._in_flight(side)
        lines = [
            ReconciliationLine(
                wallet=wallet.name,
                temperature=wallet.temperature.value,
                asset=asset,
                on_chain_minor=sum(held[(a, asset)] for a in side.addresses.get(wallet.id, [])),
                ledger_posted_minor=side.posted[accounts[(wallet.id, asset)]],
                in_flight_minor=in_flight.get((wallet.id, asset), 0),
            )
            for wallet in wallets
            for asset in assets
        ]
        bad = [line for line in lines if line.difference_minor != 0]
        for line in bad:
            log.error(
                "reconciliation discrepancy: wallet %s %s on chain %d, expected %d (difference %d)",
                line.wallet,
                line.asset,
                line.on_chain_minor,
                line.expected_minor,
                line.difference_minor,
            )
        status = "discrepancy" if bad else "ok"
        body = [line.to_json() for line in lines]
        row = ReconciliationRun(
            chain=chain, height=side.height, run_ms=self._clock(), status=status, report=json.dumps(body)
        )
        with self._sessions.begin() as session:
            session.add(row)
        return ReconciliationReport(row.id, chain, side.height, row.run_ms, status, body)

    def latest(self) -> ReconciliationReport:
        """Return the newest stored run or raise no_reconciliation."""
        with self._sessions() as session:
            row = session.scalar(
                select(ReconciliationRun)
                .where(ReconciliationRun.chain == self._adapter.chain)
                .order_by(ReconciliationRun.id.desc())
                .limit(1)
            )
        if row is None:
            raise WalletError(WalletCode.NO_RECONCILIATION, "no reconciliation has run yet")
        return report_from_row(row)

    # -- the ledger side, in one transaction ------------------------------------------------------

    def _ledger_side(self, height: int | None, account_ids: list[int], wallet_ids: list[int]) -> _LedgerSide:
        chain = self._adapter.chain
        with self._sessions() as session:
            _repeatable_read(session)
            if height is None:
                height = session.scalar(
                    select(ChainBlock.height).where(ChainBlock.chain == chain)
                    .order_by(ChainBlock.height.desc()).limit(1)
                )
            block_hash = None if height is None else session.scalar(
                select(ChainBlock.hash).where(ChainBlock.chain == chain, ChainBlock.height == height)
            )
            posted = {
                row.id: row.debits_posted - row.credits_posted
                for row in session.scalars(select(LedgerAccount).where(LedgerAccount.id.in_(account_ids)))
            }
            addresses: dict[int, list[str]] = {}
            for wallet_id, address in session.execute(
                select(WalletAddress.wallet_id, WalletAddress.address)
                .where(WalletAddress.wallet_id.in_(wallet_ids)).order_by(WalletAddress.id)
            ):
                addresses.setdefault(wallet_id, []).append(address)
            records = self._records(session, height)
        if height is None:  # the watcher has scanned nothing yet: the head, as it is now
            height = self._adapter.head_height()
        return _LedgerSide(height, block_hash, posted, addresses, *records)

    def _records(
        self, session: Session, height: int | None
    ) -> tuple[list[ChainDeposit], list[_Outgoing], dict[str, list[str]]]:
        chain = self._adapter.chain
        # With nothing scanned there are no deposits yet (the watcher records them).
        seen = [] if height is None else list(session.scalars(
            select(ChainDeposit).where(
                ChainDeposit.chain == chain,
                ChainDeposit.status == "seen",
                ChainDeposit.block_height <= height,
            )
        ))
        rows = session.scalars(
            select(ChainTransaction)
            .where(ChainTransaction.chain == chain, ChainTransaction.status != "queued")
            .order_by(ChainTransaction.created_ms.desc())
            .limit(MAX_OPEN_TRANSACTIONS)
        ).all()
        # A settled transaction reorged out has its settlement undone in the ledger until it is
        # mined again (custody/wallets/outgoing_reorg.py): count it as unsettled meanwhile.
        reopened = set(session.scalars(select(OutgoingReorg.transaction_id).where(
            OutgoingReorg.chain == chain, OutgoingReorg.status == "reversed")))
        cold = session.scalars(
            select(ColdBundle)
            .where(ColdBundle.chain == chain, ColdBundle.state.in_(COLD_TRACKED))
            .order_by(ColdBundle.created_ms.desc())
            .limit(MAX_OPEN_TRANSACTIONS)
        ).all()
        attempts: dict[str, list[str]] = {}
        unmined = [r.id for r in rows if r.mined_txid is None]
        if unmined:
            for record_id, txid in session.execute(
                select(ChainTransactionAttempt.transaction_id, ChainTransactionAttempt.txid)
                .where(ChainTransactionAttempt.transaction_id.in_(unmined))
            ):
                attempts.setdefault(record_id, []).append(txid)
        outgoing = [
            _Outgoing(r.source_wallet_id, r.asset, r.amount_minor, r.destination,
                      r.status in SETTLED and r.id not in reopened, r)
            for r in rows
        ] + [
            _Outgoing(b.source_wallet_id, b.asset, b.amount_minor, b.destination, b.state in COLD_SETTLED, b)
            for b in cold
        ]
        return seen, outgoing, attempts

    # -- in-flight adjustments ----------------------------------------------------------------

    def _in_flight(self, side: _LedgerSide) -> dict[tuple[int, str], int]:
        adjust: dict[tuple[int, str], int] = {}

        def add(wallet_id: int, asset: str, amount: int) -> None:
            adjust[(wallet_id, asset)] = adjust.get((wallet_id, asset), 0) + amount

        for deposit in side.seen:
            add(deposit.wallet_id, deposit.asset, deposit.amount_minor)
        ours = self._wallets.address_index(self._adapter.chain)
        native = self._adapter.native_asset
        for tx in side.outgoing:
            receipt = self._receipt(tx.record, side.attempts)
            on_chain = receipt is not None and receipt.block_height <= side.height
            if on_chain == tx.settled:
                continue
            sign = 1 if on_chain else -1
            if receipt is None:
                continue  # settled but vanished from the chain: shows up as a discrepancy
            if receipt.success:
                add(tx.source_wallet_id, tx.asset, -sign * tx.amount_minor)
                target = ours.get(tx.destination.lower())
                if target is not None:
                    add(target.wallet_id, tx.asset, sign * tx.amount_minor)
            add(tx.source_wallet_id, native, -sign * receipt.fee_paid_minor)
        return adjust

    def _receipt(
        self, row: ChainTransaction | ColdBundle, attempts: dict[str, list[str]]
    ) -> Receipt | None:
        if isinstance(row, ColdBundle):
            # A cold bundle has exactly one transaction: the one its cosigners signed.
            return None if row.txid is None else self._adapter.receipt(row.txid)
        if row.mined_txid is not None:
            return self._adapter.receipt(row.mined_txid)
        for txid in attempts.get(row.id, []):
            receipt = self._adapter.receipt(txid)
            if receipt is not None:
                return receipt
        return None


def _repeatable_read(session: Session) -> None:
    """Make every read of ``session`` see one snapshot of the database.

    PostgreSQL's default (read committed) takes a new snapshot per statement;
    repeatable read keeps the first one. SQLite sessions begin IMMEDIATE
    (custody.db), holding the write lock, so nothing commits in between.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """An outgoing transaction of ours, hot (chain_transactions) or cold (cold_bundles)."""

    source_wallet_id: int
    asset: str
    amount_minor: int
    destination: str
    settled: bool
    record: ChainTransaction | ColdBundle


def report_from_row(row: ReconciliationRun) -> ReconciliationReport:
    """Rebuild a report from its stored row."""
    return ReconciliationReport(row.id, row.chain, row.height, row.run_ms, row.status, json.loads(row.report))
