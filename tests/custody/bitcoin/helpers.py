"""Shared Bitcoin test plumbing: a regtest chain, the Bitcoin runtime, funding, ledger checks."""

from __future__ import annotations

from dataclasses import dataclass

from custody.chains.bitcoin.adapter import BitcoinAdapter
from custody.chains.bitcoin.network import network
from custody.chains.bitcoin.regtest import RegtestChain
from custody.db import make_engine, make_session_factory
from custody.keystore import LocalKeystore
from custody.ledger.entry import AccountKind
from custody.ledger.service import Ledger
from custody.wallets.wallet import Temperature
from custody.wallets.withdrawal_executor import TxStatus
from strongroom.runtimes.bitcoin import BitcoinRuntime, build_bitcoin_runtime

from ...signer.helpers import World
from ..wallets.helpers import Harness

CONFIRMATIONS = {"BTC": 3}
WORLD = World()
REGTEST = network("regtest")
# A regtest P2WPKH address of nobody here.
DESTINATION = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"


@dataclass
class BtcHarness:
    """A regtest chain and the Bitcoin wallet services on one database."""

    chain: RegtestChain
    runtime: BitcoinRuntime
    ledger: Ledger
    url: str
    keystore: LocalKeystore
    clock: object

    # The ledger-only checks of the Ethereum harness work unchanged here.
    user_balance = Harness.user_balance
    hold = Harness.hold
    assert_ledger_balanced = Harness.assert_ledger_balanced
    assert_reconciled = Harness.assert_reconciled

    def deposit_address(self, owner: str) -> str:
        return self.runtime.wallets.deposit_address("bitcoin-deposits", owner).address

    def wallet(self, temperature: Temperature):  # type: ignore[no-untyped-def]
        return self.runtime.wallets.one("bitcoin", temperature)

    def wallet_balance(self, temperature: Temperature) -> int:
        account = self.ledger.get_account(
            self.runtime.wallets.wallet_account(self.wallet(temperature), "BTC")
        )
        return account.balance.debits_posted - account.balance.credits_posted

    def hot_address(self) -> str:
        return self.runtime.wallets.primary_address(self.wallet(Temperature.HOT).id).address

    def settle(self, rounds: int = 6) -> None:
        """Mine blocks and tick until nothing is left open (bounded)."""
        for _ in range(rounds):
            self.runtime.tick()
            self.chain.mine(1)
        self.runtime.tick()

    def deposit(self, owner: str, amount_sat: int) -> str:
        """Pay ``owner``'s deposit address from the faucet and credit it (mined + confirmed)."""
        txid = self.chain.faucet_send(self.deposit_address(owner), amount_sat)
        self.chain.mine(CONFIRMATIONS["BTC"])
        self.runtime.watcher.tick()
        return txid

    def fund_hot(self, amounts: list[int], owner: str = "funder") -> None:
        """Give the hot wallet one coin per amount: a user deposit consolidated into it each time."""
        for amount in amounts:
            self.deposit(owner, amount + 1_000)
            started = self.runtime.treasury.consolidate()
            assert len(started) == 1, started
            self.settle(4)
            assert self.runtime.executor.get(started[0].id).status is TxStatus.CONFIRMED

    def withdrawals_in_flight(self) -> int:
        account = self.ledger.find_account("platform", "BTC", AccountKind.WITHDRAWALS_IN_FLIGHT)
        return 0 if account is None else account.balance.credit_balance_posted


def make_btc_harness(url: str, keystore: LocalKeystore, clock: object) -> BtcHarness:
    chain = RegtestChain()
    chain.mine(101)
    engine = make_engine(url)
    ledger = Ledger(make_session_factory(engine), clock=clock)  # type: ignore[arg-type]
    runtime = build_bitcoin_runtime(
        make_session_factory(engine),
        ledger,
        keystore,
        BitcoinAdapter(chain, REGTEST),
        clock,  # type: ignore[arg-type]
        CONFIRMATIONS,
        start_height=chain.height + 1,
    )
    runtime.setup_wallets(WORLD.descriptor)
    runtime.watcher.tick()
    return BtcHarness(chain, runtime, ledger, url, keystore, clock)
