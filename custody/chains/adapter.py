"""The chain-adapter protocol: what the wallet subsystem needs from any blockchain.

Every amount is an ``int`` in the asset's minor unit. Adapters never see a
private key: signing happens in the wallet layer, which hands the adapter raw
signed bytes to broadcast.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol


class ChainCode(IntEnum):
    """Chain-level refusals (the 445x part of the wallets/chains 44xx block)."""

    INVALID_ADDRESS = 4450
    UNKNOWN_ASSET = 4451
    NODE_UNAVAILABLE = 4452
    BROADCAST_REJECTED = 4453
    BLOCK_NOT_FOUND = 4454

    @property
    def error(self) -> str:
        """Return the stable snake_case name used as the API ``error`` field."""
        return self.name.lower()


class ChainError(Exception):
    """An expected chain failure: a bad address, an unreachable node, a rejected broadcast."""

    def __init__(self, code: ChainCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ObservedTransfer:
    """One value movement inside a block: a native transfer or a token ``Transfer`` log.

    ``index`` is unique within the transaction: -1 for the native value of the
    transaction itself, the log index for token transfers.
    """

    txid: str
    index: int
    asset: str
    sender: str
    recipient: str
    amount_minor: int


@dataclass(frozen=True, slots=True)
class SpentOutput:
    """An input of a UTXO-chain transaction: the earlier output ``prev_txid:prev_index`` it spends."""

    txid: str
    prev_txid: str
    prev_index: int


@dataclass(frozen=True, slots=True)
class Block:
    """A block as the watcher needs it: identity, parent and the transfers it contains.

    On UTXO chains (Bitcoin) every output with an address is a transfer
    (``index`` is the output number, ``sender`` is empty: outputs have no
    sender) and ``spends`` lists the outputs the block's inputs consume.
    """

    height: int
    hash: str
    parent_hash: str
    transfers: tuple[ObservedTransfer, ...]
    spends: tuple[SpentOutput, ...] = ()


@dataclass(frozen=True, slots=True)
class Receipt:
    """The outcome of a mined transaction."""

    txid: str
    success: bool
    block_height: int
    block_hash: str
    fee_paid_minor: int


@dataclass(frozen=True, slots=True)
class FeeQuote:
    """EIP-1559 style fee parameters, in the native asset's minor unit per gas."""

    max_fee_per_gas: int
    max_priority_fee_per_gas: int


class ChainAdapter(Protocol):
    """What a blockchain must provide: heights, blocks, balances, nonces, fees, broadcast, receipts."""

    chain: str
    native_asset: str

    def assets(self) -> tuple[str, ...]:
        """Return the asset codes this adapter can move (native first)."""
        ...

    def head_height(self) -> int:
        """Return the height of the newest block."""
        ...

    def block_hash(self, height: int) -> str | None:
        """Return the hash of the block at ``height`` on the current best chain, or None."""
        ...

    def block(self, height: int) -> Block:
        """Return the block at ``height`` with every native and token transfer in it."""
        ...

    def balance(self, address: str, asset: str, at_height: int | None = None) -> int:
        """Return the balance of ``address`` in ``asset`` at the head (or at block ``at_height``)."""
        ...

    def nonce(self, address: str) -> int:
        """Return the number of transactions ``address`` has had mined (the next nonce)."""
        ...

    def fee_quote(self) -> FeeQuote:
        """Return current fee parameters for a transaction to be mined soon."""
        ...

    def broadcast(self, raw: bytes) -> str:
        """Send a signed transaction; return its id. Re-sending a known transaction is not an error."""
        ...

    def receipt(self, txid: str) -> Receipt | None:
        """Return the receipt of a mined transaction, or None while it is not on the best chain."""
        ...

    def normalize_address(self, address: str) -> str:
        """Return the canonical form of ``address`` or raise ``ChainError(INVALID_ADDRESS)``."""
        ...
