"""The chain registry of cold transfers: how each chain builds an unsigned bundle and finishes a signed one.

The service (custody.bundles.service) is chain-neutral: it locks the
request, counts the approvals, reserves the ledger funds, signs and stores
the bundle, imports signatures, broadcasts and settles. What differs per
chain is behind :class:`BundleChain`:

- ``unsigned(request, pending, replacing)``: the unsigned transaction and the
  fee cap for a request. ``pending`` are the source wallet's other bundles
  not yet on chain (an Ethereum nonce or a Bitcoin UTXO they use is taken);
  ``replacing`` is the expired bundle this one replaces for the same request
  (reuse its nonce / inputs, so at most one of the two can ever be mined).
- ``finish(bundle, signed)``: check every signed result against the bundle and
  return the raw transaction to broadcast, or None while more cosigners are
  needed (Bitcoin 2-of-3).
- ``adapter``: broadcast, receipts and heights (``custody.chains.adapter.ChainAdapter``).

Register implementations in a :class:`BundleChains`; Ethereum lives in
custody.bundles.ethereum.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from custody.bundles.codes import BundleCode, BundleError
from custody.chains.adapter import ChainAdapter
from policies.approval import Approval, SubjectKind, TransferTerms
from signer.bundle import Bundle, Chain, PolicyRef, Transaction
from signer.signed import SignedBundle


@dataclass(frozen=True, slots=True)
class ColdRequest:
    """A withdrawal or refill to pay from a cold wallet, with the approvals that count for it."""

    kind: SubjectKind
    request_id: str
    initiator_id: str
    policy: PolicyRef
    source_wallet: str
    source_address: str
    asset: str
    amount_minor: int
    destination: str
    approvals: tuple[Approval, ...]
    terms: TransferTerms


@dataclass(frozen=True, slots=True)
class Unsigned:
    """What a chain builds for a request: the unsigned transaction and the most it may pay in fees."""

    transaction: Transaction
    fee_cap_minor: int


@dataclass(frozen=True, slots=True)
class Finished:
    """A fully signed transaction, ready to broadcast."""

    raw: bytes
    txid: str


class BundleChain(Protocol):
    """One chain's part of the cold-transfer flow."""

    @property
    def chain(self) -> Chain:
        """Return which chain this is."""
        ...

    @property
    def network(self) -> str:
        """Return the network name the signer's anchors use for this chain's wallets."""
        ...

    @property
    def adapter(self) -> ChainAdapter:
        """Return the node adapter: broadcast, receipts, heights."""
        ...

    def confirmations(self, asset: str) -> int:
        """Return how many confirmations settle a transfer of ``asset``."""
        ...

    def fee_cap_minor(self, asset: str) -> int:
        """Return the most a cold transfer of ``asset`` may pay in fees (native minor units).

        A constant per asset: approvers bind it in their approval (they see it
        before the transaction exists), and the bundle's intent carries it.
        """
        ...

    def unsigned(self, request: ColdRequest, pending: Sequence[Bundle], replacing: Bundle | None) -> Unsigned:
        """Build the unsigned transaction for ``request`` (may read the chain)."""
        ...

    def anchor_wallet(self, wallet_id: int, name: str, address: str) -> dict[str, object]:
        """Return the cold wallet's entry for the signer's anchors.json ``wallets`` list."""
        ...

    def finish(self, bundle: Bundle, signed: Sequence[SignedBundle]) -> Finished | None:
        """Check ``signed`` against ``bundle`` (raise ``SignerError``); return the raw tx or None if short."""
        ...


class BundleChains:
    """The configured chains, by name and by asset."""

    def __init__(self, chains: Iterable[BundleChain]) -> None:
        self._chains: dict[str, BundleChain] = {}
        for chain in chains:
            assert chain.chain.value not in self._chains, f"chain {chain.chain} registered twice"
            self._chains[chain.chain.value] = chain

    def get(self, chain: str) -> BundleChain:
        """Return the chain called ``chain`` or refuse with chain_not_configured."""
        found = self._chains.get(chain)
        if found is None:
            raise BundleError(
                BundleCode.CHAIN_NOT_CONFIGURED,
                f"no {chain} node is configured for cold transfers (configured: {', '.join(self._chains)})",
            )
        return found

    def for_asset(self, asset: str) -> BundleChain:
        """Return the chain that moves ``asset``."""
        for chain in self._chains.values():
            if asset in chain.adapter.assets():
                return chain
        raise BundleError(
            BundleCode.CHAIN_NOT_CONFIGURED, f"no configured chain moves {asset[:16]!r} for cold transfers"
        )

    def names(self) -> Mapping[str, BundleChain]:
        return dict(self._chains)
