"""Reconciliation: per wallet and asset, the on-chain balance against the ledger's wallet account.

Everything is compared at one block height H, the deposit watcher's last
scanned block, so chain and ledger are read at the same instant:

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody.bundles.models import ColdBundle
from custody.chains.adapter import ChainAdapter, Receipt
from custody.wallets.codes import WalletCode, WalletError
from custody.wallets.models import (
    ChainDeposit,
    ChainTransaction,
    ChainTransactionAttempt,
    OutgoingReorg,
    ReconciliationRun,
)
from custody.wallets.wallet import WalletRegistry

log = logging.getLogger(__name__)

SETTLED = ("confirmed", "failed")
# Cold bundles (custody.bundles) whose transaction may be on chain: signed or broadcast ones are
# unsettled like unsettled chain_transactions; settled ones may still be above the reconciled height.
COLD_SETTLED = ("confirmed", "failed")
COLD_TRACKED = ("signed", "broadcast", *COLD_SETTLED)
MAX_OPEN_TRANSACTIONS = 1000


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
    ) -> None:
        self._sessions = sessions
        self._wallets = wallets
        self._adapter = adapter
        self._clock = clock

    def run(self, height: int | None = None) -> ReconciliationReport:
        """Reconcile at ``height`` (default: the watcher's last scanned block, else the head)."""
        chain = self._adapter.chain
        if height is None:
            height = self._scanned_height() or self._adapter.head_height()
        in_flight = self._in_flight(height)
        lines: list[ReconciliationLine] = []
        for wallet in self._wallets.list_wallets(chain):
            addresses = [a.address for a in self._wallets.addresses(wallet.id)]
            for asset in self._adapter.assets():
                account = self._wallets.ledger.get_account(self._wallets.wallet_account(wallet, asset))
                b = account.balance
                lines.append(
                    ReconciliationLine(
                        wallet=wallet.name,
                        temperature=wallet.temperature.value,
                        asset=asset,
                        on_chain_minor=sum(self._adapter.balance(a, asset, height) for a in addresses),
                        ledger_posted_minor=b.debits_posted - b.credits_posted,
                        in_flight_minor=in_flight.get((wallet.id, asset), 0),
                    )
                )
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
            chain=chain, height=height, run_ms=self._clock(), status=status, report=json.dumps(body)
        )
        with self._sessions.begin() as session:
            session.add(row)
        return ReconciliationReport(row.id, chain, height, row.run_ms, status, body)

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

    # -- in-flight adjustments ----------------------------------------------------------------

    def _scanned_height(self) -> int | None:
        from sqlalchemy import func

        from custody.wallets.models import ChainBlock

        with self._sessions() as session:
            return session.scalar(
                select(func.max(ChainBlock.height)).where(ChainBlock.chain == self._adapter.chain)
            )

    def _in_flight(self, height: int) -> dict[tuple[int, str], int]:
        adjust: dict[tuple[int, str], int] = {}

        def add(wallet_id: int, asset: str, amount: int) -> None:
            adjust[(wallet_id, asset)] = adjust.get((wallet_id, asset), 0) + amount

        with self._sessions() as session:
            seen = session.scalars(
                select(ChainDeposit).where(
                    ChainDeposit.chain == self._adapter.chain,
                    ChainDeposit.status == "seen",
                    ChainDeposit.block_height <= height,
                )
            ).all()
            rows = session.scalars(
                select(ChainTransaction)
                .where(ChainTransaction.chain == self._adapter.chain, ChainTransaction.status != "queued")
                .order_by(ChainTransaction.created_ms.desc())
                .limit(MAX_OPEN_TRANSACTIONS)
            ).all()
            # A settled transaction reorged out has its settlement undone in the ledger until it is
            # mined again (custody/wallets/outgoing_reorg.py): count it as unsettled meanwhile.
            reopened = set(session.scalars(select(OutgoingReorg.transaction_id).where(
                OutgoingReorg.chain == self._adapter.chain, OutgoingReorg.status == "reversed")))
            cold = session.scalars(
                select(ColdBundle)
                .where(ColdBundle.chain == self._adapter.chain, ColdBundle.state.in_(COLD_TRACKED))
                .order_by(ColdBundle.created_ms.desc())
                .limit(MAX_OPEN_TRANSACTIONS)
            ).all()
        for deposit in seen:
            add(deposit.wallet_id, deposit.asset, deposit.amount_minor)
        outgoing = [
            _Outgoing(r.source_wallet_id, r.asset, r.amount_minor, r.destination,
                      r.status in SETTLED and r.id not in reopened, r)
            for r in rows
        ] + [
            _Outgoing(b.source_wallet_id, b.asset, b.amount_minor, b.destination, b.state in COLD_SETTLED, b)
            for b in cold
        ]
        ours = self._wallets.address_index(self._adapter.chain)
        native = self._adapter.native_asset
        for tx in outgoing:
            receipt = self._receipt(tx.record)
            on_chain = receipt is not None and receipt.block_height <= height
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

    def _receipt(self, row: ChainTransaction | ColdBundle) -> Receipt | None:
        if isinstance(row, ColdBundle):
            # A cold bundle has exactly one transaction: the one its cosigners signed.
            return None if row.txid is None else self._adapter.receipt(row.txid)
        if row.mined_txid is not None:
            return self._adapter.receipt(row.mined_txid)
        with self._sessions() as session:
            txids = session.scalars(
                select(ChainTransactionAttempt.txid).where(ChainTransactionAttempt.transaction_id == row.id)
            ).all()
        for txid in txids:
            receipt = self._adapter.receipt(txid)
            if receipt is not None:
                return receipt
        return None


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
