"""Wallet commands (``strongroom wallet ...``) and the wallet demo.

The chain runtimes, and the environment variables that configure them, are documented in
``strongroom.runtimes.from_env``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from custody.access.secret_box import SecretBox
from custody.access.users import Users
from custody.chains.adapter import ChainError
from custody.chains.bitcoin.adapter import BitcoinAdapter
from custody.chains.ethereum.devchain import EmbeddedChain
from custody.db import make_engine, make_session_factory
from custody.ledger.entry import AccountKind, TransferKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger, wall_clock_ms
from custody.wallets.codes import WalletCode, WalletError
from custody.wallets.wallet import Temperature
from strongroom import migrate as migrations
from strongroom.demo import ensure_demo_people
from strongroom.devnet.control import DevnetInfo
from strongroom.keystores import open_keystore
from strongroom.runtimes.bitcoin import build_bitcoin_runtime
from strongroom.runtimes.ethereum import build_runtime
from strongroom.runtimes.from_env import (  # noqa: F401 (re-exported for older callers)
    DEFAULT_BTC_CONFIRMATIONS,
    DEFAULT_BTC_NETWORK,
    DEFAULT_CONFIRMATIONS,
    ETH_COLD_ADDRESS_ENV,
    ETH_NETWORK_ENV,
    ChainRuntime,
    bitcoin_runtime_from_env,
    bundle_chains,
    chain_runtimes_from_env,
    runtime_from_env,
)
from strongroom.settings import Settings

CHAINS = ("ethereum", "bitcoin")
DEMO_CONFIRMATIONS = 3
DEMO_COLD_ADDRESS = "0x000000000000000000000000000000000000C01D"
DEMO_DESTINATION = "0x00000000000000000000000000000000000000AA"
# A regtest P2WPKH address of nobody (BIP173's test vector).
DEMO_BTC_DESTINATION = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"


def _runtime_with_terms(chain: str) -> ChainRuntime:
    """Return ``chain``'s runtime whose refills show (and whose approvals bind) their transfer terms."""
    from custody.bundles.terms import TransferTermsBook

    runtimes = chain_runtimes_from_env(Settings.from_env())
    if chain not in runtimes:
        variable = "STRONGROOM_ETH_RPC_URL" if chain == "ethereum" else "STRONGROOM_BTC_RPC_URL"
        raise click.UsageError(f"no {chain} node configured: set {variable}")
    book = TransferTermsBook(bundle_chains(runtimes))
    for runtime in runtimes.values():
        runtime.treasury.terms = book.named
    return runtimes[chain]


def _runtime_or_exit(chain: str = "ethereum") -> ChainRuntime:
    settings = Settings.from_env()
    runtime = runtime_from_env(settings) if chain == "ethereum" else bitcoin_runtime_from_env(settings)
    if runtime is None:
        variable = "STRONGROOM_ETH_RPC_URL" if chain == "ethereum" else "STRONGROOM_BTC_RPC_URL"
        raise click.UsageError(f"no {chain} node configured: set {variable}")
    return runtime


def register(main: click.Group) -> None:
    """Add the ``wallet`` command group to ``main``."""

    @main.group("wallet")
    def wallet() -> None:
        """Wallets, deposits, withdrawals on chain, sweeps and reconciliation."""

    chain_option = click.option("--chain", type=click.Choice(CHAINS), default="ethereum", show_default=True,
                                help="Which chain's wallets.")

    register_treasury(wallet)

    @wallet.command("tick")
    @chain_option
    def tick(chain: str) -> None:
        """Run one round of the deposit watcher and the transaction executor."""
        report, views = _runtime_or_exit(chain).tick()
        click.echo(json.dumps({"scanned_to": report.scanned_to, "seen": report.seen,
                               "credited": report.credited, "voided": report.voided,
                               "transactions": [v.to_json() for v in views]}, indent=2))

    @wallet.command("reconcile")
    @chain_option
    @click.option("--latest", is_flag=True, help="Show the newest stored report instead of running one.")
    def reconcile(chain: str, latest: bool) -> None:
        """Compare on-chain balances with the ledger and print the report (exit 2 on a discrepancy)."""
        runtime = _runtime_or_exit(chain)
        try:
            report = runtime.reconciler.latest() if latest else runtime.reconciler.run()
        except (WalletError, ChainError) as exc:
            raise click.ClickException(exc.message) from None
        click.echo(json.dumps(report.to_json(), indent=2))
        if report.status != "ok":
            raise SystemExit(2)


