"""The operator's side of the devnet: mine, fund and reorganise over the chains' RPCs.

The endpoints come from ``devnet.json`` in the devnet directory (written by
``strongroom devnet up``). Amounts are exact whole units (``"1.5"`` ETH,
``"0.002"`` BTC) converted to minor units without rounding.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from custody.chains.bitcoin.backend import RpcError
from custody.chains.bitcoin.rpc import BitcoinRpc

STATE_NAME = "devnet.json"
ENV_NAME = "devnet.env"
FILE_MODE = 0o600
DECIMALS = {"ETH": 18, "USDC": 6, "BTC": 8}
CHAIN_OF_ASSET = {"ETH": "ethereum", "USDC": "ethereum", "BTC": "bitcoin"}
# Confirmations the devnet's environment asks for: short enough to watch, deep enough to reorg.
DEVNET_CONFIRMATIONS = 3
MAX_AMOUNT_CHARS = 40
MAX_MINOR = 2**256


class DevnetError(Exception):
    """An operator request the devnet cannot do (no devnet, bad amount, node refused)."""


def faucet_address() -> str:
    """Return the regtest address of the chain's faucet (coinbases and change go there)."""
    from embit import ec  # type: ignore[import-untyped, unused-ignore]
    from embit.script import p2wpkh  # type: ignore[import-untyped, unused-ignore]

    key = ec.PrivateKey(hashlib.sha256(b"strongroom-regtest-faucet").digest())
    from embit.networks import NETWORKS  # type: ignore[import-untyped, unused-ignore]

    return str(p2wpkh(key.get_public_key()).address(NETWORKS["regtest"]))


def minor_units(amount: str, asset: str) -> int:
    """Return ``amount`` (whole units, decimal text) in ``asset``'s minor unit; refuse rounding."""
    if asset not in DECIMALS:
        raise DevnetError(f"asset was {asset[:12]!r}, must be one of {', '.join(DECIMALS)}")
    if len(amount) > MAX_AMOUNT_CHARS:
        raise DevnetError(f"amount was {amount[:40]!r}..., at most {MAX_AMOUNT_CHARS} characters")
    try:
        value = Decimal(amount) * (Decimal(10) ** DECIMALS[asset])
    except InvalidOperation:
        raise DevnetError(f"amount was {amount[:40]!r}, must be a decimal number like 1.5") from None
    if not value.is_finite() or value != value.to_integral_value() or not 0 < value < MAX_MINOR:
        raise DevnetError(f"amount was {amount[:40]!r}, must be positive with at most "
                          f"{DECIMALS[asset]} decimals for {asset}")
    return int(value)


@dataclass(frozen=True, slots=True)
class DevnetInfo:
    """Where the running devnet's chains listen (``devnet.json``)."""

    eth_url: str
    eth_kind: str
    token_address: str
    btc_url: str
    btc_user: str
    btc_password: str

    def to_json(self) -> dict[str, Any]:
        return {"ethereum": {"url": self.eth_url, "kind": self.eth_kind, "usdc": self.token_address},
                "bitcoin": {"url": self.btc_url, "user": self.btc_user, "password": self.btc_password}}

    def environment(self) -> dict[str, str]:
        """Return the platform's environment for this devnet (docs/configuration.md)."""
        return {
            "STRONGROOM_ETH_RPC_URL": self.eth_url,
            "STRONGROOM_ETH_USDC_ADDRESS": self.token_address,
            "STRONGROOM_ETH_CONFIRMATIONS": str(DEVNET_CONFIRMATIONS),
            # A devnet's wallets scan from genesis: nothing paid before the first tick is missed.
            "STRONGROOM_ETH_START_HEIGHT": "0",
            "STRONGROOM_BTC_RPC_URL": self.btc_url,
            "STRONGROOM_BTC_RPC_USER": self.btc_user,
            "STRONGROOM_BTC_RPC_PASSWORD": self.btc_password,
            "STRONGROOM_BTC_NETWORK": "regtest",
            "STRONGROOM_BTC_CONFIRMATIONS": str(DEVNET_CONFIRMATIONS),
            "STRONGROOM_BTC_START_HEIGHT": "0",
        }

    def write(self, directory: Path) -> None:
        """Write ``devnet.json`` and ``devnet.env`` (owner-only: they hold the RPC password)."""
        env = "".join(f"export {key}={value}\n" for key, value in self.environment().items())
        for name, text in ((STATE_NAME, json.dumps(self.to_json(), indent=2) + "\n"), (ENV_NAME, env)):
            path = directory / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)

    @classmethod
    def read(cls, directory: Path) -> DevnetInfo:
        path = directory / STATE_NAME
        try:
            data = json.loads(path.read_text())
            return cls(data["ethereum"]["url"], data["ethereum"]["kind"], data["ethereum"]["usdc"],
                       data["bitcoin"]["url"], data["bitcoin"]["user"], data["bitcoin"]["password"])
        except FileNotFoundError:
            raise DevnetError(f"no devnet in {directory}: start one with `strongroom devnet up`") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise DevnetError(f"{path} is not a devnet description: {exc}") from None


class EthereumControl:
    """Mine, fund and reorganise the devnet's Ethereum node (anvil's RPC; the facade speaks it too)."""

    def __init__(self, info: DevnetInfo) -> None:
        from custody.chains.ethereum.devchain import AnvilChain

        self.chain = AnvilChain(info.eth_url)
        self.chain.token_address = info.token_address

    def height(self) -> int:
        return int(self.chain.web3.eth.block_number)

    def mine(self, count: int) -> int:
        self.chain.mine(count)
        return self.height()

    def fund(self, address: str, asset: str, amount_minor: int) -> str:
        """Pay ``address`` from the faucet account (mined at once); return the tx hash."""
        from eth_utils.address import is_address

        if not is_address(address):
            raise DevnetError(f"address was {address[:60]!r}, not an Ethereum address")
        txid = (self.chain.send_eth(address, amount_minor) if asset == "ETH"
                else self.chain.mint(address, amount_minor))
        self.chain.web3.eth.wait_for_transaction_receipt(txid, timeout=30)  # type: ignore[arg-type]
        return txid

    def reorg(self, depth: int) -> int:
        """Replace the top ``depth`` blocks by empty ones (their transactions are dropped)."""
        if not 1 <= depth <= self.height():
            raise DevnetError(f"depth was {depth}, must be 1..{self.height()}")
        self.chain._rpc("anvil_reorg", [depth, []])
        return self.height()


class BitcoinControl:
    """Mine, fund and reorganise the devnet's regtest chain over its RPC."""

    def __init__(self, info: DevnetInfo) -> None:
        credentials = f"http://{info.btc_user}:{info.btc_password}@"
        self.rpc = BitcoinRpc(info.btc_url.replace("http://", credentials, 1))

    def height(self) -> int:
        return int(self.rpc.call("getblockcount"))

    def mine(self, count: int) -> int:
        self._call("generatetoaddress", count, faucet_address())
        return self.height()

    def fund(self, address: str, amount_sat: int) -> str:
        """Pay ``address`` from the faucet and mine it in a block; return the txid."""
        txid = str(self._call("sendtoaddress", address, str(Decimal(amount_sat).scaleb(-8))))
        self._call("generatetoaddress", 1, faucet_address())
        return txid

    def reorg(self, depth: int, drop: bool = True) -> int:
        self._call("devnet_reorg", depth, drop)
        return self.height()

    def _call(self, method: str, *params: Any) -> Any:
        try:
            return self.rpc.call(method, *params)
        except RpcError as exc:
            raise DevnetError(f"bitcoin devnet refused {method}: {exc.rpc_message}") from None
