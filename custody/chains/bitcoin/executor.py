"""The Bitcoin spender: the shared outgoing-transaction pipeline with coins instead of nonces.

:class:`WithdrawalExecutor` (records, ledger reservation and settlement,
broadcast, receipts, reorg handling, the ``execute/get/tick`` contract the
withdrawal dispatcher relies on) is given a :class:`BitcoinSpender` for the
steps that are Bitcoin's:

- queued -> signed: in ONE database transaction, select coins (branch-and-bound,
  largest-first fallback), lock them to the record (compare-and-set), derive a
  change address, sign every P2WPKH input with keys from the sealed seed,
  verify our own signatures and store the raw transaction. A lost lock race
  rolls everything back and selects again. Coins locked to a record before it
  is signed (consolidations) are spent as they are.
- stuck -> replaced (BIP125 RBF): the same inputs and destination output,
  the fee raised by FEE_BUMP_PERCENT (at least the relay increment), paid
  out of the change; never above the fee-rate cap or the per-transaction fee cap.
- a broadcast the node refuses as consensus-invalid fails the record: the
  executor voids the hold and reservation and the spender unlocks the coins.
- a withdrawal that can never be sent (dust, a bad address) is recorded as
  failed with its hold voided (``records_unsendable``).

Fee rates come from the node's ``estimatesmartfee`` and are clamped to
``[floor, cap]`` sat/vB; with no estimate the record waits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from embit.script import Script, p2wpkh  # type: ignore[import-untyped, unused-ignore]
from embit.transaction import (  # type: ignore[import-untyped, unused-ignore]
    Transaction,
    TransactionInput,
    TransactionOutput,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from custody.chains.adapter import ChainCode, ChainError, FeeQuote
from custody.chains.bitcoin import keys
from custody.chains.bitcoin import transaction as btx
from custody.chains.bitcoin.adapter import BitcoinAdapter
from custody.chains.bitcoin.coin_selection import Coin, Shape, select_coins
from custody.chains.bitcoin.models import BitcoinUtxo
from custody.chains.bitcoin.utxo import UtxoSet
from custody.wallets.codes import WalletCode, WalletError
from custody.wallets.models import ChainTransaction, ChainTransactionAttempt, WalletAddress
from custody.wallets.wallet import Temperature, WalletRegistry
from custody.wallets.withdrawal_executor import (
    FEE_BUMP_PERCENT,
    NOTE_MAX_LEN,
    OutgoingTransfer,
    TransactionRecords,
    TransactionView,
    TxStatus,
)

log = logging.getLogger(__name__)

RBF_SEQUENCE = 0xFFFFFFFD
MAX_LOCK_RETRIES = 5
DEFAULT_CONFIRMATIONS = {"BTC": 6}
# Refusals that mean the signed transaction can never be mined: safe to void and unlock.
INVALID_FOREVER = ("mandatory-script-verify-flag-failed", "bad-txns-in-belowout", "bad-txns-vout-toolarge")


@dataclass(frozen=True, slots=True)
class FeePolicy:
    """Fee rate bounds (sat/vB), the node's confirmation target, and an absolute per-transaction cap."""

    floor_sat_vb: int = 1
    cap_sat_vb: int = 200
    conf_target: int = 6
    max_fee_sat: int = 500_000
    min_confirmations: int = 1  # our own coins (change, refills) are spendable after this many

    def __post_init__(self) -> None:
        assert 1 <= self.floor_sat_vb <= self.cap_sat_vb, (self.floor_sat_vb, self.cap_sat_vb)
        assert self.max_fee_sat > 0 and self.min_confirmations >= 1


class _CoinTaken(Exception):
    """A concurrent spend locked one of our selected coins first: roll back and select again."""


