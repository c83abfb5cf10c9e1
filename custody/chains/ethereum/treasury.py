"""Ethereum consolidation: each deposit address sends its credited balance to the hot wallet.

The treasury's :class:`custody.wallets.treasury.Consolidator` for the account
model. An address holding a token but too little ETH for gas first gets a gas
top-up from the hot wallet (its own record); the consolidation record waits
in ``queued`` until the top-up has landed. ETH consolidations leave twice the
gas of a transfer behind. An address with an open record (either direction) is
skipped until that record is final, so top-ups and consolidations never race.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from custody.chains.ethereum.adapter import EthereumAdapter
from custody.chains.ethereum.token import NATIVE_TRANSFER_GAS, TOKEN_TRANSFER_GAS
from custody.wallets.models import ChainBlock, ChainDeposit, ChainTransaction
from custody.wallets.treasury import PolicyCheck
from custody.wallets.wallet import Temperature, WalletRegistry
from custody.wallets.withdrawal_executor import (
    OPEN_STATUSES,
    OutgoingTransfer,
    Purpose,
    TransactionView,
    WithdrawalExecutor,
)

MAX_CONSOLIDATIONS_PER_RUN = 20


class EthereumConsolidator:
    """Consolidate deposit addresses one by one, topping up gas for token transfers."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        wallets: WalletRegistry,
        adapter: EthereumAdapter,
        executor: WithdrawalExecutor,
        clock: Callable[[], int],
    ) -> None:
        self._sessions = sessions
        self._wallets = wallets
        self._adapter = adapter
        self._executor = executor
        self._clock = clock
        self._chain = adapter.chain

    def consolidate(self, asset: str, min_amount_minor: int, check: PolicyCheck) -> list[TransactionView]:
        """Move credited deposits from deposit addresses to the hot wallet, at most a batch per run."""
        deposit_wallet = self._wallets.one(self._chain, Temperature.DEPOSIT)
        hot = self._wallets.one(self._chain, Temperature.HOT)
        hot_address = self._wallets.primary_address(hot.id)
        native = self._adapter.native_asset
        fees = self._adapter.fee_quote()
        started: list[TransactionView] = []
        for address in self._wallets.addresses(deposit_wallet.id):
            if len(started) >= MAX_CONSOLIDATIONS_PER_RUN:
                break
            if self._open_from(address.address):
                continue
            credited = self._credited_balance(asset, address.address)
            if asset == native:
                credited -= NATIVE_TRANSFER_GAS * fees.max_fee_per_gas * 2
            if credited < max(min_amount_minor, 1):
                continue
            check(f"consolidate-{asset}", asset, credited, hot_address.address)
            stamp = self._clock()
            if asset != native:
                gas_wei = TOKEN_TRANSFER_GAS * fees.max_fee_per_gas * 2
                if self._adapter.balance(address.address, native) < gas_wei:
                    started.append(
                        self._executor.submit(
                            OutgoingTransfer(
                                id=f"topup:{address.address}:{stamp}",
                                purpose=Purpose.TOPUP,
                                asset=native,
                                amount_minor=gas_wei,
                                source=hot,
                                source_address=hot_address,
                                destination=address.address,
                                debit_account_id=self._wallets.wallet_account(deposit_wallet, native),
                            )
                        )
                    )
            started.append(
                self._executor.submit(
                    OutgoingTransfer(
                        id=f"consolidate:{asset}:{address.address}:{stamp}",
                        purpose=Purpose.CONSOLIDATION,
                        asset=asset,
                        amount_minor=credited,
                        source=deposit_wallet,
                        source_address=address,
                        destination=hot_address.address,
                        debit_account_id=self._wallets.wallet_account(hot, asset),
                    )
                )
            )
        return started

    def _credited_balance(self, asset: str, address: str) -> int:
        """Return the on-chain balance at ``address`` that is already credited (not in flight).

        Only blocks the deposit watcher has scanned count: a deposit in a newer block is not even
        ``seen`` yet, and sweeping it would move coins a reorg can still take back (simulator
        finding, tests/simulation/test_faults.py)."""
        on_chain = self._adapter.balance(address, asset)
        with self._sessions() as session:
            scanned = session.scalar(select(func.max(ChainBlock.height))
                                     .where(ChainBlock.chain == self._chain))
        if scanned is None:
            return 0
        on_chain = min(on_chain, self._adapter.balance(address, asset,
                                                       at_height=min(scanned, self._adapter.head_height())))
        with self._sessions() as session:
            unconfirmed = session.scalars(
                select(ChainDeposit.amount_minor).where(
                    ChainDeposit.address == address,
                    ChainDeposit.asset == asset,
                    ChainDeposit.status == "seen",
                )
            ).all()
        return on_chain - sum(unconfirmed)

    def _open_from(self, address: str) -> bool:
        with self._sessions() as session:
            return (
                session.scalar(
                    select(ChainTransaction.id)
                    .where(
                        (ChainTransaction.source_address == address)
                        | (ChainTransaction.destination == address),
                        ChainTransaction.status.in_([s.value for s in OPEN_STATUSES]),
                    )
                    .limit(1)
                )
                is not None
            )


