"""Bitcoin cold transfers: PSBT spends from the 2-of-3 P2WSH cold wallet, finished by two cosigners.

The unsigned transaction is the PSBT of :meth:`ColdWallet.prepare_spend`,
which selects and locks the cold coins to the request (``cold:<kind>:<id>``)
and is idempotent by that id: an expired bundle's replacement carries the
same PSBT, the same inputs, so at most one of the two can ever be mined.
The fee is fixed when the PSBT is built, at the node's estimate clamped to
``[floor, cap]`` sat/vB; the intent's fee cap is the constant ``fee_cap_sat``.

Each signed result is checked on import (its partial signatures verify
against the bundle's PSBT). Once two distinct cosigners have signed, their
signatures are combined and finalised, and the final transaction itself is
checked against the prepared spend (``custody.chains.bitcoin.bundle.check_final``:
exactly the locked inputs, the approved output and amount, change to our
recorded change address, exactly the prepared fee, every witness valid) and
against the node's ``testmempoolaccept`` before the service broadcasts it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from custody.bundles.chains import ColdRequest, Finished, Unsigned
from custody.bundles.codes import BundleCode, BundleError
from custody.bundles.signed import check_signed, combine_bitcoin
from custody.chains.bitcoin.adapter import BitcoinAdapter
from custody.chains.bitcoin.bundle import check_final
from custody.chains.bitcoin.cold import REQUIRED_SIGNATURES, ColdWallet
from custody.wallets.codes import WalletCode, WalletError
from signer.bundle import SEQUENCE_RBF, BitcoinTransaction, Bundle, Chain
from signer.results import SignerCode, SignerError
from signer.signed import SignedBundle

DEFAULT_CONFIRMATIONS = 6
# The signer's default change window (signer.anchors.DEFAULT_CHANGE_INDEX_MAX), suggested for anchors.
DEFAULT_CHANGE_INDEX_MAX = 10_000
DEFAULT_FEE_CAP_SAT = 50_000
DEFAULT_FEE_FLOOR_SAT_VB = 1
DEFAULT_FEE_RATE_CAP_SAT_VB = 200
# How a refused cold spend reads as an export refusal (anything else: the request cannot be paid as is).
_PREPARE_REFUSALS = {
    WalletCode.INSUFFICIENT_COINS: BundleCode.COLD_BALANCE_SHORT,
    WalletCode.TRANSACTION_CONFLICT: BundleCode.REQUEST_NOT_READY,
}


def spend_id(kind: str, request_id: str) -> str:
    """Return the cold spend (and coin lock) id of a request: ``cold:<kind>:<request id>``."""
    return f"cold:{kind}:{request_id}"


class BitcoinBundles:
    """The Bitcoin part of cold transfers (a :class:`custody.bundles.chains.BundleChain`)."""

    chain = Chain.BITCOIN

    def __init__(
        self,
        cold: ColdWallet,
        confirmations: Mapping[str, int],
        fee_cap_sat: int = DEFAULT_FEE_CAP_SAT,
        fee_floor_sat_vb: int = DEFAULT_FEE_FLOOR_SAT_VB,
        fee_rate_cap_sat_vb: int = DEFAULT_FEE_RATE_CAP_SAT_VB,
    ) -> None:
        assert fee_cap_sat > 0, f"fee_cap_sat was {fee_cap_sat}"
        assert 1 <= fee_floor_sat_vb <= fee_rate_cap_sat_vb, (fee_floor_sat_vb, fee_rate_cap_sat_vb)
        self._cold = cold
        self._adapter: BitcoinAdapter = cold.adapter
        self.network = cold.network_name
        self._confirmations = dict(confirmations)
        self._fee_cap_sat = fee_cap_sat
        self._floor = fee_floor_sat_vb
        self._rate_cap = fee_rate_cap_sat_vb

    @property
    def adapter(self) -> BitcoinAdapter:
        return self._adapter

    def confirmations(self, asset: str) -> int:
        return self._confirmations.get(asset, DEFAULT_CONFIRMATIONS)

    def fee_cap_minor(self, asset: str) -> int:
        return self._fee_cap_sat

    def anchor_wallet(self, wallet_id: int, name: str, address: str) -> dict[str, object]:
        return {
            "name": name,
            "chain": self.chain.value,
            "network": self.network,
            "descriptor": self._cold.descriptor(wallet_id),
            "change_index_max": DEFAULT_CHANGE_INDEX_MAX,
            "min_approvals": REQUIRED_SIGNATURES,
        }

    def unsigned(self, request: ColdRequest, pending: Sequence[Bundle], replacing: Bundle | None) -> Unsigned:
        """Prepare (or find again) the PSBT paying ``request`` from the cold multisig.

        Coins of ``pending`` bundles are locked to their requests, so they are
        never selected again; ``replacing`` needs nothing: the spend for the
        same request is found by its id, with the same inputs.
        """
        estimate = self._adapter.fee_rate_sat_vb()
        if estimate is None:
            raise BundleError(BundleCode.REQUEST_NOT_READY, "the bitcoin node has no fee estimate yet")
        rate = min(max(estimate, self._floor), self._rate_cap)
        spend = spend_id(request.kind.name.lower(), request.request_id)
        try:
            prepared = self._cold.prepare_spend(
                spend, spend, request.destination, request.amount_minor, rate, self._fee_cap_sat
            )
        except WalletError as exc:
            raise BundleError(
                _PREPARE_REFUSALS.get(exc.code, BundleCode.REQUEST_MISMATCH), exc.message
            ) from None
        if (prepared.destination, prepared.amount_sat) != (request.destination, request.amount_minor):
            raise BundleError(
                BundleCode.REQUEST_MISMATCH,
                f"cold spend {spend} pays {prepared.amount_sat} sat to {prepared.destination}, "
                f"the request {request.amount_minor} sat to {request.destination}",
            )
        return Unsigned(BitcoinTransaction(prepared.psbt, 0, SEQUENCE_RBF), self._fee_cap_sat)

    def finish(self, bundle: Bundle, signed: Sequence[SignedBundle]) -> Finished | None:
        """Check each cosigner's result; with two, combine, finalise, check and return the transaction."""
        for one in signed:
            check_signed(bundle, one)
        if len({one.signer_id for one in signed}) < REQUIRED_SIGNATURES:
            return None
        raw_hex, txid = combine_bitcoin(bundle, signed)
        raw = bytes.fromhex(raw_hex)
        request = bundle.body.request
        spend = self._cold.get(spend_id(request.kind.name.lower(), request.request_id))
        problems = check_final(
            self._cold,
            spend.record_id,
            raw,
            spend.destination,
            spend.amount_sat,
            spend.fee_sat,
            spend.change_address,
        )
        reason = self._adapter.test_accept(raw)
        if reason is not None:
            problems.append(f"the node would refuse it: {reason}")
        if problems:
            raise SignerError(SignerCode.SIGNED_MISMATCH, "; ".join(problems))
        return Finished(raw, txid)
