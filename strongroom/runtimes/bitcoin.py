"""Wire the Bitcoin wallet services: registry (BIP84), UTXO set, watcher, executor, treasury, cold wallet."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from custody.chains.bitcoin import keys
from custody.chains.bitcoin.adapter import BitcoinAdapter
from custody.chains.bitcoin.cold import ColdWallet
from custody.chains.bitcoin.executor import BitcoinSpender, FeePolicy
from custody.chains.bitcoin.holdings import BitcoinHoldings
from custody.chains.bitcoin.network import Network
from custody.chains.bitcoin.treasury import BitcoinConsolidator
from custody.chains.bitcoin.utxo import UtxoSet
from custody.keystore import Keystore
from custody.ledger.service import Ledger
from custody.reconciliation import Reconciler
from custody.wallets.deposit_watcher import DepositGate, DepositWatcher, TickReport
from custody.wallets.outgoing_reorg import OutgoingReorgCheck
from custody.wallets.treasury import Treasury
from custody.wallets.wallet import Temperature, WalletRegistry
from custody.wallets.withdrawal_executor import ExecutorConfig, TransactionView, WithdrawalExecutor

CHAIN = "bitcoin"


class Bip84Scheme:
    """BIP84 native SegWit: ``m/84'/coin'/0'`` accounts and P2WPKH addresses (bitcoinlib)."""

    def __init__(self, network: Network) -> None:
        self._network = network.bitcoinlib_name

    def account_path(self) -> str:
        return keys.account_path(self._network)

    def account_xpub(self, seed: bytes) -> str:
        return keys.account_xpub(seed, self._network)

    def address(self, xpub: str, change: int, index: int) -> str:
        return keys.address_from_xpub(xpub, change, index, self._network)


@dataclass(frozen=True, slots=True)
class BitcoinRuntime:
    """The Bitcoin wallet services: the Ethereum ``WalletRuntime`` surface plus the cold wallet."""

    adapter: BitcoinAdapter
    wallets: WalletRegistry
    utxos: UtxoSet
    watcher: DepositWatcher
    spender: BitcoinSpender
    executor: WithdrawalExecutor
    treasury: Treasury
    reconciler: Reconciler
    cold: ColdWallet
    sessions: sessionmaker[Session]
    outgoing: OutgoingReorgCheck

    def tick(self) -> tuple[TickReport, list[TransactionView]]:
        """Run one round: scan deposits and coins, then advance outgoing transactions."""
        report = self.watcher.tick()
        # Settled outgoing transactions reorged out (custody/wallets/outgoing_reorg.py), after the
        # watcher has followed the reorg and before the executor spends again.
        report.alerts.extend(self.outgoing.tick().alerts)
        return report, self.executor.tick()

    def setup_wallets(self, cold_descriptor: str) -> None:
        """Create the hot and deposit wallets and register the cold descriptor (idempotent)."""
        self.wallets.create_seeded(CHAIN, f"{CHAIN}-hot", Temperature.HOT)
        self.wallets.create_seeded(CHAIN, f"{CHAIN}-deposits", Temperature.DEPOSIT)
        self.cold.register(f"{CHAIN}-cold", cold_descriptor)
        # The deposit addresses exist from now on: the watcher scans from here (or the configured height).
        self.watcher.pin_start()


def build_bitcoin_runtime(
    sessions: sessionmaker[Session],
    ledger: Ledger,
    keystore: Keystore,
    adapter: BitcoinAdapter,
    clock: Callable[[], int],
    confirmations: Mapping[str, int],
    start_height: int | None = None,
    fees: FeePolicy | None = None,
    gate: DepositGate | None = None,
) -> BitcoinRuntime:
    """Build the Bitcoin wallet services for ``adapter``."""
    wallets = WalletRegistry(sessions, ledger, keystore, clock)
    wallets.add_scheme(CHAIN, Bip84Scheme(adapter.network))
    utxos = UtxoSet(CHAIN)
    watcher = DepositWatcher(
        sessions, wallets, adapter, clock, confirmations, start_height=start_height, observer=utxos, gate=gate
    )
    spender = BitcoinSpender(sessions, wallets, adapter, utxos, clock, fees)
    executor = WithdrawalExecutor(sessions, wallets, spender, clock, ExecutorConfig(confirmations))
    consolidator = BitcoinConsolidator(sessions, wallets, spender, executor, utxos, clock)
    treasury = Treasury(sessions, wallets, adapter, executor, clock, consolidator)
    reconciler = Reconciler(sessions, wallets, adapter, clock, BitcoinHoldings(sessions, adapter))
    cold = ColdWallet(sessions, wallets, adapter, utxos, clock)
    outgoing = OutgoingReorgCheck(sessions, wallets, adapter, clock, dict(confirmations))
    return BitcoinRuntime(
        adapter, wallets, utxos, watcher, spender, executor, treasury, reconciler, cold, sessions, outgoing
    )
