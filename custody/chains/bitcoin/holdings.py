"""What our Bitcoin addresses held at one height: the node's UTXO set read once, rolled back to it.

A node keeps no balance history (``scantxoutset`` reads the UTXO set at its
tip only), and the tip moves while a reconciliation runs. So the holdings of
every address are read in ONE scan at the tip T, and then rolled back block by
block to the reconciled height H (the deposit watcher's last scanned block,
where the ledger side is read):

    held(H) = unspent at T - outputs to us created in (H, T] + our outputs spent in (H, T]

The blocks H+1..T are read from the node and must link the block the watcher
scanned at H (its hash) to the scan's tip; if the node moved on or reorganised
while they were read, the whole read is repeated (bounded), and a node behind H
or a chain that no longer holds the watcher's block H is an error, never a
number. What a spent output was worth and whose it was comes from our UTXO set
(``btc_utxos``: every output to our addresses up to H) or from an output the
window itself created.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody.chains.adapter import Block, ChainCode, ChainError
from custody.chains.bitcoin.adapter import ASSET, BitcoinAdapter, UnspentSnapshot
from custody.chains.bitcoin.models import BitcoinUtxo
from custody.chains.bitcoin.utxo import utxo_id

# A window longer than this means the watcher is far behind: reconcile after it catches up.
MAX_ROLLBACK_BLOCKS = 144
MAX_READ_ATTEMPTS = 3
LOOKUP_CHUNK = 500


class BitcoinHoldings:
    """Balances of our addresses at one height, from one UTXO-set scan and the blocks since."""

    def __init__(self, sessions: sessionmaker[Session], adapter: BitcoinAdapter) -> None:
        self._sessions = sessions
        self._adapter = adapter

    def balances(
        self, addresses: Sequence[str], height: int, block_hash: str | None
    ) -> dict[tuple[str, str], int]:
        """Return ``{(address, "BTC"): sat}`` held at ``height`` (whose block is ``block_hash``)."""
        for _ in range(MAX_READ_ATTEMPTS):
            snapshot = self._adapter.unspent(addresses)
            if snapshot.height < height:
                raise ChainError(
                    ChainCode.NODE_UNAVAILABLE,
                    f"the node is at height {snapshot.height}, behind the reconciled height {height}",
                )
            if snapshot.height - height > MAX_ROLLBACK_BLOCKS:
                raise ChainError(
                    ChainCode.NODE_UNAVAILABLE,
                    f"the watcher scanned up to {height}, {snapshot.height - height} blocks behind the node "
                    f"(at most {MAX_ROLLBACK_BLOCKS}): reconcile after it catches up",
                )
            window = [self._adapter.block(h) for h in range(height + 1, snapshot.height + 1)]
            if _linked(block_hash, window, snapshot):
                return self._rolled_back(addresses, snapshot, window)
        raise ChainError(
            ChainCode.NODE_UNAVAILABLE,
            f"the chain moved or reorganised under block {height} on every read; reconcile again later",
        )

    def _rolled_back(
        self, addresses: Sequence[str], snapshot: UnspentSnapshot, window: Sequence[Block]
    ) -> dict[tuple[str, str], int]:
        held = dict.fromkeys(addresses, 0)
        for address, value in snapshot.outputs.values():
            held[address] += value
        created: dict[tuple[str, int], tuple[str, int]] = {}
        for block in window:
            for out in block.transfers:
                if out.recipient in held:
                    created[(out.txid, out.index)] = (out.recipient, out.amount_minor)
                    held[out.recipient] -= out.amount_minor
        spent = [(s.prev_txid, s.prev_index) for block in window for s in block.spends]
        for address, value in self._spent_outputs(spent, created).values():
            if address in held:
                held[address] += value
        return {(address, ASSET): value for address, value in held.items()}

    def _spent_outputs(
        self, outpoints: Sequence[tuple[str, int]], created: dict[tuple[str, int], tuple[str, int]]
    ) -> dict[tuple[str, int], tuple[str, int]]:
        """Return owner address and value of every spent outpoint that paid one of our addresses."""
        found = {o: created[o] for o in outpoints if o in created}
        older = [utxo_id(txid, vout) for txid, vout in outpoints if (txid, vout) not in created]
        with self._sessions() as session:
            for start in range(0, len(older), LOOKUP_CHUNK):
                chunk = older[start : start + LOOKUP_CHUNK]
                for row in session.scalars(select(BitcoinUtxo).where(BitcoinUtxo.id.in_(chunk))):
                    found[(row.txid, row.vout)] = (row.address, row.amount_sat)
        return found


def _linked(block_hash: str | None, window: Sequence[Block], snapshot: UnspentSnapshot) -> bool:
    """Return whether ``window`` leads from ``block_hash`` (the watcher's block) to the scanned tip."""
    previous = block_hash
    for block in window:
        if previous is not None and block.parent_hash != previous:
            return False
        previous = block.hash
    return previous is None or previous == snapshot.block_hash
