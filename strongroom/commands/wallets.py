"""Wallet commands (``strongroom wallet ...``), the wallet runtime wiring and the wallet demo.

Configuration (environment):
- ``STRONGROOM_ETH_RPC_URL``: JSON-RPC URL of an Ethereum node; unset means no chain for the server.
- ``STRONGROOM_ETH_USDC_ADDRESS``: the USDC token contract on that chain.
- ``STRONGROOM_ETH_CONFIRMATIONS``: confirmations before a deposit or withdrawal settles (default 12).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import click
from web3 import Web3

from custody.chains.ethereum.adapter import EthereumAdapter
from custody.chains.ethereum.devchain import EmbeddedChain
from custody.db import make_engine, make_session_factory
from custody.ledger.entry import AccountKind, TransferKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger, wall_clock_ms
from custody.wallets.codes import WalletError
from custody.wallets.runtime import WalletRuntime, build_runtime
from custody.wallets.wallet import Temperature
from strongroom import migrate as migrations
from strongroom.keystores import open_keystore
from strongroom.settings import Settings

DEFAULT_CONFIRMATIONS = 12
DEMO_CONFIRMATIONS = 3
DEMO_COLD_ADDRESS = "0x000000000000000000000000000000000000C01D"
DEMO_DESTINATION = "0x00000000000000000000000000000000000000AA"


def runtime_from_env(settings: Settings) -> WalletRuntime | None:
    """Build the Ethereum wallet runtime for a configured node, or None when none is configured."""
    url = os.environ.get("STRONGROOM_ETH_RPC_URL")
    if not url:
        return None
    tokens = {}
    if os.environ.get("STRONGROOM_ETH_USDC_ADDRESS"):
        tokens["USDC"] = os.environ["STRONGROOM_ETH_USDC_ADDRESS"]
    n = int(os.environ.get("STRONGROOM_ETH_CONFIRMATIONS", DEFAULT_CONFIRMATIONS))
    adapter = EthereumAdapter(Web3(Web3.HTTPProvider(url)), tokens)
    sessions = make_session_factory(make_engine(settings.database_url))
    return build_runtime(sessions, Ledger(sessions), open_keystore(settings), adapter, wall_clock_ms,
                         {asset: n for asset in adapter.assets()})


def _runtime_or_exit() -> WalletRuntime:
    runtime = runtime_from_env(Settings.from_env())
    if runtime is None:
        raise click.UsageError("no chain configured: set STRONGROOM_ETH_RPC_URL")
    return runtime


def register(main: click.Group) -> None:
    """Add the ``wallet`` command group to ``main``."""

    @main.group("wallet")
    def wallet() -> None:
        """Wallets, deposits, withdrawals on chain, sweeps and reconciliation."""

    @wallet.command("tick")
    def tick() -> None:
        """Run one round of the deposit watcher and the transaction executor."""
        report, views = _runtime_or_exit().tick()
        click.echo(json.dumps({"scanned_to": report.scanned_to, "seen": report.seen,
                               "credited": report.credited, "voided": report.voided,
                               "transactions": [v.to_json() for v in views]}, indent=2))

    @wallet.command("reconcile")
    @click.option("--latest", is_flag=True, help="Show the newest stored report instead of running one.")
    def reconcile(latest: bool) -> None:
        """Compare on-chain balances with the ledger and print the report (exit 2 on a discrepancy)."""
        runtime = _runtime_or_exit()
        try:
            report = runtime.reconciler.latest() if latest else runtime.reconciler.run()
        except WalletError as exc:
            raise click.ClickException(exc.message) from None
        click.echo(json.dumps(report.to_json(), indent=2))
        if report.status != "ok":
            raise SystemExit(2)


def run_demo(settings: Settings, echo: object = click.echo) -> dict[str, object]:
    """Show the wallet flow end to end on the in-process chain; return a summary.

    The embedded chain lives only in this process, so the demo uses its own
    throwaway SQLite database and keystore next to the data directory rather
    than the platform database (whose wallets would not match a fresh chain).
    """
    say = echo if callable(echo) else click.echo
    workdir = Path(tempfile.mkdtemp(prefix="wallet-demo-", dir=settings.ensure_data_dir()))
    url = f"sqlite:///{workdir / 'wallets.db'}"
    migrations.upgrade(url)
    from custody.keystore import LocalKeystore

    keystore = LocalKeystore(workdir / "keystore.srks", os.urandom(16).hex(), scrypt_log2_n=14)
    sessions = make_session_factory(make_engine(url))
    ledger = Ledger(sessions)
    chain = EmbeddedChain()
    runtime = build_runtime(sessions, ledger, keystore, chain.adapter(), wall_clock_ms,
                            {"ETH": DEMO_CONFIRMATIONS, "USDC": DEMO_CONFIRMATIONS},
                            start_height=chain.web3.eth.block_number + 1)
    runtime.setup_wallets(DEMO_COLD_ADDRESS)

    def settle(rounds: int = 6) -> None:
        for _ in range(rounds):
            runtime.tick()
            chain.mine(1)
        runtime.tick()

    address = runtime.wallets.deposit_address("ethereum-deposits", "alice")
    say(f"wallet demo: alice's deposit address {address.address} ({address.path})")
    chain.send_eth(address.address, 10 * 10**18)
    chain.mint(address.address, 5_000 * 10**6)
    runtime.tick()
    user = ledger.ensure_account("alice", "USDC", AccountKind.USER_AVAILABLE)
    before = ledger.get_account(user.id).balance.credit_balance_posted
    say(f"  deposits seen, alice USDC before confirmations: {before}")
    settle()
    after = ledger.get_account(user.id).balance.credit_balance_posted
    say(f"  after {DEMO_CONFIRMATIONS} confirmations: alice USDC {after}")
    for asset in ("ETH", "USDC"):
        runtime.treasury.consolidate(asset)
        settle()
    wif = ledger.ensure_account("platform", "USDC", AccountKind.WITHDRAWALS_IN_FLIGHT)
    ledger.transfer(TransferRequest(id="demo-wallet-hold-1", kind=TransferKind.PENDING, debit_account=user.id,
                                    credit_account=wif.id, amount=1_000 * 10**6, reference="demo withdrawal"))
    runtime.executor.execute("demo-1", "USDC", 1_000 * 10**6, DEMO_DESTINATION, "demo-wallet-hold-1")
    settle()
    withdrawal = runtime.executor.get("wd:demo-1")
    say(f"  withdrawal of 1000 USDC: {withdrawal.status.value} in {withdrawal.mined_txid}")
    runtime.treasury.set_limits("USDC", 500 * 10**6, 1_000 * 10**6, 2_000 * 10**6)
    runtime.treasury.rebalance("USDC")
    settle()
    hot = runtime.wallets.one("ethereum", Temperature.HOT)
    cold = runtime.wallets.one("ethereum", Temperature.COLD)
    hot_usdc = ledger.get_account(runtime.wallets.wallet_account(hot, "USDC")).balance.debit_balance_posted
    cold_usdc = ledger.get_account(runtime.wallets.wallet_account(cold, "USDC")).balance.debit_balance_posted
    say(f"  swept to cold: hot USDC {hot_usdc}, cold USDC {cold_usdc}")
    report = runtime.reconciler.run()
    say(f"  reconciliation at block {report.height}: {report.status}")
    for line in report.lines:
        say(f"    {line['wallet']:<20} {line['asset']:<5} on chain {line['on_chain']:>24} "
            f"expected {line['expected']:>24} {line['status']}")
    return {"withdrawal": withdrawal.status.value, "reconciliation": report.status}
