"""The UTXO set of our wallets: kept by following the deposit watcher's blocks, locked by spends.

:class:`UtxoSet` is the watcher's :class:`BlockObserver` for Bitcoin: every
output paying one of our addresses becomes a row, every input spending one
marks it spent, and a reorg puts both back, all in the watcher's own
database transaction.

Locking is a compare-and-set in the database
(``UPDATE ... SET status='locked', locked_by=:record WHERE id=:id AND status='unspent'``):
on PostgreSQL the second of two concurrent updates of a row waits for the
first and then finds the condition false; on SQLite writers are serialised
by ``BEGIN IMMEDIATE``. A spend that loses any coin rolls back and selects
again, so two withdrawals can never pick the same coin.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from custody.chains.adapter import Block
from custody.chains.bitcoin.models import BitcoinUtxo, UtxoStatus
from custody.wallets.models import WalletAddress

MAX_CANDIDATES = 500


def utxo_id(txid: str, vout: int) -> str:
    """Return the id of an outpoint: ``<txid>:<vout>``."""
    return f"{txid}:{vout}"


class UtxoSet:
    """Our coins on one UTXO chain."""

    def __init__(self, chain: str) -> None:
        self.chain = chain

    # -- the BlockObserver side ------------------------------------------------------------------

    def on_block(self, session: Session, block: Block, now_ms: int) -> None:
        """Add outputs paying our addresses, then mark outputs of ours spent by the block's inputs."""
        recipients = {t.recipient for t in block.transfers}
        ours = (
            {
                row.address: row
                for row in session.scalars(
                    select(WalletAddress).where(
                        WalletAddress.chain == self.chain, WalletAddress.address.in_(sorted(recipients))
                    )
                )
            }
            if recipients
            else {}
        )
        for transfer in block.transfers:
            address = ours.get(transfer.recipient)
            if address is None:
                continue
            coin_id = utxo_id(transfer.txid, transfer.index)
            row = session.get(BitcoinUtxo, coin_id)
            if row is None:
                session.add(
                    BitcoinUtxo(
                        id=coin_id,
                        chain=self.chain,
                        wallet_id=address.wallet_id,
                        address=address.address,
                        txid=transfer.txid,
                        vout=transfer.index,
                        amount_sat=transfer.amount_minor,
                        block_height=block.height,
                        block_hash=block.hash,
                        status=UtxoStatus.UNSPENT,
                        locked_by=None,
                        spent_txid=None,
                        spent_height=None,
                        updated_ms=now_ms,
                    )
                )
            else:
                assert row.amount_sat == transfer.amount_minor, f"{coin_id} changed value"
                row.block_height, row.block_hash, row.updated_ms = block.height, block.hash, now_ms
                if row.status == UtxoStatus.ORPHANED:
                    row.status = UtxoStatus.LOCKED if row.locked_by else UtxoStatus.UNSPENT
        session.flush()
        for spend in block.spends:
            row = session.get(BitcoinUtxo, utxo_id(spend.prev_txid, spend.prev_index))
            if row is not None:
                row.status, row.spent_txid, row.spent_height = UtxoStatus.SPENT, spend.txid, block.height
                row.updated_ms = now_ms

    def on_reorg(self, session: Session, fork_height: int, now_ms: int) -> None:
        """Un-spend coins spent above ``fork_height``; orphan coins created above it."""
        for row in session.scalars(
            select(BitcoinUtxo).where(BitcoinUtxo.chain == self.chain, BitcoinUtxo.spent_height > fork_height)
        ):
            row.status = UtxoStatus.LOCKED if row.locked_by else UtxoStatus.UNSPENT
            row.spent_txid = row.spent_height = None
            row.updated_ms = now_ms
        for row in session.scalars(
            select(BitcoinUtxo).where(BitcoinUtxo.chain == self.chain, BitcoinUtxo.block_height > fork_height)
        ):
            row.status, row.updated_ms = UtxoStatus.ORPHANED, now_ms

    # -- selection and locking ---------------------------------------------------------------------

    def spendable(self, session: Session, wallet_ids: Sequence[int], max_height: int) -> list[BitcoinUtxo]:
        """Return unlocked coins of ``wallet_ids`` mined at or below ``max_height``, largest first."""
        return list(
            session.scalars(
                select(BitcoinUtxo)
                .where(
                    BitcoinUtxo.chain == self.chain,
                    BitcoinUtxo.wallet_id.in_(list(wallet_ids)),
                    BitcoinUtxo.status == UtxoStatus.UNSPENT,
                    BitcoinUtxo.block_height <= max_height,
                )
                .order_by(BitcoinUtxo.amount_sat.desc(), BitcoinUtxo.id)
                .limit(MAX_CANDIDATES)
            )
        )

    @staticmethod
    def lock(session: Session, record_id: str, coin_ids: Sequence[str], now_ms: int) -> bool:
        """Lock every coin to ``record_id``; return False (caller rolls back) if any was taken."""
        for coin_id in coin_ids:
            result = session.execute(
                update(BitcoinUtxo)
                .where(BitcoinUtxo.id == coin_id, BitcoinUtxo.status == UtxoStatus.UNSPENT)
                .values(status=UtxoStatus.LOCKED, locked_by=record_id, updated_ms=now_ms)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return False
        return True

    @staticmethod
    def locked_by(session: Session, record_id: str) -> list[BitcoinUtxo]:
        """Return the coins a record holds (locked, or already spent by it), in input order."""
        return list(
            session.scalars(
                select(BitcoinUtxo).where(BitcoinUtxo.locked_by == record_id).order_by(BitcoinUtxo.id)
            )
        )

    @staticmethod
    def release(session: Session, record_id: str, now_ms: int) -> int:
        """Unlock the still-unspent coins of a record that will never be mined; return how many."""
        result = session.execute(
            update(BitcoinUtxo)
            .where(BitcoinUtxo.locked_by == record_id, BitcoinUtxo.status == UtxoStatus.LOCKED)
            .values(status=UtxoStatus.UNSPENT, locked_by=None, updated_ms=now_ms)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    @staticmethod
    def holdings(session: Session, chain: str) -> dict[int, int]:
        """Return the confirmed unspent value (locked included) per wallet id."""
        totals: dict[int, int] = {}
        for row in session.scalars(
            select(BitcoinUtxo).where(
                BitcoinUtxo.chain == chain, BitcoinUtxo.status.in_([UtxoStatus.UNSPENT, UtxoStatus.LOCKED])
            )
        ):
            totals[row.wallet_id] = totals.get(row.wallet_id, 0) + row.amount_sat
        return totals
