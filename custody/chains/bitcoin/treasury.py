"""Bitcoin consolidation: credited deposit coins spent together in one transaction to the hot wallet.

Sweeps (hot -> cold receive address above the ceiling) and refill proposals
are the chain-neutral :class:`custody.wallets.treasury.Treasury`; it is given a
:class:`BitcoinConsolidator` for what differs from the account model: the
credited coins are locked to one record and spent together, the fee coming
out of the moved amount.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody.chains.bitcoin import transaction as btx
from custody.chains.bitcoin.executor import BitcoinSpender
from custody.chains.bitcoin.utxo import UtxoSet
from custody.wallets.deposit_watcher import DepositStatus, deposit_id
from custody.wallets.models import ChainDeposit
from custody.wallets.treasury import PolicyCheck
from custody.wallets.wallet import Temperature, WalletRegistry
from custody.wallets.withdrawal_executor import (
    OutgoingTransfer,
    Purpose,
    TransactionView,
    WithdrawalExecutor,
)

MAX_CONSOLIDATION_INPUTS = 50


class BitcoinConsolidator:
    """Consolidation for Bitcoin: spend credited deposit coins in one transaction."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        wallets: WalletRegistry,
        spender: BitcoinSpender,
        executor: WithdrawalExecutor,
        utxos: UtxoSet,
        clock: Callable[[], int],
    ) -> None:
        self._sessions = sessions
        self._wallets = wallets
        self._spender = spender
        self._executor = executor
        self._utxos = utxos
        self._clock = clock
        self._chain = spender.adapter.chain

    def consolidate(self, asset: str, min_amount_minor: int, check: PolicyCheck) -> list[TransactionView]:
        """Move credited deposit coins to the hot wallet in one transaction (fee out of the amount).

        Returns nothing when there is nothing worth moving, or when a concurrent
        consolidation took a coin first (the next run picks up the rest).
        """
        try:
            return self._consolidate(asset, min_amount_minor, check)
        except _Taken:
            return []

    def _consolidate(self, asset: str, min_amount_minor: int, check: PolicyCheck) -> list[TransactionView]:
        spender = self._spender
        rate = spender.fee_rate()
        if rate is None:
            return []
        deposits = self._wallets.one(self._chain, Temperature.DEPOSIT)
        hot = self._wallets.one(self._chain, Temperature.HOT)
        hot_address = self._wallets.primary_address(hot.id)
        hot_script = spender.btc.script_of(hot_address.address)
        head = spender.btc.head_height()
        with self._sessions() as session:
            coins = [
                c
                for c in self._utxos.spendable(session, [deposits.id], head)
                if self._credited(session, c.txid, c.vout)
            ][:MAX_CONSOLIDATION_INPUTS]
        total = sum(c.amount_sat for c in coins)
        fee = btx.estimate_vbytes([hot_script] * len(coins), [hot_script]) * rate  # deposit coins are P2WPKH
        amount = total - fee
        if not coins or amount < max(min_amount_minor, btx.DUST_P2WPKH_SAT):
            return []
        check(f"consolidate-{asset}", asset, amount, hot_address.address)
        # Named after its first coin: a coin is consolidated at most once, so the id is unique.
        record_id = f"consolidate:{asset}:{coins[0].id}"
        with self._sessions.begin() as session:
            if not self._utxos.lock(session, record_id, [c.id for c in coins], self._clock()):
                raise _Taken
        source = next(a for a in self._wallets.addresses(deposits.id) if a.address == coins[0].address)
        return [
            self._executor.submit(
                OutgoingTransfer(
                    id=record_id,
                    purpose=Purpose.CONSOLIDATION,
                    asset=asset,
                    amount_minor=amount,
                    source=deposits,
                    source_address=source,
                    destination=hot_address.address,
                    debit_account_id=self._wallets.wallet_account(hot, asset),
                )
            )
        ]

    def _credited(self, session: Session, txid: str, vout: int) -> bool:
        status = session.scalar(
            select(ChainDeposit.status).where(ChainDeposit.id == deposit_id(self._chain, txid, vout))
        )
        return status == DepositStatus.CREDITED


class _Taken(Exception):
    """A deposit coin was locked by a concurrent consolidation; the transaction rolled back."""
