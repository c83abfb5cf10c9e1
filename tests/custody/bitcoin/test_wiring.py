"""The Bitcoin runtime built from STRONGROOM_BTC_* settings, against the RPC stand-in of bitcoind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from custody.chains.bitcoin.regtest import RegtestChain
from strongroom.runtimes.bitcoin import BitcoinRuntime
from strongroom.runtimes.from_env import bundle_chains, chain_runtimes_from_env
from strongroom.settings import Settings

from .helpers import WORLD
from .rpc_standin import RpcStandin


@pytest.fixture
def bitcoind() -> Iterator[RpcStandin]:
    chain = RegtestChain()
    chain.mine(101)
    server = RpcStandin(chain)
    yield server
    server.close()


def test_bitcoin_runtime_from_env_sets_up_the_wallets_ticks_and_reconciles(
    bitcoind: RpcStandin, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STRONGROOM_ETH_RPC_URL", raising=False)
    for name, value in {
        "STRONGROOM_BTC_RPC_URL": bitcoind.url,
        "STRONGROOM_BTC_RPC_USER": "rpcuser",
        "STRONGROOM_BTC_RPC_PASSWORD": "rpcpass",
        "STRONGROOM_BTC_NETWORK": "regtest",
        "STRONGROOM_BTC_CONFIRMATIONS": "2",
        "STRONGROOM_BTC_COLD_DESCRIPTOR": WORLD.descriptor,
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings(
        data_dir=tmp_path / "data", database_url=sqlite_url, keystore_passphrase="not a secret"
    )
    runtimes = chain_runtimes_from_env(settings)
    assert list(runtimes) == ["bitcoin"]
    runtime = runtimes["bitcoin"]
    assert isinstance(runtime, BitcoinRuntime)
    assert runtime.executor.config.confirmations == {"BTC": 2}
    assert {w.name for w in runtime.wallets.list_wallets("bitcoin")} == {
        "bitcoin-hot",
        "bitcoin-deposits",
        "bitcoin-cold",
    }
    runtime.tick()  # a fresh watcher starts at the node's head
    address = runtime.wallets.deposit_address("bitcoin-deposits", "alice").address
    bitcoind.chain.faucet_send(address, 50_000)
    bitcoind.chain.mine(2)
    report, _ = runtime.tick()
    assert report.credited == 1
    assert runtime.reconciler.run().status == "ok"
    assert bundle_chains(runtimes).get("bitcoin").network == "regtest"
    # Set up again on the next start: the same wallets, nothing new.
    again = chain_runtimes_from_env(settings)["bitcoin"]
    assert len(again.wallets.list_wallets("bitcoin")) == 3


def test_wallet_cli_runs_on_the_chain_asked_for(
    bitcoind: RpcStandin, sqlite_url: str, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from strongroom.cli import main

    env = {
        "STRONGROOM_DATABASE_URL": sqlite_url,
        "STRONGROOM_DATA_DIR": str(tmp_path / "data"),
        "STRONGROOM_KEYSTORE_PASSPHRASE": "not a secret",
        "STRONGROOM_ETH_RPC_URL": "",
        "STRONGROOM_BTC_RPC_URL": bitcoind.url.replace("http://", "http://rpcuser:rpcpass@"),
        "STRONGROOM_BTC_NETWORK": "regtest",
        "STRONGROOM_BTC_COLD_DESCRIPTOR": WORLD.descriptor,
    }
    runner = CliRunner()
    tick = runner.invoke(main, ["wallet", "tick", "--chain", "bitcoin"], env=env)
    assert tick.exit_code == 0, tick.output
    reconcile = runner.invoke(main, ["wallet", "reconcile", "--chain", "bitcoin"], env=env)
    assert reconcile.exit_code == 0, reconcile.output
    assert '"chain": "bitcoin"' in reconcile.output
    ethereum = runner.invoke(main, ["wallet", "reconcile"], env=env)
    assert ethereum.exit_code == 2 and "STRONGROOM_ETH_RPC_URL" in ethereum.output
