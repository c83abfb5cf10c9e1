"""The Ethereum chain adapter over web3.py: any JSON-RPC node, or the in-process chain.

ETH moves as the value of transactions; tokens (the USDC-like ERC-20) move as
``Transfer`` logs of their contract. Amounts are wei and token minor units.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from eth_utils.address import is_address, is_checksum_address, to_checksum_address
from web3 import Web3
from web3.exceptions import BlockNotFound, TransactionNotFound, Web3Exception

from custody.chains.adapter import Block, ChainCode, ChainError, FeeQuote, ObservedTransfer, Receipt
from custody.chains.ethereum.token import TRANSFER_TOPIC

CHAIN = "ethereum"
NATIVE_ASSET = "ETH"
# The tip we offer when the node cannot suggest one (1 gwei).
DEFAULT_PRIORITY_FEE_WEI = 10**9
# Errors a node returns when it already has the exact transaction we re-send.
_ALREADY_KNOWN = ("already known", "known transaction", "already imported", "alreadyknown")
_NONCE_USED = ("nonce too low", "expected", "nonce has already been used")


def _hex(value: Any) -> str:
    return Web3.to_hex(value)


class EthereumAdapter:
    """Ethereum over web3.py. ``tokens`` maps asset codes to ERC-20 contract addresses."""

    chain = CHAIN
    native_asset = NATIVE_ASSET

    def __init__(self, web3: Web3, tokens: Mapping[str, str]) -> None:
        self.web3 = web3
        self.tokens = {asset: to_checksum_address(address) for asset, address in tokens.items()}
        self._token_assets = {address.lower(): asset for asset, address in self.tokens.items()}

    def assets(self) -> tuple[str, ...]:
        """Return ETH and the configured tokens."""
        return (NATIVE_ASSET, *sorted(self.tokens))

    def chain_id(self) -> int:
        """Return the EIP-155 chain id."""
        return int(self._call(lambda: self.web3.eth.chain_id))

    def head_height(self) -> int:
        """Return the latest block number."""
        return int(self._call(lambda: self.web3.eth.block_number))

    def block_hash(self, height: int) -> str | None:
        """Return the hash of block ``height`` on the best chain, or None past the head."""
        try:
            block = self._call(lambda: self.web3.eth.get_block(height))
        except ChainError as exc:
            if exc.code is ChainCode.BLOCK_NOT_FOUND:
                return None
            raise
        return _hex(block["hash"])

    def block(self, height: int) -> Block:
        """Return block ``height`` with its native value transfers and token Transfer logs."""
        raw = self._call(lambda: self.web3.eth.get_block(height, full_transactions=True))
        block_hash = _hex(raw["hash"])
        transfers: list[ObservedTransfer] = []
        for tx in raw["transactions"]:
            if tx["value"] > 0 and tx.get("to"):
                transfers.append(ObservedTransfer(
                    txid=_hex(tx["hash"]), index=-1, asset=NATIVE_ASSET,
                    sender=to_checksum_address(tx["from"]), recipient=to_checksum_address(tx["to"]),
                    amount_minor=int(tx["value"])))
        if self.tokens:
            transfers.extend(self._token_transfers(int(raw["number"]), block_hash))
        return Block(height=int(raw["number"]), hash=block_hash, parent_hash=_hex(raw["parentHash"]),
                     transfers=tuple(transfers))

    def _token_transfers(self, height: int, block_hash: str) -> list[ObservedTransfer]:
        # Query by number (the in-process chain has no blockHash filter) and insist on the hash:
        # logs of a block that was reorganised away meanwhile must not be attributed to this one.
        logs = self._call(lambda: self.web3.eth.get_logs({
            "fromBlock": height, "toBlock": height, "address": list(self.tokens.values()),
            "topics": [TRANSFER_TOPIC]}))
        found = []
        for log in logs:
            if _hex(log["blockHash"]) != block_hash:
                raise ChainError(ChainCode.NODE_UNAVAILABLE,
                                 f"block {height} changed while it was read (reorg in progress)")
            asset = self._token_assets.get(str(log["address"]).lower())
            topics = log["topics"]
            if asset is None or len(topics) != 3:
                continue
            found.append(ObservedTransfer(
                txid=_hex(log["transactionHash"]), index=int(log["logIndex"]), asset=asset,
                sender=to_checksum_address(bytes(topics[1])[-20:]),
                recipient=to_checksum_address(bytes(topics[2])[-20:]),
                amount_minor=int.from_bytes(bytes(log["data"]), "big")))
        return found

    def balance(self, address: str, asset: str, at_height: int | None = None) -> int:
        """Return the ETH or token balance of ``address`` at the head or at block ``at_height``."""
        checksum = self.normalize_address(address)
        block: Any = "latest" if at_height is None else at_height
        if asset == NATIVE_ASSET:
            return int(self._call(lambda: self.web3.eth.get_balance(cast(Any, checksum), block)))
        token = self.token_address(asset)
        data = bytes.fromhex("70a08231") + bytes.fromhex(checksum[2:]).rjust(32, b"\0")
        out = self._call(lambda: self.web3.eth.call(cast(Any, {"to": token, "data": _hex(data)}), block))
        return int.from_bytes(bytes(out), "big")

    def token_address(self, asset: str) -> str:
        """Return the contract address of token ``asset``."""
        try:
            return self.tokens[asset]
        except KeyError:
            raise ChainError(ChainCode.UNKNOWN_ASSET,
                             f"asset was {asset!r}, {CHAIN} moves {', '.join(self.assets())}") from None

    def nonce(self, address: str) -> int:
        """Return the count of mined transactions from ``address``."""
        checksum = self.normalize_address(address)
        return int(self._call(lambda: self.web3.eth.get_transaction_count(cast(Any, checksum), "latest")))

    def fee_quote(self) -> FeeQuote:
        """Return max fee = 2 x base fee + tip, the usual margin for a few full blocks."""
        latest = self._call(lambda: self.web3.eth.get_block("latest"))
        base_fee = int(latest.get("baseFeePerGas") or 0)
        try:
            tip = int(self._call(lambda: self.web3.eth.max_priority_fee))
        except ChainError:
            tip = DEFAULT_PRIORITY_FEE_WEI
        return FeeQuote(max_fee_per_gas=2 * base_fee + tip, max_priority_fee_per_gas=tip)

    def broadcast(self, raw: bytes) -> str:
        """Send raw signed bytes; a transaction the node already has is not an error."""
        txid = _hex(Web3.keccak(raw))
        try:
            self.web3.eth.send_raw_transaction(raw)
        except Exception as exc:
            text = str(exc).lower()
            if any(marker in text for marker in _ALREADY_KNOWN):
                return txid
            if any(marker in text for marker in _NONCE_USED) and self.receipt(txid) is not None:
                return txid
            raise ChainError(ChainCode.BROADCAST_REJECTED,
                             f"node rejected transaction {txid}: {str(exc)[:200]}") from None
        return txid

    def receipt(self, txid: str) -> Receipt | None:
        """Return the receipt of ``txid`` if it is mined on the best chain."""
        try:
            raw = self.web3.eth.get_transaction_receipt(txid)  # type: ignore[arg-type]
        except TransactionNotFound:
            return None
        except (Web3Exception, OSError) as exc:
            raise ChainError(ChainCode.NODE_UNAVAILABLE, f"receipt of {txid}: {exc}") from None
        if raw is None or raw.get("blockNumber") is None:
            return None
        fee = int(raw["gasUsed"]) * int(raw.get("effectiveGasPrice") or 0)
        return Receipt(txid=txid, success=int(raw["status"]) == 1, block_height=int(raw["blockNumber"]),
                       block_hash=_hex(raw["blockHash"]), fee_paid_minor=fee)

    def normalize_address(self, address: str) -> str:
        """Return the EIP-55 checksum form; a mixed-case address must already be checksummed."""
        if not isinstance(address, str) or not is_address(address):
            raise ChainError(ChainCode.INVALID_ADDRESS,
                             f"address was {str(address)[:80]!r}, must be 0x followed by 40 hex digits")
        body = address[2:]
        mixed_case = body != body.lower() and body != body.upper()
        if mixed_case and not is_checksum_address(address):
            raise ChainError(ChainCode.INVALID_ADDRESS,
                             f"address {address} has a bad EIP-55 checksum (a typo?)")
        return to_checksum_address(address)

    def _call(self, fn: Any) -> Any:
        try:
            return fn()
        except BlockNotFound as exc:
            raise ChainError(ChainCode.BLOCK_NOT_FOUND, str(exc)) from None
        except (Web3Exception, OSError, ValueError) as exc:
            if "not found" in str(exc).lower() or "unknown block" in str(exc).lower():
                raise ChainError(ChainCode.BLOCK_NOT_FOUND, str(exc)[:200]) from None
            raise ChainError(ChainCode.NODE_UNAVAILABLE, f"{CHAIN} node error: {str(exc)[:200]}") from None
