"""The Bitcoin chain adapter: the chain-adapter protocol over any :class:`BitcoinBackend`.

Values are read from each transaction's raw hex (satoshis, exact), never from
the node's decimal JSON. Fee rates are sat/vB: :meth:`fee_quote` returns the
same rate in both fields of the EIP-1559-shaped :class:`FeeQuote`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from embit.transaction import Transaction  # type: ignore[import-untyped, unused-ignore]

from custody.chains.adapter import (
    Block,
    ChainCode,
    ChainError,
    FeeQuote,
    ObservedTransfer,
    Receipt,
    SpentOutput,
)
from custody.chains.bitcoin.backend import (
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_VERIFY_ALREADY_IN_CHAIN,
    BitcoinBackend,
    RpcError,
    btc_to_sat,
)
from custody.chains.bitcoin.network import Network, address_of, normalize_address, script_of
from custody.chains.bitcoin.transaction import txid_of

CHAIN = "bitcoin"
ASSET = "BTC"
DEFAULT_CONF_TARGET = 6
NULL_TXID = "00" * 32


@dataclass(frozen=True, slots=True)
class UnspentSnapshot:
    """The confirmed outputs paying some addresses, as of the node's tip ``height`` / ``block_hash``."""

    height: int
    block_hash: str
    # (txid, vout) -> (address, value in sat)
    outputs: dict[tuple[str, int], tuple[str, int]]


