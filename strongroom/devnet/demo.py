"""The wallet demo on the devnet: deposits, hot withdrawals, sweeps and reconciliation on both chains,
written to the platform database (the ledger the auditor exports), through the chains' RPCs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from custody.ledger.entry import AccountKind, TransferKind
from custody.ledger.posting import TransferRequest
from custody.wallets.wallet import Temperature
from strongroom.devnet.control import DEVNET_CONFIRMATIONS, BitcoinControl, DevnetInfo, EthereumControl
from strongroom.runtimes.bitcoin import BitcoinRuntime
from strongroom.runtimes.ethereum import WalletRuntime

Say = Callable[[str], object]
SETTLE_ROUNDS = DEVNET_CONFIRMATIONS + 3
ETH_DESTINATION = "0x00000000000000000000000000000000000000AA"
BTC_DESTINATION = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"


def demo_cold_descriptor(data_dir: Path, make: Callable[[], str]) -> str:
    """Return the demo's Bitcoin cold descriptor, made once and kept in the data dir (0600)."""
    path = data_dir / "devnet" / "demo-cold-descriptor"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(make())
    return path.read_text().strip()


def _settle(tick: Callable[[], object], mine: Callable[[int], object], rounds: int = SETTLE_ROUNDS) -> None:
    for _ in range(rounds):
        tick()
        mine(1)
    tick()


def run_ethereum(runtime: WalletRuntime, info: DevnetInfo, run_id: str, say: Say) -> dict[str, object]:
    """Deposit ETH and USDC for alice, consolidate, withdraw from hot, sweep to cold, reconcile."""
    control, ledger = EthereumControl(info), runtime.wallets.ledger
    runtime.tick()  # the watcher starts at the tip: anchor it before paying anything
    address = runtime.wallets.deposit_address("ethereum-deposits", "alice").address
    say(f"ethereum (devnet {info.eth_kind} at {info.eth_url}): alice's deposit address {address}")
    control.fund(address, "ETH", 2 * 10**18)
    control.fund(address, "USDC", 5_000 * 10**6)
    _settle(runtime.tick, control.mine)
    user = ledger.ensure_account("alice", "USDC", AccountKind.USER_AVAILABLE)
    say(f"  after {DEVNET_CONFIRMATIONS} confirmations: alice USDC "
        f"{ledger.get_account(user.id).balance.credit_balance_posted}")
    for asset in ("ETH", "USDC"):
        runtime.treasury.consolidate(asset)
        _settle(runtime.tick, control.mine)
    wif = ledger.ensure_account("platform", "USDC", AccountKind.WITHDRAWALS_IN_FLIGHT)
    hold = f"demo-eth-hold-{run_id}"
    ledger.transfer(TransferRequest(id=hold, kind=TransferKind.PENDING, debit_account=user.id,
                                    credit_account=wif.id, amount=1_000 * 10**6, reference="demo withdrawal"))
    runtime.executor.execute(f"demo-eth-{run_id}", "USDC", 1_000 * 10**6, ETH_DESTINATION, hold)
    _settle(runtime.tick, control.mine)
    withdrawal = runtime.executor.get(f"wd:demo-eth-{run_id}")
    say(f"  hot withdrawal of 1000 USDC: {withdrawal.status.value} in {withdrawal.mined_txid}")
    runtime.treasury.set_limits("USDC", 500 * 10**6, 1_000 * 10**6, 2_000 * 10**6)
    runtime.treasury.rebalance("USDC")
    _settle(runtime.tick, control.mine)
    report = runtime.reconciler.run()
    say(f"  swept to cold: cold USDC {_wallet(runtime, Temperature.COLD, 'USDC')}; "
        f"reconciliation at block {report.height}: {report.status}")
    return {"withdrawal": withdrawal.status.value, "reconciliation": report.status}


def run_bitcoin(runtime: BitcoinRuntime, info: DevnetInfo, run_id: str, say: Say) -> dict[str, object]:
    """Deposit BTC for alice, consolidate, withdraw with change, sweep to the 2-of-3 cold, reconcile."""
    control, ledger = BitcoinControl(info), runtime.wallets.ledger
    runtime.tick()
    address = runtime.wallets.deposit_address("bitcoin-deposits", "alice").address
    say(f"bitcoin (devnet regtest at {info.btc_url}): alice's deposit address {address}")
    control.fund(address, 2_000_000)
    _settle(runtime.tick, control.mine)
    user = ledger.ensure_account("alice", "BTC", AccountKind.USER_AVAILABLE)
    say(f"  after {DEVNET_CONFIRMATIONS} confirmations: alice BTC "
        f"{ledger.get_account(user.id).balance.credit_balance_posted} sat")
    runtime.treasury.consolidate("BTC")
    _settle(runtime.tick, control.mine)
    wif = ledger.ensure_account("platform", "BTC", AccountKind.WITHDRAWALS_IN_FLIGHT)
    hold = f"demo-btc-hold-{run_id}"
    ledger.transfer(TransferRequest(id=hold, kind=TransferKind.PENDING, debit_account=user.id,
                                    credit_account=wif.id, amount=300_000, reference="demo withdrawal"))
    runtime.executor.execute(f"demo-btc-{run_id}", "BTC", 300_000, BTC_DESTINATION, hold)
    _settle(runtime.tick, control.mine)
    withdrawal = runtime.executor.get(f"wd:demo-btc-{run_id}")
    say(f"  hot withdrawal of 300000 sat: {withdrawal.status.value}, fee {withdrawal.fee_paid_minor} sat")
    runtime.treasury.set_limits("BTC", 100_000, 300_000, 500_000)
    runtime.treasury.rebalance("BTC")
    _settle(runtime.tick, control.mine)
    report = runtime.reconciler.run()
    say(f"  swept to the 2-of-3 cold multisig: cold {_wallet(runtime, Temperature.COLD, 'BTC')} sat; "
        f"reconciliation at block {report.height}: {report.status}")
    return {"withdrawal": withdrawal.status.value, "reconciliation": report.status}


def _wallet(runtime: WalletRuntime | BitcoinRuntime, temperature: Temperature, asset: str) -> int:
    wallet = runtime.wallets.one(runtime.adapter.chain, temperature)
    account = runtime.wallets.ledger.get_account(runtime.wallets.wallet_account(wallet, asset))
    return account.balance.debit_balance_posted
