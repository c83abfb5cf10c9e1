"""An in-process regtest chain that validates what it accepts, mines on demand and reorganises.

Validation (mempool acceptance and block connection):
- the transaction decodes with no trailing bytes, has inputs and outputs, no duplicate inputs;
- every input exists and is unspent (confirmed, or an output of a mempool transaction);
- coinbase outputs mature after ``coinbase_maturity`` blocks;
- inputs cover outputs; the fee rate is at least 1 sat/vB; no output is dust;
- every input's witness verifies (BIP143, SIGHASH_ALL): P2WPKH and P2WSH m-of-n multisig;
- a conflicting mempool transaction is replaced only if it signals RBF (BIP125) and the
  replacement pays more in total and for its own relay; otherwise the spend is refused.

The public methods mirror Bitcoin Core's RPC (names, arguments, result shapes, error codes),
so the adapter drives this chain and a real node the same way. Test hooks: :meth:`mine`,
:meth:`invalidate` (drop the tip blocks; their transactions return to the mempool or are
discarded), :meth:`faucet_send` (an external wallet paying an address) and ``fee_rate_sat_vb``.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from embit import ec  # type: ignore[import-untyped, unused-ignore]
from embit.script import Script, p2wpkh  # type: ignore[import-untyped, unused-ignore]
from embit.transaction import (  # type: ignore[import-untyped, unused-ignore]
    Transaction,
    TransactionInput,
    TransactionOutput,
)

from custody.chains.bitcoin import transaction as btx
from custody.chains.bitcoin.backend import (
    RPC_DESERIALIZATION_ERROR,
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_VERIFY_ALREADY_IN_CHAIN,
    RPC_VERIFY_ERROR,
    RPC_VERIFY_REJECTED,
    RpcError,
    sat_to_btc,
)
from custody.chains.bitcoin.network import NETWORKS_BY_NAME, address_of, script_of

SUBSIDY_SAT = 50 * 100_000_000
COINBASE_MATURITY = 100
MIN_RELAY_SAT_VB = 1
MAX_MONEY_SAT = 21_000_000 * 100_000_000
MAX_MEMPOOL = 5_000
FINAL_SEQUENCE_MIN = 0xFFFFFFFE  # sequences below this signal BIP125 replaceability
COINBASE_VOUT = 0xFFFFFFFF
NULL_TXID = bytes(32)
# A script nobody here can spend: default coinbase destination when no address is given.
BURN_SCRIPT = b"\x00\x20" + hashlib.sha256(b"strongroom-regtest-burn").digest()
REGTEST = NETWORKS_BY_NAME["regtest"]


@dataclass(slots=True)
class _Coin:
    value_sat: int
    script: bytes
    height: int  # -1 while only in the mempool
    coinbase: bool


@dataclass(slots=True)
class _Block:
    hash: str
    height: int
    prev: str
    txs: list[Any]


@dataclass(slots=True)
class _MempoolEntry:
    tx: Any
    fee_sat: int
    vsize: int
    spends: list[tuple[str, int]] = field(default_factory=list)


def _outpoints(tx: Any) -> list[tuple[str, int]]:
    return [(vin.txid.hex(), vin.vout) for vin in tx.vin]


def _is_coinbase(tx: Any) -> bool:
    return len(tx.vin) == 1 and tx.vin[0].txid == NULL_TXID and tx.vin[0].vout == COINBASE_VOUT


class RegtestChain:
    """A single-process Bitcoin regtest node (see the module docstring for what it checks)."""

    def __init__(self, coinbase_maturity: int = COINBASE_MATURITY, fee_rate_sat_vb: int | None = 2) -> None:
        self.coinbase_maturity = coinbase_maturity
        self.fee_rate_sat_vb = fee_rate_sat_vb  # None: estimatesmartfee has no estimate
        self._lock = threading.RLock()
        self._nonce = 0
        self._blocks: dict[str, _Block] = {}
        self._best: list[str] = []
        self._utxos: dict[tuple[str, int], _Coin] = {}
        self._mined: dict[str, tuple[Any, str]] = {}  # txid -> (tx, block hash) on the best chain
        self._mempool: dict[str, _MempoolEntry] = {}
        self._faucet_key = ec.PrivateKey(hashlib.sha256(b"strongroom-regtest-faucet").digest())
        self.faucet_script = bytes(p2wpkh(self._faucet_key.get_public_key()).data)
        self._connect(self._make_block([], None))  # genesis

    # -- test hooks ----------------------------------------------------------------------------

    def mine(self, count: int = 1, address: str | None = None, include_mempool: bool = True) -> list[str]:
        """Mine ``count`` blocks with every mempool transaction; coinbase to ``address`` (or the faucet).

        ``include_mempool=False`` mines empty blocks: a transaction that stays stuck.
        """
        script = self.faucet_script if address is None else bytes(script_of(address).data)
        hashes = []
        with self._lock:
            for _ in range(count):
                txs = [entry.tx for entry in self._mempool.values()] if include_mempool else []
                block = self._make_block(txs, script)
                self._connect(block)
                for tx in txs:
                    self._mempool.pop(tx.txid().hex(), None)
                hashes.append(block.hash)
        return hashes

    def invalidate(self, height: int, drop_transactions: bool = False) -> list[str]:
        """Disconnect every block at or above ``height``; return the txids they contained.

        Like ``invalidateblock`` their transactions return to the mempool (when
        still valid), unless ``drop_transactions``: then they vanish, as if
        the competing branch had double-spent them.
        """
        with self._lock:
            assert 1 <= height <= self.height, f"height was {height}, must be 1..{self.height}"
            dropped = [self._blocks[h] for h in self._best[height:]]
            del self._best[height:]
            self._rebuild()
            returned = [tx for block in dropped for tx in block.txs if not _is_coinbase(tx)]
            old_mempool = list(self._mempool.values())
            self._mempool.clear()
            if not drop_transactions:
                for tx in [*returned, *(entry.tx for entry in old_mempool)]:
                    # A spend of a vanished coinbase, or one now conflicting, is dropped.
                    with contextlib.suppress(RpcError):
                        self._accept(tx)
            return [tx.txid().hex() for tx in returned]

    def faucet_send(self, address: str, amount_sat: int, fee_sat: int = 500) -> str:
        """Pay ``amount_sat`` to ``address`` from the faucet (an outside wallet); return the txid."""
        with self._lock:
            spent = {op for entry in self._mempool.values() for op in _outpoints(entry.tx)}
            coins = [
                (op, coin)
                for op, coin in self._utxos.items()
                if coin.script == self.faucet_script and op not in spent and self._mature(coin)
            ]
            assert coins, "the faucet has no mature coins: mine more blocks"
            (txid, vout), coin = max(coins, key=lambda item: (item[1].value_sat, item[0]))
            change = coin.value_sat - amount_sat - fee_sat
            assert change >= btx.DUST_P2WPKH_SAT, f"faucet coin {coin.value_sat} too small for {amount_sat}"
            outputs = [
                TransactionOutput(amount_sat, script_of(address)),
                TransactionOutput(change, Script(self.faucet_script)),
            ]
            tx = Transaction(
                vin=[TransactionInput(bytes.fromhex(txid), vout, sequence=0xFFFFFFFD)], vout=outputs
            )
            btx.sign_p2wpkh(tx, 0, coin.value_sat, self._faucet_key)
            return self.sendrawtransaction(tx.serialize().hex())

    @property
    def height(self) -> int:
        """Return the height of the tip."""
        return len(self._best) - 1

    def mempool_txids(self) -> list[str]:
        """Return the txids waiting in the mempool."""
        with self._lock:
            return list(self._mempool)

    def utxo_balance(self, address: str) -> int:
        """Return the confirmed value held by ``address`` at the tip."""
        script = bytes(script_of(address).data)
        with self._lock:
            return sum(c.value_sat for c in self._utxos.values() if c.script == script)

    # -- RPC methods ---------------------------------------------------------------------------

    def getblockchaininfo(self) -> dict[str, Any]:
        with self._lock:
            return {
                "chain": "regtest",
                "blocks": self.height,
                "headers": self.height,
                "bestblockhash": self._best[-1],
                "initialblockdownload": False,
            }

    def getblockhash(self, height: int) -> str:
        with self._lock:
            if not isinstance(height, int) or not 0 <= height <= self.height:
                raise RpcError(RPC_INVALID_PARAMETER, "Block height out of range")
            return self._best[height]

    def getblockheader(self, blockhash: str, verbose: bool = True) -> dict[str, Any]:
        with self._lock:
            block = self._block(blockhash)
            on_best = block.height <= self.height and self._best[block.height] == block.hash
            return {
                "hash": block.hash,
                "height": block.height,
                "previousblockhash": block.prev,
                "confirmations": self.height - block.height + 1 if on_best else -1,
            }

    def getblock(self, blockhash: str, verbosity: int = 1) -> dict[str, Any]:
        with self._lock:
            block = self._block(blockhash)
            header = self.getblockheader(blockhash)
            if verbosity == 2:
                header["tx"] = [self._decode(tx) for tx in block.txs]
            else:
                header["tx"] = [tx.txid().hex() for tx in block.txs]
            return header

    def getrawtransaction(self, txid: str, verbose: bool = False) -> Any:
        with self._lock:
            if txid in self._mempool:
                tx, blockhash = self._mempool[txid].tx, None
            elif txid in self._mined:
                tx, blockhash = self._mined[txid]
            else:
                raise RpcError(
                    RPC_INVALID_ADDRESS_OR_KEY,
                    "No such mempool or blockchain transaction. Use gettransaction for wallet transactions.",
                )
            if not verbose:
                return tx.serialize().hex()
            decoded = self._decode(tx)
            if blockhash is not None:
                decoded["blockhash"] = blockhash
                decoded["confirmations"] = self.height - self._blocks[blockhash].height + 1
            return decoded

    def testmempoolaccept(self, rawtxs: list[str]) -> list[dict[str, Any]]:
        results = []
        with self._lock:
            for raw in rawtxs:
                try:
                    tx = self._parse(raw)
                    self._check(tx)
                    results.append({"txid": tx.txid().hex(), "allowed": True})
                except RpcError as exc:
                    results.append(
                        {"txid": _txid_or_empty(raw), "allowed": False, "reject-reason": exc.rpc_message}
                    )
        return results

    def sendrawtransaction(self, hexstring: str) -> str:
        with self._lock:
            tx = self._parse(hexstring)
            txid = str(tx.txid().hex())
            if txid in self._mempool:
                return txid
            self._accept(tx)
            return txid

    def estimatesmartfee(self, conf_target: int) -> dict[str, Any]:
        if self.fee_rate_sat_vb is None:
            return {"errors": ["Insufficient data or no feerate found"], "blocks": 0}
        return {"feerate": sat_to_btc(self.fee_rate_sat_vb * 1000), "blocks": max(2, conf_target)}

    def scantxoutset(self, action: str, scanobjects: list[Any]) -> dict[str, Any]:
        if action != "start":
            raise RpcError(RPC_INVALID_PARAMETER, "Invalid action")
        scripts = {}
        for item in scanobjects:
            text = item["desc"] if isinstance(item, dict) else item
            if not (text.startswith("addr(") and text.endswith(")")):
                raise RpcError(RPC_INVALID_PARAMETER, f"unsupported descriptor {text}")
            script = script_of(text[5:-1])
            if script is None:
                raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, f"Invalid address {text[5:-1]}")
            scripts[bytes(script.data)] = text
        with self._lock:
            unspents = [
                {
                    "txid": txid,
                    "vout": vout,
                    "scriptPubKey": coin.script.hex(),
                    "desc": scripts[coin.script],
                    "amount": sat_to_btc(coin.value_sat),
                    "height": coin.height,
                }
                for (txid, vout), coin in sorted(self._utxos.items())
                if coin.script in scripts
            ]
            total = sum((u["amount"] for u in unspents), Decimal(0))
            return {
                "success": True,
                "height": self.height,
                "bestblock": self._best[-1],
                "unspents": unspents,
                "total_amount": total,
            }

    # -- validation ----------------------------------------------------------------------------

    def _accept(self, tx: Any) -> None:
        fee, size, conflicts = self._check(tx)
        if len(self._mempool) >= MAX_MEMPOOL:
            raise RpcError(RPC_VERIFY_REJECTED, "mempool full")
        for txid in conflicts:
            self._mempool.pop(txid, None)
        self._mempool[tx.txid().hex()] = _MempoolEntry(tx, fee, size, _outpoints(tx))

    def _check(self, tx: Any) -> tuple[int, int, list[str]]:
        """Return (fee, vsize, mempool txids it replaces) or raise RpcError with Core's reason."""
        txid = tx.txid().hex()
        if txid in self._mined:
            raise RpcError(RPC_VERIFY_ALREADY_IN_CHAIN, "Transaction already in block chain")
        if not tx.vin or not tx.vout:
            raise RpcError(RPC_VERIFY_REJECTED, "bad-txns-vin-empty" if not tx.vin else "bad-txns-vout-empty")
        if _is_coinbase(tx) or any(vin.txid == NULL_TXID for vin in tx.vin):
            raise RpcError(RPC_VERIFY_REJECTED, "coinbase")
        outpoints = _outpoints(tx)
        if len(set(outpoints)) != len(outpoints):
            raise RpcError(RPC_VERIFY_REJECTED, "bad-txns-inputs-duplicate")
        for vout in tx.vout:
            script = bytes(vout.script_pubkey.data)
            if not 0 <= vout.value <= MAX_MONEY_SAT:
                raise RpcError(RPC_VERIFY_REJECTED, "bad-txns-vout-toolarge")
            if vout.value < btx.dust_limit_sat(script):
                raise RpcError(RPC_VERIFY_REJECTED, "dust")
        conflicts = self._conflicts(outpoints)
        coins = [self._coin(op, conflicts) for op in outpoints]
        total_in = sum(c.value_sat for c in coins)
        total_out = sum(v.value for v in tx.vout)
        if total_in < total_out:
            raise RpcError(RPC_VERIFY_REJECTED, "bad-txns-in-belowout")
        for index, coin in enumerate(coins):
            problem = btx.verify_input(tx, index, btx.Prevout(coin.value_sat, coin.script))
            if problem is not None:
                raise RpcError(RPC_VERIFY_REJECTED, f"mandatory-script-verify-flag-failed ({problem})")
        fee, size = total_in - total_out, btx.vsize(tx)
        if fee < MIN_RELAY_SAT_VB * size:
            raise RpcError(RPC_VERIFY_REJECTED, f"min relay fee not met, {fee} < {MIN_RELAY_SAT_VB * size}")
        replaced = self._replaced(conflicts)
        if replaced:
            old_fee = sum(self._mempool[t].fee_sat for t in replaced)
            if fee < old_fee + MIN_RELAY_SAT_VB * size:
                raise RpcError(RPC_VERIFY_REJECTED, f"insufficient fee, rejecting replacement {txid}")
        return fee, size, replaced

    def _conflicts(self, outpoints: Iterable[tuple[str, int]]) -> set[str]:
        wanted = set(outpoints)
        return {txid for txid, entry in self._mempool.items() if wanted.intersection(entry.spends)}

    def _replaced(self, conflicts: set[str]) -> list[str]:
        """Return the conflicting transactions and their descendants, if all conflicts signal RBF."""
        for txid in conflicts:
            if all(vin.sequence >= FINAL_SEQUENCE_MIN for vin in self._mempool[txid].tx.vin):
                raise RpcError(RPC_VERIFY_REJECTED, "txn-mempool-conflict")
        replaced = set(conflicts)
        grew = True
        while grew:
            grew = False
            for txid, entry in self._mempool.items():
                if txid not in replaced and any(op[0] in replaced for op in entry.spends):
                    replaced.add(txid)
                    grew = True
        return sorted(replaced)

    def _coin(self, outpoint: tuple[str, int], conflicts: set[str]) -> _Coin:
        coin = self._utxos.get(outpoint)
        if coin is None:
            parent = self._mempool.get(outpoint[0])
            if parent is not None and outpoint[0] not in conflicts and outpoint[1] < len(parent.tx.vout):
                out = parent.tx.vout[outpoint[1]]
                coin = _Coin(out.value, bytes(out.script_pubkey.data), -1, False)
        if coin is None:
            raise RpcError(RPC_VERIFY_ERROR, "bad-txns-inputs-missingorspent")
        if coin.coinbase and not self._mature(coin):
            raise RpcError(RPC_VERIFY_REJECTED, "bad-txns-premature-spend-of-coinbase")
        return coin

    def _mature(self, coin: _Coin) -> bool:
        return not coin.coinbase or self.height + 1 - coin.height >= self.coinbase_maturity

    # -- blocks --------------------------------------------------------------------------------

    def _make_block(self, txs: list[Any], coinbase_script: bytes | None) -> _Block:
        height = len(self._best)
        self._nonce += 1
        fees = 0
        if coinbase_script is not None:
            fees = sum(
                self._mempool[tx.txid().hex()].fee_sat for tx in txs if tx.txid().hex() in self._mempool
            )
        tag = height.to_bytes(4, "little") + self._nonce.to_bytes(8, "little")
        coinbase = Transaction(
            vin=[TransactionInput(NULL_TXID, COINBASE_VOUT, script_sig=Script(bytes([len(tag)]) + tag))],
            vout=[TransactionOutput(SUBSIDY_SAT + fees, Script(coinbase_script or BURN_SCRIPT))],
        )
        all_txs = [coinbase, *txs]
        prev = self._best[-1] if self._best else "00" * 32
        header = bytes.fromhex(prev) + tag + b"".join(tx.txid() for tx in all_txs)
        block_hash = hashlib.sha256(hashlib.sha256(header).digest()).digest()[::-1].hex()
        return _Block(block_hash, height, prev, all_txs)

    def _connect(self, block: _Block) -> None:
        """Apply a block to the UTXO set; assert every spend is valid (mempool already checked it)."""
        for tx in block.txs:
            txid = tx.txid().hex()
            if not _is_coinbase(tx):
                for op in _outpoints(tx):
                    assert op in self._utxos, f"block {block.hash} spends missing {op}"
                    del self._utxos[op]
            for n, out in enumerate(tx.vout):
                self._utxos[(txid, n)] = _Coin(
                    out.value, bytes(out.script_pubkey.data), block.height, _is_coinbase(tx)
                )
            self._mined[txid] = (tx, block.hash)
        self._blocks[block.hash] = block
        self._best.append(block.hash)

    def _rebuild(self) -> None:
        best = list(self._best)
        self._best, self._utxos, self._mined = [], {}, {}
        for block_hash in best:
            self._connect(self._blocks[block_hash])

    def _block(self, blockhash: str) -> _Block:
        block = self._blocks.get(blockhash)
        if block is None:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Block not found")
        return block

    # -- encoding ------------------------------------------------------------------------------

    @staticmethod
    def _parse(raw: str) -> Any:
        try:
            data = bytes.fromhex(raw)
            tx = Transaction.parse(data)
            if tx.serialize() != data:
                raise ValueError("trailing bytes")
        except Exception:  # embit raises assorted errors on garbage
            raise RpcError(RPC_DESERIALIZATION_ERROR, "TX decode failed") from None
        return tx

    def _decode(self, tx: Any) -> dict[str, Any]:
        vin: list[dict[str, Any]] = []
        for item in tx.vin:
            if _is_coinbase(tx):
                vin.append({"coinbase": item.script_sig.data.hex(), "sequence": item.sequence})
            else:
                vin.append({"txid": item.txid.hex(), "vout": item.vout, "sequence": item.sequence})
        vout = []
        for n, out in enumerate(tx.vout):
            spk: dict[str, Any] = {"hex": out.script_pubkey.data.hex()}
            address = address_of(out.script_pubkey, REGTEST)
            if address is not None:
                spk["address"] = address
            vout.append({"value": sat_to_btc(out.value), "n": n, "scriptPubKey": spk})
        return {
            "txid": tx.txid().hex(),
            "hash": tx.txid().hex(),
            "hex": tx.serialize().hex(),
            "vsize": btx.vsize(tx),
            "vin": vin,
            "vout": vout,
        }


def _txid_or_empty(raw: str) -> str:
    try:
        return str(Transaction.parse(bytes.fromhex(raw)).txid().hex())
    except Exception:  # undecodable: Core reports the txid it could not compute as empty
        return ""
