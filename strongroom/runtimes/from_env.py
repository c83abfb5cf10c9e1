"""Build the chain runtimes the environment configures (read by the server, the jobs and the CLI).

Configuration (environment), Ethereum:
- ``STRONGROOM_ETH_RPC_URL``: JSON-RPC URL of an Ethereum node; unset means no Ethereum for the server.
- ``STRONGROOM_ETH_USDC_ADDRESS``: the USDC token contract on that chain.
- ``STRONGROOM_ETH_CONFIRMATIONS``: confirmations before a deposit or withdrawal settles (default 12).
- ``STRONGROOM_ETH_NETWORK``: the network name the signer's anchors use (default from the chain id).
- ``STRONGROOM_ETH_START_HEIGHT``: the first block the deposit watcher scans for a new wallet (default:
  the chain head when the wallets are set up; the devnet sets 0). Ignored once the scan cursor exists.
- ``STRONGROOM_ETH_COLD_ADDRESS``: the cold wallet's address (the offline signer's, shown by
  ``strongroom-signer keys``); when set, the hot, deposit and cold wallets are set up on start (idempotent).

Bitcoin:
- ``STRONGROOM_BTC_RPC_URL``: Bitcoin Core JSON-RPC URL (``txindex=1``); unset means no Bitcoin.
- ``STRONGROOM_BTC_RPC_USER`` / ``STRONGROOM_BTC_RPC_PASSWORD``, or ``STRONGROOM_BTC_RPC_COOKIE_FILE``
  (Core's ``.cookie``): RPC credentials (credentials in the URL work too).
- ``STRONGROOM_BTC_NETWORK``: mainnet, testnet or regtest (default mainnet).
- ``STRONGROOM_BTC_CONFIRMATIONS``: confirmations before a deposit or withdrawal settles (default 6).
- ``STRONGROOM_BTC_START_HEIGHT``: as ``STRONGROOM_ETH_START_HEIGHT``, for Bitcoin.
- ``STRONGROOM_BTC_COLD_DESCRIPTOR``: the cold wallet's ``wsh(sortedmulti(2,...))`` descriptor with
  key origins; when set, the hot, deposit and cold wallets are set up on start (idempotent).

It lives here, not in a command module, so the command modules import it and not each other
(``strongroom.commands.access`` once imported ``strongroom.commands.wallets`` for it, and back).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from web3 import Web3

from custody.bundles.bitcoin import BitcoinBundles
from custody.bundles.chains import BundleChain, BundleChains
from custody.bundles.ethereum import EthereumBundles
from custody.chains.bitcoin.adapter import BitcoinAdapter
from custody.chains.bitcoin.network import network as bitcoin_network
from custody.chains.bitcoin.rpc import BitcoinRpc
from custody.chains.ethereum.adapter import EthereumAdapter
from custody.db import make_engine, make_session_factory
from custody.ledger.service import Ledger, wall_clock_ms
from strongroom.keystores import open_keystore
from strongroom.runtimes.bitcoin import BitcoinRuntime, build_bitcoin_runtime
from strongroom.runtimes.ethereum import WalletRuntime, build_runtime
from strongroom.settings import Settings
from strongroom.wiring import build_deposit_gate

DEFAULT_CONFIRMATIONS = 12
DEFAULT_BTC_CONFIRMATIONS = 6
DEFAULT_BTC_NETWORK = "mainnet"
ETH_NETWORK_ENV = "STRONGROOM_ETH_NETWORK"
ETH_COLD_ADDRESS_ENV = "STRONGROOM_ETH_COLD_ADDRESS"
ChainRuntime = WalletRuntime | BitcoinRuntime


def _start_height(chain: str) -> int | None:
    """Return ``STRONGROOM_<chain>_START_HEIGHT`` (a block height >= 0), or None when unset."""
    raw = os.environ.get(f"STRONGROOM_{chain}_START_HEIGHT", "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise ValueError(f"STRONGROOM_{chain}_START_HEIGHT was {raw[:20]!r}, must be a block height >= 0")
    return int(raw)


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
    ledger = Ledger(sessions)
    runtime = build_runtime(sessions, ledger, open_keystore(settings), adapter, wall_clock_ms,
                            {asset: n for asset in adapter.assets()}, start_height=_start_height("ETH"),
                            gate=build_deposit_gate(sessions, ledger, wall_clock_ms))
    cold_address = os.environ.get(ETH_COLD_ADDRESS_ENV)
    if cold_address:
        runtime.setup_wallets(cold_address)
    return runtime


def bitcoin_runtime_from_env(settings: Settings) -> BitcoinRuntime | None:
    """Build the Bitcoin wallet runtime for a configured bitcoind, or None when none is configured."""
    url = os.environ.get("STRONGROOM_BTC_RPC_URL")
    if not url:
        return None
    user = os.environ.get("STRONGROOM_BTC_RPC_USER")
    if user:
        parts = urlsplit(url)
        secret = quote(os.environ.get("STRONGROOM_BTC_RPC_PASSWORD", ""), safe="")
        host = parts.hostname or ""
        netloc = f"{quote(user, safe='')}:{secret}@{host}" + (f":{parts.port}" if parts.port else "")
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    cookie = os.environ.get("STRONGROOM_BTC_RPC_COOKIE_FILE")
    backend = BitcoinRpc(url, cookie_file=Path(cookie) if cookie else None)
    net = bitcoin_network(os.environ.get("STRONGROOM_BTC_NETWORK", DEFAULT_BTC_NETWORK))
    adapter = BitcoinAdapter(backend, net)
    n = int(os.environ.get("STRONGROOM_BTC_CONFIRMATIONS", DEFAULT_BTC_CONFIRMATIONS))
    sessions = make_session_factory(make_engine(settings.database_url))
    ledger = Ledger(sessions)
    runtime = build_bitcoin_runtime(sessions, ledger, open_keystore(settings), adapter,
                                    wall_clock_ms, {"BTC": n}, start_height=_start_height("BTC"),
                                    gate=build_deposit_gate(sessions, ledger, wall_clock_ms))
    descriptor = os.environ.get("STRONGROOM_BTC_COLD_DESCRIPTOR")
    if descriptor:
        runtime.setup_wallets(descriptor)
    return runtime


def chain_runtimes_from_env(settings: Settings) -> dict[str, ChainRuntime]:
    """Return the wallet runtime of every configured chain, by chain name (possibly none)."""
    runtimes: dict[str, ChainRuntime] = {}
    ethereum = runtime_from_env(settings)
    if ethereum is not None:
        runtimes["ethereum"] = ethereum
    bitcoin = bitcoin_runtime_from_env(settings)
    if bitcoin is not None:
        runtimes["bitcoin"] = bitcoin
    return runtimes


def bundle_chains(runtimes: dict[str, ChainRuntime]) -> BundleChains:
    """Return the cold-transfer part of every runtime (custody.bundles), for the bundle service."""
    chains: list[BundleChain] = []
    for runtime in runtimes.values():
        confirmations = runtime.executor.config.confirmations
        if isinstance(runtime, BitcoinRuntime):
            chains.append(BitcoinBundles(runtime.cold, confirmations))
        else:
            network = os.environ.get(ETH_NETWORK_ENV) or None
            chains.append(EthereumBundles(runtime.adapter, confirmations, network,
                                          runtime.executor.config.fee_cap_wei))
    return BundleChains(chains)