class BitcoinAdapter:
    """Bitcoin for the wallet subsystem: blocks with outputs and spends, fees, broadcast, receipts."""

    chain = CHAIN
    native_asset = ASSET

    def __init__(self, backend: BitcoinBackend, network: Network) -> None:
        self.backend = backend
        self.network = network

    def assets(self) -> tuple[str, ...]:
        return (ASSET,)

    def head_height(self) -> int:
        return int(self.backend.getblockchaininfo()["blocks"])

    def block_hash(self, height: int) -> str | None:
        try:
            return self.backend.getblockhash(height)
        except RpcError as exc:
            if exc.rpc_code == RPC_INVALID_PARAMETER:
                return None
            raise

    def block(self, height: int) -> Block:
        block_hash = self.block_hash(height)
        if block_hash is None:
            raise ChainError(ChainCode.BLOCK_NOT_FOUND, f"bitcoin has no block at height {height}")
        data = self.backend.getblock(block_hash, 2)
        transfers: list[ObservedTransfer] = []
        spends: list[SpentOutput] = []
        for item in data["tx"]:
            tx = Transaction.parse(bytes.fromhex(item["hex"]))
            txid = str(tx.txid().hex())
            for vin in tx.vin:
                if vin.txid.hex() != NULL_TXID:
                    spends.append(SpentOutput(txid, vin.txid.hex(), vin.vout))
            for n, out in enumerate(tx.vout):
                address = address_of(out.script_pubkey, self.network)
                if address is not None and out.value > 0:
                    transfers.append(ObservedTransfer(txid, n, ASSET, "", address, out.value))
        parent = data.get("previousblockhash") or "00" * 32
        return Block(height, block_hash, str(parent), tuple(transfers), tuple(spends))

    def balance(self, address: str, asset: str, at_height: int | None = None) -> int:
        """Return the confirmed value at ``address`` (only at the head: Core keeps no history)."""
        self._check_asset(asset)
        result = self.backend.scantxoutset("start", [{"desc": f"addr({address})"}])
        if at_height is not None and int(result["height"]) != at_height:
            raise ChainError(
                ChainCode.NODE_UNAVAILABLE,
                f"balance asked at height {at_height}, the node scanned at {result['height']}",
            )
        return sum(btc_to_sat(u["amount"]) for u in result["unspents"])

    def unspent(self, addresses: Sequence[str]) -> UnspentSnapshot:
        """Return the confirmed outputs of ``addresses`` in ONE scan of the node's UTXO set.

        One ``scantxoutset`` call reads the whole set at one tip (and each call
        walks the whole set on a real node), so every address is read at the
        same height, which the result names with its block hash.
        """
        wanted = {self.script_of(address).hex(): address for address in addresses}
        result = self.backend.scantxoutset("start", [{"desc": f"addr({a})"} for a in wanted.values()])
        outputs = {
            (str(u["txid"]), int(u["vout"])): (wanted[str(u["scriptPubKey"])], btc_to_sat(u["amount"]))
            for u in result["unspents"]
            if str(u["scriptPubKey"]) in wanted
        }
        return UnspentSnapshot(int(result["height"]), str(result["bestblock"]), outputs)

    def nonce(self, address: str) -> int:
        """Return 0: UTXO chains have no account nonce (outpoints make spends unique)."""
        return 0

    def fee_rate_sat_vb(self, conf_target: int = DEFAULT_CONF_TARGET) -> int | None:
        """Return the node's estimate in whole sat/vB (rounded up), or None without an estimate."""
        result = self.backend.estimatesmartfee(conf_target)
        if "feerate" not in result:
            return None
        sat_per_kvb = btc_to_sat(result["feerate"])
        return max(1, -(-sat_per_kvb // 1000))

    def fee_quote(self) -> FeeQuote:
        rate = self.fee_rate_sat_vb()
        if rate is None:
            raise ChainError(ChainCode.NODE_UNAVAILABLE, "bitcoind has no fee estimate yet")
        return FeeQuote(rate, rate)

    def test_accept(self, raw: bytes) -> str | None:
        """Return None if the node would accept ``raw`` now, else its reject reason."""
        result = self.backend.testmempoolaccept([raw.hex()])[0]
        return None if result.get("allowed") else str(result.get("reject-reason", "rejected"))

    def broadcast(self, raw: bytes) -> str:
        txid = txid_of(raw)
        try:
            sent = self.backend.sendrawtransaction(raw.hex())
        except RpcError as exc:
            if exc.rpc_code == RPC_VERIFY_ALREADY_IN_CHAIN:
                return txid
            raise ChainError(ChainCode.BROADCAST_REJECTED, exc.message) from None
        assert sent == txid, f"node returned txid {sent} for {txid}"
        return txid

    def receipt(self, txid: str) -> Receipt | None:
        info = self._transaction(txid)
        if info is None or not info.get("blockhash") or int(info.get("confirmations", 0)) <= 0:
            return None
        header = self.backend.getblockheader(info["blockhash"])
        if int(header["confirmations"]) < 0:
            return None
        tx = Transaction.parse(bytes.fromhex(info["hex"]))
        return Receipt(txid, True, int(header["height"]), str(header["hash"]), self._fee(tx))

    def raw_transaction(self, txid: str) -> bytes:
        """Return the serialized transaction ``txid`` (a cold PSBT carries it to prove input amounts)."""
        raw = bytes.fromhex(self.backend.getrawtransaction(txid, False))
        if txid_of(raw) != txid:
            raise ChainError(ChainCode.NODE_UNAVAILABLE, f"the node returned another transaction for {txid}")
        return raw

    def mempool_has(self, txid: str) -> bool:
        """Return whether ``txid`` is known to the node but not mined."""
        info = self._transaction(txid)
        return info is not None and not info.get("blockhash")

    def normalize_address(self, address: str) -> str:
        return normalize_address(address, self.network)

    def script_of(self, address: str) -> bytes:
        """Return the scriptPubKey bytes of a valid address of this network."""
        return bytes(script_of(self.normalize_address(address)).data)

    # -- helpers -------------------------------------------------------------------------------

    def _transaction(self, txid: str) -> dict[str, Any] | None:
        try:
            info = self.backend.getrawtransaction(txid, True)
        except RpcError as exc:
            if exc.rpc_code == RPC_INVALID_ADDRESS_OR_KEY:
                return None
            raise
        return dict(info)

    def _fee(self, tx: Any) -> int:
        total_in = 0
        for vin in tx.vin:
            parent = Transaction.parse(bytes.fromhex(self.backend.getrawtransaction(vin.txid.hex(), False)))
            total_in += parent.vout[vin.vout].value
        return int(total_in - sum(out.value for out in tx.vout))

    @staticmethod
    def _check_asset(asset: str) -> None:
        if asset != ASSET:
            raise ChainError(ChainCode.UNKNOWN_ASSET, f"asset was {asset!r}, bitcoin moves only BTC")
