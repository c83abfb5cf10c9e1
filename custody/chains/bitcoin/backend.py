"""The node interface: the Bitcoin Core JSON-RPC methods the platform uses, as a protocol.

Both backends implement it with the same method names, arguments and result
shapes as Bitcoin Core's documented RPC: :class:`RegtestChain` in process,
:class:`BitcoinRpc` over HTTP. Amounts in results are ``Decimal`` BTC exactly
as Core prints them; the adapter never uses them for money and reads values
from the raw transaction hex instead.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Protocol

from custody.chains.adapter import ChainCode, ChainError

SATS_PER_BTC = 100_000_000

# Bitcoin Core's RPC error codes (src/rpc/protocol.h) that the platform distinguishes.
RPC_INVALID_ADDRESS_OR_KEY = -5
RPC_INVALID_PARAMETER = -8
RPC_DESERIALIZATION_ERROR = -22
RPC_VERIFY_ERROR = -25
RPC_VERIFY_REJECTED = -26
RPC_VERIFY_ALREADY_IN_CHAIN = -27
RPC_METHOD_NOT_FOUND = -32601


class RpcError(ChainError):
    """A JSON-RPC error object from the node: ``{"code": -26, "message": "..."}``."""

    def __init__(self, rpc_code: int, message: str) -> None:
        chain_code = (
            ChainCode.BROADCAST_REJECTED
            if rpc_code in (RPC_VERIFY_ERROR, RPC_VERIFY_REJECTED, RPC_DESERIALIZATION_ERROR)
            else ChainCode.BLOCK_NOT_FOUND
            if rpc_code in (RPC_INVALID_PARAMETER, RPC_INVALID_ADDRESS_OR_KEY)
            else ChainCode.NODE_UNAVAILABLE
        )
        super().__init__(chain_code, f"node error {rpc_code}: {message}")
        self.rpc_code = rpc_code
        self.rpc_message = message


def btc_to_sat(value: Decimal | int | str) -> int:
    """Return satoshis for an exact BTC amount; raise ValueError if it has sub-satoshi digits."""
    sats = Decimal(value) * SATS_PER_BTC
    if sats != sats.to_integral_value():
        raise ValueError(f"amount was {value} BTC, not a whole number of satoshis")
    return int(sats)


def sat_to_btc(sats: int) -> Decimal:
    """Return the exact BTC Decimal (8 places) for ``sats``."""
    return (Decimal(sats) / SATS_PER_BTC).quantize(Decimal("0.00000001"))


class BitcoinBackend(Protocol):
    """The Bitcoin Core RPC methods the adapter calls (same names, arguments and result shapes)."""

    def getblockchaininfo(self) -> dict[str, Any]:
        """Return ``{"chain", "blocks", "bestblockhash", ...}``."""
        ...

    def getblockhash(self, height: int) -> str:
        """Return the best-chain block hash at ``height`` or raise RpcError(-8)."""
        ...

    def getblock(self, blockhash: str, verbosity: int = 1) -> dict[str, Any]:
        """Return a block; with verbosity 2 every transaction is decoded and carries ``hex``."""
        ...

    def getblockheader(self, blockhash: str, verbose: bool = True) -> dict[str, Any]:
        """Return ``{"hash", "height", "confirmations", ...}``; confirmations -1 off the best chain."""
        ...

    def getrawtransaction(self, txid: str, verbose: bool = False) -> Any:
        """Return a mempool or (with txindex) mined transaction, hex or decoded."""
        ...

    def testmempoolaccept(self, rawtxs: list[str]) -> list[dict[str, Any]]:
        """Return ``[{"txid", "allowed", "reject-reason"?}]`` without broadcasting."""
        ...

    def sendrawtransaction(self, hexstring: str) -> str:
        """Broadcast; return the txid or raise RpcError(-25/-26/-27)."""
        ...

    def estimatesmartfee(self, conf_target: int) -> dict[str, Any]:
        """Return ``{"feerate": BTC/kvB, "blocks"}`` or ``{"errors": [...], "blocks"}``."""
        ...

    def scantxoutset(self, action: str, scanobjects: list[Any]) -> dict[str, Any]:
        """Return the confirmed UTXOs of ``addr(...)`` descriptors: ``{"unspents", "total_amount"}``."""
        ...
