"""The Ethereum spender: the account-model steps of the shared outgoing-transaction pipeline.

:class:`custody.wallets.withdrawal_executor.WithdrawalExecutor` keeps records,
the ledger reservation and settlement, broadcast, receipts and reorgs; it is
given an :class:`EthereumSpender` for what is Ethereum's:

- fees: the node's EIP-1559 quote, clamped to the fee cap (a base fee above the
  cap makes the record wait rather than overpay); a record also waits while its
  source address holds too little of the asset or of ETH for gas;
- queued -> signed: one nonce per record, assigned once from the larger of the
  node's count and our per-address counter (``chain_nonces``), in the same
  database transaction that stores the signed version;
- stuck -> replaced: the *same* nonce re-signed with both fees raised by
  FEE_BUMP_PERCENT (at least the nodes' 10%), never above the cap, so at most
  one version can be mined.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from custody.chains.adapter import ChainError, FeeQuote
from custody.chains.ethereum.adapter import EthereumAdapter
from custody.chains.ethereum.keys import sign_transaction
from custody.chains.ethereum.token import NATIVE_TRANSFER_GAS, TOKEN_TRANSFER_GAS, transfer_calldata
from custody.wallets.models import ChainNonce, ChainTransaction, ChainTransactionAttempt
from custody.wallets.wallet import WalletRegistry
from custody.wallets.withdrawal_executor import (
    DEFAULT_FEE_CAP_WEI,
    FEE_BUMP_PERCENT,
    OutgoingTransfer,
    TransactionRecords,
    TxStatus,
)

log = logging.getLogger(__name__)


class EthereumSpender:
    """Ethereum's part of sending: fee quote and cap, nonces, EIP-1559 signing, same-nonce replacement."""

    records_unsendable = False  # a bad withdrawal is refused to the dispatcher, which voids its hold

    def __init__(
        self,
        sessions: sessionmaker[Session],
        wallets: WalletRegistry,
        adapter: EthereumAdapter,
        clock: Callable[[], int],
        fee_cap_wei: int = DEFAULT_FEE_CAP_WEI,
    ) -> None:
        self._sessions = sessions
        self._wallets = wallets
        self.adapter = adapter
        self._chain = adapter.chain
        self._clock = clock
        self.fee_cap_wei = fee_cap_wei
        self._records = TransactionRecords(sessions, clock)
        self._chain_id: int | None = None

    def check(self, transfer: OutgoingTransfer, destination: str) -> None:
        """Accept every valid address and amount: gas is paid on top, there is no dust limit."""

    def fee_units(self, asset: str) -> int:
        """Return the gas limit of a transfer of ``asset`` (native or ERC-20)."""
        return NATIVE_TRANSFER_GAS if asset == self.adapter.native_asset else TOKEN_TRANSFER_GAS

    def quote(self, row: ChainTransaction) -> FeeQuote | str:
        """Return the node's fees clamped to the cap, or why the record waits."""
        fees = self.adapter.fee_quote()
        if fees.max_fee_per_gas > self.fee_cap_wei:
            base_fee = (fees.max_fee_per_gas - fees.max_priority_fee_per_gas) // 2
            if base_fee >= self.fee_cap_wei:
                return f"waiting: base fee {base_fee} is above the cap of {self.fee_cap_wei} wei/gas"
            cap = self.fee_cap_wei
            fees = FeeQuote(cap, min(fees.max_priority_fee_per_gas, cap - base_fee))
        return self._on_chain_shortfall(row, fees) or fees

    def _on_chain_shortfall(self, row: ChainTransaction, fees: FeeQuote) -> str | None:
        native = self.adapter.native_asset
        gas_wei = row.gas_limit * fees.max_fee_per_gas
        need_native = gas_wei + (row.amount_minor if row.asset == native else 0)
        have_native = self.adapter.balance(row.source_address, native)
        if have_native < need_native:
            return f"queued: {row.source_address} holds {have_native} wei, needs {need_native} (amount + gas)"
        if row.asset != native:
            have = self.adapter.balance(row.source_address, row.asset)
            if have < row.amount_minor:
                return f"queued: {row.source_address} holds {have} {row.asset}, needs {row.amount_minor}"
        return None

    def sign(self, record_id: str, fees: FeeQuote) -> None:
        """Assign the record's nonce (once) and store its first signed version."""
        chain_nonce = None
        for _ in range(2):  # a concurrent first use of the address may insert the nonce row first
            try:
                with self._sessions.begin() as session:
                    row = session.scalar(
                        select(ChainTransaction).where(ChainTransaction.id == record_id).with_for_update()
                    )
                    assert row is not None
                    if row.status != TxStatus.QUEUED.value:
                        return  # someone else signed it
                    if chain_nonce is None:
                        chain_nonce = self.adapter.nonce(row.source_address)
                    counter = session.scalar(
                        select(ChainNonce)
                        .where(ChainNonce.chain == self._chain, ChainNonce.address == row.source_address)
                        .with_for_update()
                    )
                    if counter is None:
                        counter = ChainNonce(chain=self._chain, address=row.source_address, next_nonce=0)
                        session.add(counter)
                    nonce = max(counter.next_nonce, chain_nonce)
                    counter.next_nonce = nonce + 1
                    signed = self._sign_version(session, row, nonce, fees)
                    row.nonce, row.current_txid = nonce, signed
                    row.status, row.note, row.updated_ms = TxStatus.SIGNED.value, "", self._clock()
                return
            except IntegrityError:
                continue
        raise RuntimeError(f"could not allocate a nonce for {record_id}")

    def _sign_version(self, session: Session, row: ChainTransaction, nonce: int, fees: FeeQuote) -> str:
        assert row.nonce in (None, nonce), "a record's nonce never changes"
        tx = self._tx_fields(row, nonce, fees)
        signed = sign_transaction(self._wallets, row.source_wallet_id, row.source_path, tx, session)
        session.add(
            ChainTransactionAttempt(
                txid=signed.txid,
                transaction_id=row.id,
                nonce=nonce,
                max_fee_per_gas=fees.max_fee_per_gas,
                max_priority_fee_per_gas=fees.max_priority_fee_per_gas,
                raw=signed.raw.hex(),
                created_ms=self._clock(),
            )
        )
        return signed.txid

    def _tx_fields(self, row: ChainTransaction, nonce: int, fees: FeeQuote) -> dict[str, Any]:
        if self._chain_id is None:
            self._chain_id = self.adapter.chain_id()
        tx: dict[str, Any] = {
            "type": 2,
            "chainId": self._chain_id,
            "nonce": nonce,
            "gas": row.gas_limit,
            "maxFeePerGas": fees.max_fee_per_gas,
            "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
        }
        if row.asset == self.adapter.native_asset:
            tx.update(to=row.destination, value=row.amount_minor, data=b"")
        else:
            tx.update(
                to=self.adapter.token_address(row.asset),
                value=0,
                data=transfer_calldata(row.destination, row.amount_minor),
            )
        return tx

    def refusal(self, raw: bytes) -> str | None:
        """Return None: a node's refusal of a signed transaction is retried, never final here."""
        return None

    def replace(self, row: ChainTransaction, head: int) -> None:
        """Re-sign the same nonce with fees raised by FEE_BUMP_PERCENT (capped), and send it."""
        assert row.current_txid is not None and row.nonce is not None
        with self._sessions() as session:
            last = session.get(ChainTransactionAttempt, row.current_txid)
            assert last is not None
            old_max, old_tip = last.max_fee_per_gas, last.max_priority_fee_per_gas
        quote = self.adapter.fee_quote()
        bump = 100 + FEE_BUMP_PERCENT
        new_max = min(max(quote.max_fee_per_gas, old_max * bump // 100 + 1), self.fee_cap_wei)
        new_tip = min(max(quote.max_priority_fee_per_gas, old_tip * bump // 100 + 1), new_max)
        if new_max * 100 < old_max * 110 or new_tip * 100 < old_tip * 110:
            self._records.note(row.id, f"stuck: fee cap of {self.fee_cap_wei} wei/gas reached, not replacing")
            self._records.set(row.id, broadcast_height=head)
            return
        with self._sessions.begin() as session:
            fresh = session.scalar(
                select(ChainTransaction).where(ChainTransaction.id == row.id).with_for_update()
            )
            assert fresh is not None
            if fresh.current_txid != row.current_txid or fresh.status != TxStatus.BROADCAST.value:
                return
            txid = self._sign_version(session, fresh, row.nonce, FeeQuote(new_max, new_tip))
            fresh.current_txid, fresh.broadcast_height = txid, head
            fresh.note, fresh.updated_ms = f"replaced with max fee {new_max} wei/gas", self._clock()
        log.info("replaced stuck transaction %s (nonce %d) with %s", row.id, row.nonce, txid)
        try:
            self.adapter.broadcast(self._records.raw(txid))
        except ChainError as exc:
            log.info("broadcast of replacement %s refused: %s", txid, exc.message)

    def release(self, session: Session, record_id: str) -> None:
        """Release nothing: a nonce is never handed back (a later record would reuse it)."""