def _devnet_for(settings: Settings) -> DevnetInfo | None:
    """Return the running devnet when this process is configured for it (``make run``), else None."""
    from strongroom.devnet.control import DevnetError
    from strongroom.devnet.runner import devnet_dir

    try:
        info = DevnetInfo.read(devnet_dir(settings.data_dir))
    except DevnetError:
        return None
    configured = (os.environ.get("STRONGROOM_ETH_RPC_URL"), os.environ.get("STRONGROOM_BTC_RPC_URL"))
    return info if configured == (info.eth_url, info.btc_url) else None


def run_devnet_demo(settings: Settings, info: DevnetInfo, say: Callable[[str], object]) -> dict[str, object]:
    """Run the wallet demo on the devnet, in the platform database: the ledger the auditor exports."""
    from strongroom.devnet import demo

    ethereum, bitcoin = runtime_from_env(settings), bitcoin_runtime_from_env(settings)
    assert ethereum is not None and bitcoin is not None, "the devnet environment configures both chains"
    # The demo's depositors are verified users (the KYC tier caps hold unknown owners' deposits).
    sessions = make_session_factory(make_engine(settings.database_url))
    ensure_demo_people(Users(sessions, SecretBox(open_keystore(settings)), wall_clock_ms))
    ethereum.setup_wallets(os.environ.get(ETH_COLD_ADDRESS_ENV) or DEMO_COLD_ADDRESS)
    bitcoin.setup_wallets(os.environ.get("STRONGROOM_BTC_COLD_DESCRIPTOR")
                          or demo.demo_cold_descriptor(settings.data_dir, _demo_cold_descriptor))
    run_id = str(wall_clock_ms())
    return {"ethereum": demo.run_ethereum(ethereum, info, run_id, say),
            "bitcoin": demo.run_bitcoin(bitcoin, info, run_id, say)}


def run_demo(settings: Settings, echo: object = click.echo) -> dict[str, object]:
    """Show the wallet flow end to end; return a summary.

    With a devnet configured (``make run``: ``strongroom devnet up`` and its
    environment) the flow runs on the devnet's chains in the platform database,
    so its deposits, withdrawals and sweeps are in the ledger the auditor
    exports. Without one, the in-process chains live only in this process, so
    the demo uses its own throwaway SQLite database and keystore next to the
    data directory (whose wallets would not match a fresh chain).
    """
    say = echo if callable(echo) else click.echo
    devnet = _devnet_for(settings)
    if devnet is not None:
        return run_devnet_demo(settings, devnet, say)
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
    bitcoin = run_bitcoin_demo(settings, say)
    return {"withdrawal": withdrawal.status.value, "reconciliation": report.status, "bitcoin": bitcoin}


def _demo_cold_descriptor() -> str:
    """Return a 2-of-3 regtest descriptor of three throwaway cosigner keys (the demo never spends cold)."""
    from embit import bip32  # type: ignore[import-untyped, unused-ignore]
    from embit.networks import NETWORKS  # type: ignore[import-untyped, unused-ignore]

    path, net = "m/48h/1h/0h/2h", NETWORKS["regtest"]
    keys = []
    for _ in range(3):
        root = bip32.HDKey.from_seed(os.urandom(32), version=net["xprv"])
        xpub = root.derive(path).to_public().to_string(version=net["xpub"])
        keys.append(f"[{root.my_fingerprint.hex()}{path[1:]}]{xpub}/<0;1>/*")
    return f"wsh(sortedmulti(2,{','.join(keys)}))"


def _posted(ledger: Ledger, account_id: int) -> int:
    return ledger.get_account(account_id).balance.credit_balance_posted


