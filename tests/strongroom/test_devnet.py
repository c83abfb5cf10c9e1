"""strongroom devnet: the embedded chains as local servers with persistent state (docs/devnet.md)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from custody.chains.adapter import ChainError
from custody.chains.bitcoin.adapter import BitcoinAdapter
from custody.chains.bitcoin.network import network
from custody.chains.bitcoin.rpc import BitcoinRpc
from custody.chains.ethereum.adapter import EthereumAdapter
from strongroom.devnet.bitcoin import BitcoinDevnetServer, JournaledRegtest
from strongroom.devnet.control import (
    BitcoinControl,
    DevnetError,
    DevnetInfo,
    EthereumControl,
    faucet_address,
    minor_units,
)
from strongroom.devnet.ethereum import anvil_binary
from strongroom.devnet.facade import EthereumFacade

ADDRESS = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
ETH_ADDRESS = "0x00000000000000000000000000000000000000AA"
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _info(server: BitcoinDevnetServer, eth_url: str = "http://127.0.0.1:1", token: str = "") -> DevnetInfo:
    return DevnetInfo(eth_url, "facade", token, server.url, "devnet", "pw")


def test_devnet_bitcoin_journal_reopened_same_chain_and_mempool(tmp_path: Path) -> None:
    node = JournaledRegtest(tmp_path)
    assert node.chain.height == 101  # faucet coins mature on first start
    node.faucet(ADDRESS, 100_000)
    node.mine(2, faucet_address())
    node.reorg(1, drop=False)
    pending = node.faucet(ADDRESS, 70_000)
    tip, height = node.chain.getblockchaininfo()["bestblockhash"], node.chain.height
    node.close()
    again = JournaledRegtest(tmp_path)
    assert again.chain.getblockchaininfo()["bestblockhash"] == tip and again.chain.height == height
    assert again.chain.mempool_txids() == [pending]
    assert again.chain.utxo_balance(ADDRESS) == 100_000


def test_devnet_bitcoin_journal_torn_last_line_ignored(tmp_path: Path) -> None:
    node = JournaledRegtest(tmp_path)
    tip = node.chain.getblockchaininfo()["bestblockhash"]
    node.close()
    with (tmp_path / "bitcoin.jsonl").open("a") as journal:
        journal.write('{"op": "mine", "cou')
    assert JournaledRegtest(tmp_path).chain.getblockchaininfo()["bestblockhash"] == tip


def test_devnet_bitcoin_rpc_fund_mine_reorg_seen_by_the_platform_adapter(tmp_path: Path) -> None:
    server = BitcoinDevnetServer(JournaledRegtest(tmp_path), "devnet", "pw")
    server.start()
    try:
        control = BitcoinControl(_info(server))
        adapter = BitcoinAdapter(BitcoinRpc(server.url.replace("http://", "http://devnet:pw@")),
                                 network("regtest"))
        start = control.height()
        txid = control.fund(ADDRESS, 250_000)
        assert control.height() == start + 1
        assert adapter.balance(ADDRESS, "BTC") == 250_000
        assert control.mine(3) == start + 4
        assert control.reorg(4) == start + 5  # the new branch is one block longer
        assert adapter.balance(ADDRESS, "BTC") == 0  # the payment was dropped with its block
        with pytest.raises(ChainError):
            BitcoinRpc(server.url.replace("http://", "http://devnet:wrong@")).call("getblockcount")
        with pytest.raises(DevnetError, match="depth"):
            control.reorg(10_000)
        assert txid not in server.node.chain.mempool_txids()
    finally:
        server.close()


def test_devnet_bitcoin_reorg_keep_transactions_mines_them_again(tmp_path: Path) -> None:
    server = BitcoinDevnetServer(JournaledRegtest(tmp_path), "devnet", "pw")
    server.start()
    try:
        control = BitcoinControl(_info(server))
        control.fund(ADDRESS, 80_000)
        control.reorg(1, drop=False)
        assert server.node.chain.utxo_balance(ADDRESS) == 80_000
    finally:
        server.close()


def test_devnet_ethereum_facade_fund_mine_reorg_through_json_rpc() -> None:
    facade = EthereumFacade()
    facade.start()
    try:
        token = facade.control().ensure_token()
        info = DevnetInfo(facade.url, "facade", token, "http://127.0.0.1:1/", "devnet", "pw")
        control = EthereumControl(info)
        adapter = EthereumAdapter(control.chain.web3, {"USDC": token})
        control.fund(ETH_ADDRESS, "ETH", 2 * 10**18)
        control.fund(ETH_ADDRESS, "USDC", 7 * 10**6)
        height = control.mine(2)
        assert adapter.balance(ETH_ADDRESS, "ETH") == 2 * 10**18
        assert adapter.balance(ETH_ADDRESS, "USDC") == 7 * 10**6
        old_hash = adapter.block_hash(height - 2)
        assert control.reorg(4) == height
        assert adapter.block_hash(height - 2) != old_hash
        assert adapter.balance(ETH_ADDRESS, "USDC") == 0
    finally:
        facade.close()


@pytest.mark.parametrize(("amount", "asset", "minor"), [("1.5", "ETH", 15 * 10**17), ("0.00000001", "BTC", 1),
                                                          ("2500", "USDC", 2_500_000_000)])
def test_devnet_minor_units_exact(amount: str, asset: str, minor: int) -> None:
    assert minor_units(amount, asset) == minor


@pytest.mark.parametrize("amount", ["0.000000001", "-1", "0", "nan", "1e400000", "abc"])
def test_devnet_minor_units_inexact_or_bad_refused(amount: str) -> None:
    with pytest.raises(DevnetError):
        minor_units(amount, "BTC")


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "strongroom"), "devnet", *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def _up(env: dict[str, str], eth_port: int, btc_port: int) -> subprocess.Popen[str]:
    process = subprocess.Popen([str(BIN / "strongroom"), "devnet", "up", "--eth-port", str(eth_port),
                                "--btc-port", str(btc_port)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("devnet up"), line + process.stdout.read()
    return process


def _down(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.skipif(anvil_binary() is None and os.environ.get("STRONGROOM_REQUIRE_ANVIL") != "1",
                    reason="anvil not installed: run scripts/install-node-deps.sh")
def test_devnet_cli_up_mine_fund_reorg_state_survives_restart(tmp_path: Path) -> None:
    env = {**os.environ, "STRONGROOM_DATA_DIR": str(tmp_path / "data")}
    eth_port, btc_port = _free_port(), _free_port()
    process = _up(env, eth_port, btc_port)
    try:
        assert _cli(env, "mine", "3").returncode == 0
        funded = _cli(env, "fund", ADDRESS, "0.01")
        assert funded.returncode == 0, funded.stderr
        assert json.loads(funded.stdout)["amount_minor"] == "1000000"
        usdc = _cli(env, "fund", ETH_ADDRESS, "12.5", "--asset", "USDC")
        assert usdc.returncode == 0, usdc.stderr
        reorg = _cli(env, "reorg", "1", "--chain", "bitcoin")
        assert reorg.returncode == 0, reorg.stderr
        bad = _cli(env, "fund", ADDRESS, "0.000000001")
        assert bad.returncode == 1 and json.loads(bad.stderr)["error"] == "devnet_refused"
        before = json.loads(_cli(env, "status").stdout)
        exported = _cli(env, "env").stdout
        assert f"STRONGROOM_ETH_RPC_URL=http://127.0.0.1:{eth_port}" in exported
        assert "STRONGROOM_BTC_NETWORK=regtest" in exported
    finally:
        _down(process)
    assert (tmp_path / "data" / "devnet" / "devnet.env").stat().st_mode & 0o077 == 0
    time.sleep(0.2)
    process = _up(env, eth_port, btc_port)
    try:
        after = json.loads(_cli(env, "status").stdout)
        assert after == before
        info = DevnetInfo.read(tmp_path / "data" / "devnet")
        adapter = EthereumAdapter(EthereumControl(info).chain.web3, {"USDC": info.token_address})
        assert adapter.balance(ETH_ADDRESS, "USDC") == 12_500_000
    finally:
        _down(process)
