"""Shared wallet test plumbing: a runtime on a dev chain, deposits, holds, and ledger checks."""

from __future__ import annotations

from dataclasses import dataclass

from custody.chains.ethereum.devchain import DevChain
from custody.db import make_engine, make_session_factory
from custody.keystore import LocalKeystore
from custody.ledger.entry import AccountKind, TransferKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger
from custody.wallets.wallet import Temperature
from strongroom.runtimes.ethereum import WalletRuntime, build_runtime

CONFIRMATIONS = {"ETH": 3, "USDC": 3}
COLD_ADDRESS = "0x000000000000000000000000000000000000c01d"
ETH = 10**18
USDC = 10**6


@dataclass
class Harness:
    """A dev chain and wallet services on one database."""

    chain: DevChain
    runtime: WalletRuntime
    ledger: Ledger
    url: str
    keystore: LocalKeystore
    clock: object

    def restart(self) -> Harness:
        """Return fresh services on the same database and chain (a process restart)."""
        engine = make_engine(self.url)
        ledger = Ledger(make_session_factory(engine), clock=self.clock)  # type: ignore[arg-type]
        runtime = build_runtime(make_session_factory(engine), ledger, self.keystore, self.chain.adapter(),
                                self.clock, CONFIRMATIONS, start_height=0)  # type: ignore[arg-type]
        return Harness(self.chain, runtime, ledger, self.url, self.keystore, self.clock)

    def deposit_address(self, owner: str) -> str:
        return self.runtime.wallets.deposit_address("ethereum-deposits", owner).address

    def user_balance(self, owner: str, asset: str) -> int:
        account = self.ledger.find_account(owner, asset, AccountKind.USER_AVAILABLE)
        return 0 if account is None else account.balance.credit_balance_posted

    def wallet_balance(self, temperature: Temperature, asset: str) -> int:
        wallet = self.runtime.wallets.one("ethereum", temperature)
        account = self.ledger.get_account(self.runtime.wallets.wallet_account(wallet, asset))
        return account.balance.debit_balance_posted

    def hot_address(self) -> str:
        hot = self.runtime.wallets.one("ethereum", Temperature.HOT)
        return self.runtime.wallets.primary_address(hot.id).address

    def settle(self, rounds: int = 8) -> None:
        """Mine blocks and tick until nothing is left open (bounded)."""
        for _ in range(rounds):
            self.runtime.tick()
            self.chain.mine(1)
        self.runtime.tick()

    def hold(self, owner: str, asset: str, amount: int, hold_id: str) -> str:
        """Place a withdrawal hold like the withdrawal service does."""
        user = self.ledger.ensure_account(owner, asset, AccountKind.USER_AVAILABLE).id
        wif = self.ledger.ensure_account("platform", asset, AccountKind.WITHDRAWALS_IN_FLIGHT).id
        self.ledger.transfer(TransferRequest(id=hold_id, kind=TransferKind.PENDING, debit_account=user,
                                             credit_account=wif, amount=amount, reference="test hold"))
        return hold_id

    def assert_reconciled(self) -> None:
        report = self.runtime.reconciler.run()
        assert report.status == "ok", [line for line in report.lines if line["status"] != "ok"]

    def assert_ledger_balanced(self) -> None:
        """Every asset's debits equal its credits across all accounts (posted and pending)."""
        totals: dict[str, list[int]] = {}
        for account in self.ledger.list_accounts():
            b = account.balance
            t = totals.setdefault(account.asset, [0, 0, 0, 0])
            t[0] += b.debits_posted
            t[1] += b.credits_posted
            t[2] += b.debits_pending
            t[3] += b.credits_pending
        for asset, (dp, cp, dpe, cpe) in totals.items():
            assert dp == cp and dpe == cpe, asset


def make_harness(chain: DevChain, url: str, keystore: LocalKeystore, clock: object) -> Harness:
    """Set up wallets on ``chain`` with a fresh database at ``url``."""
    engine = make_engine(url)
    ledger = Ledger(make_session_factory(engine), clock=clock)  # type: ignore[arg-type]
    runtime = build_runtime(make_session_factory(engine), ledger, keystore, chain.adapter(), clock,  # type: ignore[arg-type]
                            CONFIRMATIONS, start_height=chain.web3.eth.block_number + 1)
    runtime.setup_wallets(COLD_ADDRESS)
    runtime.watcher.tick()
    return Harness(chain, runtime, ledger, url, keystore, clock)