def run_bitcoin_demo(settings: Settings, echo: object = click.echo) -> dict[str, object]:
    """Show the Bitcoin flow on the embedded regtest chain: deposit, hot withdrawal, sweep, reconciliation.

    Like the Ethereum demo it uses its own throwaway database and keystore
    (the regtest chain lives only in this process), so running it twice
    changes nothing in the platform database.
    """
    from custody.chains.bitcoin.network import network
    from custody.chains.bitcoin.regtest import RegtestChain
    from custody.keystore import LocalKeystore

    say = echo if callable(echo) else click.echo
    workdir = Path(tempfile.mkdtemp(prefix="bitcoin-demo-", dir=settings.ensure_data_dir()))
    url = f"sqlite:///{workdir / 'wallets.db'}"
    migrations.upgrade(url)
    keystore = LocalKeystore(workdir / "keystore.srks", os.urandom(16).hex(), scrypt_log2_n=14)
    sessions = make_session_factory(make_engine(url))
    ledger = Ledger(sessions)
    chain = RegtestChain()
    chain.mine(101)
    adapter = BitcoinAdapter(chain, network("regtest"))
    runtime = build_bitcoin_runtime(sessions, ledger, keystore, adapter, wall_clock_ms,
                                    {"BTC": DEMO_CONFIRMATIONS}, start_height=chain.height + 1)
    runtime.setup_wallets(_demo_cold_descriptor())

    def settle(rounds: int = DEMO_CONFIRMATIONS + 2) -> None:
        for _ in range(rounds):
            runtime.tick()
            chain.mine(1)
        runtime.tick()

    address = runtime.wallets.deposit_address("bitcoin-deposits", "alice").address
    say(f"bitcoin demo: alice's deposit address {address}")
    chain.faucet_send(address, 2_000_000)
    chain.mine(1)
    runtime.tick()
    user = ledger.ensure_account("alice", "BTC", AccountKind.USER_AVAILABLE)
    say(f"  deposit seen, alice BTC before confirmations: {_posted(ledger, user.id)}")
    settle()
    say(f"  after {DEMO_CONFIRMATIONS} confirmations: alice BTC {_posted(ledger, user.id)} sat")
    runtime.treasury.consolidate("BTC")
    settle()
    wif = ledger.ensure_account("platform", "BTC", AccountKind.WITHDRAWALS_IN_FLIGHT)
    ledger.transfer(TransferRequest(id="demo-btc-hold-1", kind=TransferKind.PENDING, debit_account=user.id,
                                    credit_account=wif.id, amount=300_000, reference="demo withdrawal"))
    runtime.executor.execute("demo-btc-1", "BTC", 300_000, DEMO_BTC_DESTINATION, "demo-btc-hold-1")
    settle()
    withdrawal = runtime.executor.get("wd:demo-btc-1")
    say(f"  hot withdrawal of 300000 sat (change back to the hot wallet): {withdrawal.status.value}, "
        f"fee {withdrawal.fee_paid_minor} sat")
    runtime.treasury.set_limits("BTC", 100_000, 300_000, 500_000)
    sweep = runtime.treasury.rebalance("BTC")
    settle()
    hot = runtime.wallets.one("bitcoin", Temperature.HOT)
    cold = runtime.wallets.one("bitcoin", Temperature.COLD)
    hot_sat = ledger.get_account(runtime.wallets.wallet_account(hot, "BTC")).balance.debit_balance_posted
    cold_sat = ledger.get_account(runtime.wallets.wallet_account(cold, "BTC")).balance.debit_balance_posted
    say(f"  swept to the 2-of-3 cold multisig ({'done' if sweep is not None else 'nothing to sweep'}): "
        f"hot {hot_sat} sat, cold {cold_sat} sat")
    report = runtime.reconciler.run()
    say(f"  reconciliation at block {report.height}: {report.status}")
    for line in report.lines:
        say(f"    {line['wallet']:<20} {line['asset']:<5} on chain {line['on_chain']:>14} "
            f"expected {line['expected']:>14} {line['status']}")
    return {"withdrawal": withdrawal.status.value, "cold_sat": cold_sat, "reconciliation": report.status}


