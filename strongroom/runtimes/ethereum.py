"""Wire the wallet services for one chain: registry, watcher, executor, treasury, reconciler."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from custody.chains.ethereum.adapter import EthereumAdapter
from custody.chains.ethereum.executor import EthereumSpender
from custody.chains.ethereum.keys import EthereumScheme
from custody.chains.ethereum.treasury import EthereumConsolidator
from custody.keystore import Keystore
from custody.ledger.service import Ledger
from custody.reconciliation import Reconciler
from custody.wallets.deposit_watcher import DepositGate, DepositWatcher, TickReport
from custody.wallets.outgoing_reorg import OutgoingReorgCheck
from custody.wallets.treasury import Treasury
from custody.wallets.wallet import Temperature, WalletRegistry
from custody.wallets.withdrawal_executor import ExecutorConfig, TransactionView, WithdrawalExecutor


@dataclass(frozen=True, slots=True)
class WalletRuntime:
    """The wallet services of one chain, sharing a session factory, ledger and clock."""

    adapter: EthereumAdapter
    wallets: WalletRegistry
    watcher: DepositWatcher
    executor: WithdrawalExecutor
    treasury: Treasury
    reconciler: Reconciler
    outgoing: OutgoingReorgCheck

    def tick(self) -> tuple[TickReport, list[TransactionView]]:
        """Run one round: scan deposits, then advance outgoing transactions."""
        report = self.watcher.tick()
        # Settled outgoing transactions reorged out (custody/wallets/outgoing_reorg.py), after the
        # watcher has followed the reorg and before the executor spends again.
        report.alerts.extend(self.outgoing.tick().alerts)
        return report, self.executor.tick()

    def setup_wallets(self, cold_address: str) -> None:
        """Create the hot and deposit wallets and register the cold address (idempotent)."""
        chain = self.adapter.chain
        self.wallets.create_seeded(chain, f"{chain}-hot", Temperature.HOT)
        self.wallets.create_seeded(chain, f"{chain}-deposits", Temperature.DEPOSIT)
        self.wallets.register_cold(chain, f"{chain}-cold", self.adapter.normalize_address(cold_address))
        # The deposit addresses exist from now on: the watcher scans from here (or the configured height).
        self.watcher.pin_start()


def build_runtime(
    sessions: sessionmaker[Session],
    ledger: Ledger,
    keystore: Keystore,
    adapter: EthereumAdapter,
    clock: Callable[[], int],
    confirmations: Mapping[str, int],
    start_height: int | None = None,
    fee_cap_wei: int | None = None,
    gate: DepositGate | None = None,
) -> WalletRuntime:
    """Build the wallet services for ``adapter``'s chain (``gate``: compliance's say over deposits)."""
    wallets = WalletRegistry(sessions, ledger, keystore, clock, {adapter.chain: EthereumScheme()})
    watcher = DepositWatcher(sessions, wallets, adapter, clock, confirmations, start_height=start_height,
                             gate=gate)
    config = (
        ExecutorConfig(confirmations) if fee_cap_wei is None else ExecutorConfig(confirmations, fee_cap_wei)
    )
    spender = EthereumSpender(sessions, wallets, adapter, clock, config.fee_cap_wei)
    executor = WithdrawalExecutor(sessions, wallets, spender, clock, config)
    consolidator = EthereumConsolidator(sessions, wallets, adapter, executor, clock)
    treasury = Treasury(sessions, wallets, adapter, executor, clock, consolidator)
    reconciler = Reconciler(sessions, wallets, adapter, clock)
    outgoing = OutgoingReorgCheck(sessions, wallets, adapter, clock, dict(confirmations))
    return WalletRuntime(adapter, wallets, watcher, executor, treasury, reconciler, outgoing)