class BitcoinSpender:
    """Bitcoin's part of sending: fee rates, coin selection and locking, P2WPKH signing, BIP125."""

    records_unsendable = True  # dust or a bad address: fail the withdrawal at once, hold voided

    def __init__(
        self,
        sessions: sessionmaker[Session],
        wallets: WalletRegistry,
        adapter: BitcoinAdapter,
        utxos: UtxoSet,
        clock: Callable[[], int],
        fees: FeePolicy | None = None,
    ) -> None:
        self._sessions = sessions
        self._wallets = wallets
        self.adapter = adapter
        self.btc = adapter
        self.utxos = utxos
        self._clock = clock
        self.fees = fees or FeePolicy()
        self._records = TransactionRecords(sessions, clock)

    def fee_rate(self) -> int | None:
        """Return the node's estimate clamped to the policy, or None without an estimate."""
        estimate = self.btc.fee_rate_sat_vb(self.fees.conf_target)
        if estimate is None:
            return None
        return min(max(estimate, self.fees.floor_sat_vb), self.fees.cap_sat_vb)

    def check(self, transfer: OutgoingTransfer, destination: str) -> None:
        """Refuse an amount below the dust limit of the destination's script."""
        dust = btx.dust_limit_sat(self.btc.script_of(destination))
        if transfer.amount_minor < dust:
            raise WalletError(
                WalletCode.INVALID_AMOUNT,
                f"amount was {transfer.amount_minor} sat, below the dust limit of {dust} sat"
                f" for {destination}",
            )

    def fee_units(self, asset: str) -> int:
        """Return 0: fees are per vbyte, fixed when the coins are chosen."""
        return 0

    # -- queued -> signed --------------------------------------------------------------------------

    def quote(self, row: ChainTransaction) -> FeeQuote | str:
        """Return the clamped fee rate (sat/vB in both fields), or why the record waits."""
        if self._wallets.get_by_id(row.source_wallet_id).temperature is Temperature.COLD:
            return "waiting for the offline signers"
        rate = self.fee_rate()
        if rate is None:
            return "waiting: the node has no fee estimate"
        return FeeQuote(rate, rate)

    def sign(self, record_id: str, fees: FeeQuote) -> None:
        """Select and lock coins and sign, selecting again if a concurrent spend took a coin."""
        head = self.btc.head_height()
        for _ in range(MAX_LOCK_RETRIES):
            try:
                self._select_and_sign(record_id, fees.max_fee_per_gas, head)
                return
            except _CoinTaken:
                log.info("a coin chosen for %s was taken concurrently; selecting again", record_id)
        self._records.note(record_id, "queued: lost the race for coins repeatedly; will retry")

    def _select_and_sign(self, record_id: str, rate: int, head: int) -> None:
        now = self._clock()
        with self._sessions.begin() as session:
            row = session.scalar(
                select(ChainTransaction).where(ChainTransaction.id == record_id).with_for_update()
            )
            assert row is not None
            if row.status != TxStatus.QUEUED.value:
                return  # signed by a concurrent tick
            destination = self.btc.script_of(row.destination)
            coins = self.utxos.locked_by(session, row.id)
            if coins:  # pre-locked (consolidation): spend exactly these, no change
                fee, change = sum(c.amount_sat for c in coins) - row.amount_minor, 0
            else:
                found = self._choose(session, row, rate, head, destination)
                if found is None:
                    return
                coins, fee, change = found
            change_script = None
            if change:
                change_script = self.btc.script_of(
                    self._wallets.change_address(row.source_wallet_id, session).address
                )
            outputs = [(destination, row.amount_minor)] + ([(change_script, change)] if change_script else [])
            tx = self._signed(session, row.source_wallet_id, coins, outputs)
            self._store_attempt(session, row, tx, rate, fee, attempt=0)
            row.status, row.note, row.updated_ms = TxStatus.SIGNED.value, "", now

    def _choose(
        self, session: Session, row: ChainTransaction, rate: int, head: int, destination: bytes
    ) -> tuple[list[BitcoinUtxo], int, int] | None:
        max_height = head - self.fees.min_confirmations + 1
        candidates = self.utxos.spendable(session, [row.source_wallet_id], max_height)
        shape = Shape(
            rate,
            btx.output_vbytes(destination),
            btx.P2WPKH_OUTPUT_VB,
            btx.P2WPKH_INPUT_VB,
            btx.DUST_P2WPKH_SAT,
        )
        selection = select_coins(
            [Coin(c.id, c.amount_sat, btx.P2WPKH_INPUT_VB) for c in candidates], row.amount_minor, shape
        )
        if selection is None:
            have = sum(c.amount_sat for c in candidates)
            row.note = (
                f"queued: the hot wallet has {have} sat in confirmed free coins, needs "
                f"{row.amount_minor} sat + fee at {rate} sat/vB"
            )[:NOTE_MAX_LEN]
            return None
        if selection.fee_sat > self.fees.max_fee_sat:
            row.note = f"queued: fee {selection.fee_sat} sat is above the cap of {self.fees.max_fee_sat} sat"
            return None
        chosen = [c.id for c in selection.coins]
        if not self.utxos.lock(session, row.id, chosen, self._clock()):
            raise _CoinTaken(row.id)
        by_id = {c.id: c for c in candidates}
        return [by_id[i] for i in sorted(chosen)], selection.fee_sat, selection.change_sat

    def _signed(
        self,
        session: Session,
        wallet_id: int,
        coins: Sequence[BitcoinUtxo],
        outputs: Sequence[tuple[bytes, int]],
    ) -> Any:
        """Build, sign and self-verify a transaction spending ``coins`` (P2WPKH of ``wallet_id``)."""
        paths = dict(
            session.execute(
                select(WalletAddress.address, WalletAddress.path).where(
                    WalletAddress.address.in_([c.address for c in coins])
                )
            )
            .all()
        )
        tx = Transaction(
            vin=[TransactionInput(bytes.fromhex(c.txid), c.vout, sequence=RBF_SEQUENCE) for c in coins],
            vout=[TransactionOutput(value, Script(script)) for script, value in outputs],
        )

        def sign(seed: bytes) -> None:
            for index, coin in enumerate(coins):
                path = paths.get(coin.address)
                assert path is not None, f"no derivation path for {coin.address}"
                key = keys.private_key(seed, path)
                script = bytes(p2wpkh(key.get_public_key()).data)
                assert script == self.btc.script_of(coin.address), f"key at {path} is not {coin.address}"
                btx.sign_p2wpkh(tx, index, coin.amount_sat, key)

        self._wallets.use_seed(wallet_id, sign, session)
        for index, coin in enumerate(coins):
            problem = btx.verify_input(
                tx, index, btx.Prevout(coin.amount_sat, self.btc.script_of(coin.address))
            )
            assert problem is None, problem
        return tx

    def _store_attempt(
        self, session: Session, row: ChainTransaction, tx: Any, rate: int, fee: int, attempt: int
    ) -> None:
        txid = str(tx.txid().hex())
        session.add(
            ChainTransactionAttempt(
                txid=txid,
                transaction_id=row.id,
                nonce=attempt,
                max_fee_per_gas=rate,
                max_priority_fee_per_gas=fee,
                raw=tx.serialize().hex(),
                created_ms=self._clock(),
            )
        )
        row.current_txid = txid

    # -- signed -> broadcast -----------------------------------------------------------------------

    def refusal(self, raw: bytes) -> str | None:
        """Return why the node refuses ``raw`` for good (consensus-invalid), or None."""
        reason = self.btc.test_accept(raw)
        if reason is not None and any(marker in reason for marker in INVALID_FOREVER):
            return f"the node refused the transaction as invalid: {reason}"
        return None

    def release(self, session: Session, record_id: str) -> None:
        """Unlock the coins of a record that will never be mined."""
        self.utxos.release(session, record_id, self._clock())

    # -- stuck -> replaced (RBF) -------------------------------------------------------------------

    def replace(self, row: ChainTransaction, head: int) -> None:
        """Replace by BIP125 (the executor decided the transaction is stuck)."""
        self.bump_fee(row.id, head)

    def bump_fee(self, record_id: str, head: int | None = None) -> TransactionView:
        """Replace a broadcast transaction with one paying more (BIP125), from its change output."""
        head = self.btc.head_height() if head is None else head
        row = self._records.load(record_id)
        if row.status != TxStatus.BROADCAST.value or row.current_txid is None:
            return self._records.get(record_id)
        with self._sessions() as session:
            last = session.get(ChainTransactionAttempt, row.current_txid)
            assert last is not None
            old_rate, old_fee, raw = last.max_fee_per_gas, last.max_priority_fee_per_gas, last.raw
        old = Transaction.parse(bytes.fromhex(raw))
        size = btx.vsize(old)
        estimate = self.fee_rate() or old_rate
        new_rate = min(max(estimate, old_rate * (100 + FEE_BUMP_PERCENT) // 100 + 1), self.fees.cap_sat_vb)
        new_fee = max(new_rate * size, old_fee + size)  # BIP125: pay for the replacement's own relay too
        delta = new_fee - old_fee
        problem = None
        if new_rate <= old_rate or new_fee > self.fees.max_fee_sat:
            problem = f"stuck: fee cap reached ({self.fees.cap_sat_vb} sat/vB, {self.fees.max_fee_sat} sat)"
        elif len(old.vout) < 2 or old.vout[1].value - delta < btx.DUST_P2WPKH_SAT:
            problem = f"stuck: no change output can pay {delta} sat more"
        if problem is not None:
            self._records.set(record_id, note=problem[:NOTE_MAX_LEN], broadcast_height=head)
            return self._records.get(record_id)
        with self._sessions.begin() as session:
            fresh = session.scalar(
                select(ChainTransaction).where(ChainTransaction.id == record_id).with_for_update()
            )
            assert fresh is not None
            if fresh.current_txid != row.current_txid or fresh.status != TxStatus.BROADCAST.value:
                return self._records.get(record_id)
            coins = {(c.txid, c.vout): c for c in self.utxos.locked_by(session, record_id)}
            ordered = [coins[(vin.txid.hex(), vin.vout)] for vin in old.vin]
            outputs = [
                (bytes(old.vout[0].script_pubkey.data), old.vout[0].value),
                (bytes(old.vout[1].script_pubkey.data), old.vout[1].value - delta),
            ]
            tx = self._signed(session, fresh.source_wallet_id, ordered, outputs)
            attempts = (
                session.scalar(
                    select(func.count())
                    .select_from(ChainTransactionAttempt)
                    .where(ChainTransactionAttempt.transaction_id == record_id)
                )
                or 0
            )
            self._store_attempt(session, fresh, tx, new_rate, new_fee, attempt=attempts)
            fresh.broadcast_height, fresh.updated_ms = head, self._clock()
            fresh.note = f"replaced at {new_rate} sat/vB (fee {new_fee} sat)"
            txid = fresh.current_txid
        log.info("replaced stuck %s with %s at %d sat/vB", record_id, txid, new_rate)
        try:
            self.btc.broadcast(self._records.raw(txid))
        except ChainError as exc:
            if exc.code is not ChainCode.BROADCAST_REJECTED:
                raise
            log.info("broadcast of replacement %s refused: %s", txid, exc.message)
        return self._records.get(record_id)