def register_treasury(wallet: click.Group) -> None:
    """Add the operator's treasury commands (what only the demo did) to ``wallet``."""
    chain_option = click.option("--chain", type=click.Choice(CHAINS), default="ethereum", show_default=True)

    def guarded(fn: Callable[[], object]) -> None:
        from strongroom.commands.access import guard

        def run() -> None:
            try:
                result = fn()
            except (WalletError, ChainError) as exc:
                click.echo(json.dumps({"code": int(exc.code), "error": exc.code.name.lower(),
                                       "message": exc.message}), err=True)
                raise SystemExit(1) from None
            click.echo(json.dumps(result, indent=2))

        guard(run)

    @wallet.command("register-cold")
    @click.argument("cold")
    @chain_option
    def register_cold(cold: str, chain: str) -> None:
        """Set up the hot and deposit wallets and register the cold one (idempotent).

        COLD is the Ethereum cold address (the offline signer's, `strongroom-signer keys`) or the
        Bitcoin 2-of-3 `wsh(sortedmulti(...))` descriptor with key origins.
        """
        runtime = _runtime_or_exit(chain)

        def run() -> object:
            runtime.setup_wallets(cold)
            return _wallet_list(runtime)

        guarded(run)

    @wallet.command("list")
    @chain_option
    def wallet_list(chain: str) -> None:
        """List the chain's wallets with their primary addresses."""
        runtime = _runtime_or_exit(chain)
        guarded(lambda: _wallet_list(runtime))

    @wallet.command("deposit-address")
    @click.argument("owner")
    @chain_option
    @click.option("--plain", is_flag=True, help="Print only the address (for shell scripts).")
    def deposit_address(owner: str, chain: str, plain: bool) -> None:
        """Print OWNER's deposit address (derived once, then the same)."""
        runtime = _runtime_or_exit(chain)
        if plain:
            try:
                click.echo(runtime.wallets.deposit_address(f"{chain}-deposits", owner).address)
            except WalletError as exc:
                raise click.ClickException(exc.message) from None
            return

        def run() -> object:
            info = runtime.wallets.deposit_address(f"{chain}-deposits", owner)
            return {"owner": owner, "chain": chain, "address": info.address, "path": info.path}

        guarded(run)

    @wallet.command("consolidate")
    @click.argument("asset")
    @chain_option
    def consolidate(asset: str, chain: str) -> None:
        """Move credited deposits of ASSET to the hot wallet (at most 20 per run)."""
        runtime = _runtime_or_exit(chain)
        guarded(lambda: [view.to_json() for view in runtime.treasury.consolidate(asset)])

    @wallet.command("limits")
    @click.argument("asset")
    @click.option("--floor", "floor_minor", type=click.IntRange(0), default=None, help="Minor units.")
    @click.option("--target", "target_minor", type=click.IntRange(0), default=None, help="Minor units.")
    @click.option("--ceiling", "ceiling_minor", type=click.IntRange(0), default=None, help="Minor units.")
    @chain_option
    def limits(asset: str, floor_minor: int | None, target_minor: int | None, ceiling_minor: int | None,
               chain: str) -> None:
        """Show, or set (all three), the hot wallet's floor <= target <= ceiling for ASSET."""
        runtime = _runtime_or_exit(chain)
        given = [v for v in (floor_minor, target_minor, ceiling_minor) if v is not None]
        if given and len(given) != 3:
            raise click.UsageError("give --floor, --target and --ceiling together")

        def run() -> object:
            if given:
                runtime.treasury.set_limits(asset, *given)
            found = runtime.treasury.limits(asset)
            return {"chain": chain, "asset": asset, "limits": None if found is None else {
                "floor_minor": str(found.floor_minor), "target_minor": str(found.target_minor),
                "ceiling_minor": str(found.ceiling_minor)}}

        guarded(run)

    @wallet.command("rebalance")
    @click.argument("asset")
    @chain_option
    def rebalance(asset: str, chain: str) -> None:
        """Sweep the hot surplus above the ceiling to cold, or propose a refill below the floor."""
        runtime = _runtime_or_exit(chain)

        def run() -> object:
            result = runtime.treasury.rebalance(asset)
            return {"result": None if result is None else result.to_json()}

        guarded(run)

    @wallet.command("sweep")
    @click.argument("asset")
    @click.argument("amount_minor", type=click.IntRange(1))
    @chain_option
    def sweep(asset: str, amount_minor: int, chain: str) -> None:
        """Sweep AMOUNT_MINOR of ASSET from the hot wallet to the cold wallet now."""
        runtime = _runtime_or_exit(chain)
        guarded(lambda: runtime.treasury.sweep(asset, amount_minor).to_json())

    @wallet.command("refill")
    @click.argument("asset")
    @click.argument("amount_minor", type=click.IntRange(1))
    @click.option("--by", "proposed_by", required=True, help="You, the treasury proposer.")
    @chain_option
    def refill(asset: str, amount_minor: int, proposed_by: str, chain: str) -> None:
        """Propose a cold -> hot refill (two other treasury approvers, then the offline signer)."""
        runtime = _runtime_with_terms(chain)
        guarded(lambda: runtime.treasury.propose_refill(asset, amount_minor, proposed_by).to_json())

    @wallet.command("refill-approve")
    @click.argument("proposal_id")
    @click.option("--username", required=True, help="You, the approver.")
    @click.option("--keystore", "keystore_path", required=True, type=click.Path(path_type=Path, exists=True))
    @click.option("--key-name", default="approver", show_default=True)
    @click.option("--key-id", default=None, help="Registered key id (default USERNAME-KEYNAME).")
    @click.option("--ttl-minutes", type=click.IntRange(1, 72 * 60), default=24 * 60, show_default=True)
    @chain_option
    def refill_approve(proposal_id: str, username: str, keystore_path: Path, key_name: str,
                       key_id: str | None, ttl_minutes: int, chain: str) -> None:
        """Sign the refill's approval subject with your approver key and submit it."""
        from policies.approval import Approval, approval_digest
        from policies.signature_scheme import SignatureScheme
        from strongroom.commands.access import approver_keystore

        runtime = _runtime_with_terms(chain)

        def run() -> object:
            view = next((r for r in runtime.treasury.refills() if r.id == proposal_id), None)
            if view is None:
                raise WalletError(WalletCode.PROPOSAL_NOT_FOUND, f"no refill {proposal_id[:80]}")
            now_ms = wall_clock_ms()
            expires_ms = now_ms + ttl_minutes * 60_000
            signature = approver_keystore(keystore_path).sign(
                key_name, approval_digest(view.subject, now_ms, expires_ms))
            approval = Approval(approver_id=username, key_id=key_id or f"{username}-{key_name}",
                                scheme=SignatureScheme.ED25519, subject=view.subject, signed_at_ms=now_ms,
                                expires_at_ms=expires_ms, signature=signature.value)
            return runtime.treasury.approve_refill(proposal_id, username, approval).to_json()

        guarded(run)

    @wallet.command("freezes")
    @click.option("--owner", default=None)
    def freezes_list(owner: str | None) -> None:
        """List active freezes (owners whose withdrawals stop after a deposit reorged out)."""
        from custody import freezes

        settings = Settings.from_env()
        with make_session_factory(make_engine(settings.database_url))() as session:
            click.echo(json.dumps([f.to_json() for f in freezes.active(session, owner)], indent=2))

    @wallet.command("freeze-lift-request")
    @click.argument("freeze_id")
    @click.option("--by", "admin", required=True, help="The admin requesting the lift.")
    @click.option("--mfa", "mfa_code", required=True, help="Your current TOTP code.")
    @click.option("--reason", required=True, help="Why the freeze may end, for the security log.")
    def freeze_lift_request(freeze_id: str, admin: str, mfa_code: str, reason: str) -> None:
        """Request the lift of one freeze (a second admin approves it with freeze-lift-approve)."""
        from custody import freezes

        _freeze_lift(admin, mfa_code, lambda session, roles, now_ms: freezes.request_lift(
            session, freeze_id, admin=admin, roles=roles, reason=reason, now_ms=now_ms))

    @wallet.command("freeze-lift-approve")
    @click.argument("freeze_id")
    @click.option("--by", "admin", required=True, help="The approving admin (not the requester).")
    @click.option("--mfa", "mfa_code", required=True, help="Your current TOTP code.")
    def freeze_lift_approve(freeze_id: str, admin: str, mfa_code: str) -> None:
        """Approve another admin's lift request: the freeze ends now."""
        from custody import freezes

        _freeze_lift(admin, mfa_code, lambda session, roles, now_ms: freezes.approve_lift(
            session, freeze_id, admin=admin, roles=roles, now_ms=now_ms))


def _freeze_lift(admin: str, mfa_code: str, step: Callable[[Any, Any, int], Any]) -> None:
    """Run one step of a freeze lift for an enabled admin whose TOTP code checks, in one transaction."""
    from strongroom.cli import _guard_access, _verified_admin_services

    def run() -> None:
        services = _verified_admin_services(admin, mfa_code)
        with services.sessions.begin() as session:
            view = step(session, services.users.find_user(admin).roles, int(wall_clock_ms()))
            click.echo(json.dumps({"freeze": view.to_json()}))

    _guard_access(run)


def _wallet_list(runtime: ChainRuntime) -> list[dict[str, object]]:
    chain = runtime.adapter.chain
    out: list[dict[str, object]] = []
    for wallet in runtime.wallets.list_wallets(chain):
        try:
            address: str | None = runtime.wallets.primary_address(wallet.id).address
        except WalletError:
            address = None
        out.append({"name": wallet.name, "chain": chain, "temperature": wallet.temperature.value,
                    "address": address})
    return out
