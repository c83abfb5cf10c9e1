"""Checking and combining signed results on the platform (the import side of custody.bundles).

`check_signed` proves a signed result answers exactly the exported bundle
and carries valid signatures; `combine_bitcoin` merges cosigners' PSBTs and
finalizes. Moved out of the offline signer package: only the platform runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from embit import ec  # type: ignore[import-untyped, unused-ignore]
from embit.finalizer import finalize_psbt  # type: ignore[import-untyped, unused-ignore]
from embit.psbt import PSBT  # type: ignore[import-untyped, unused-ignore]
from eth_account import Account
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from hexbytes import HexBytes

from signer.bundle import BitcoinTransaction, Bundle, EthereumTransaction
from signer.results import SignerCode, SignerError
from signer.signed import SignedBundle
from signer.wire import parse_psbt, transaction_dict

_MISMATCH = SignerCode.SIGNED_MISMATCH


def check_signed(bundle: Bundle, signed: SignedBundle) -> None:
    """Check that `signed` answers exactly `bundle` and carries valid signatures (platform import).

    Raise `SignerError` (7101) otherwise. For Bitcoin every partial
    signature must verify against its input's sighash; for Ethereum the
    signed transaction must have the bundle's fields and recover to its sender.
    """
    if signed.bundle_sha256 != bundle.digest or signed.bundle_id != bundle.body.bundle_id:
        raise SignerError(
            _MISMATCH,
            f"signed result is for bundle {signed.bundle_id} {signed.bundle_sha256[:16]}..., "
            f"not {bundle.body.bundle_id} {bundle.digest[:16]}...",
        )
    tx = bundle.body.transaction
    if isinstance(tx, BitcoinTransaction):
        assert signed.psbt_base64 is not None
        _check_bitcoin_signatures(tx, signed.psbt_base64)
    else:
        assert signed.raw_transaction is not None
        _check_ethereum_signature(tx, signed.raw_transaction)


def _check_bitcoin_signatures(tx: BitcoinTransaction, psbt_base64: str) -> Any:
    unsigned = parse_psbt(tx)
    psbt = parse_psbt(BitcoinTransaction(psbt_base64))
    if psbt.tx.serialize() != unsigned.tx.serialize():
        raise SignerError(_MISMATCH, "signed PSBT spends or pays differently from the bundle's PSBT")
    for i, inp in enumerate(psbt.inputs):
        if not inp.partial_sigs:
            raise SignerError(_MISMATCH, f"input {i} carries no signature")
        digest = psbt.sighash(i)
        for pub, sig in inp.partial_sigs.items():
            ok = sig[-1] == 1 and pub.verify(ec.Signature.parse(sig[:-1]), digest)
            if not ok or pub not in unsigned.inputs[i].bip32_derivations:
                raise SignerError(_MISMATCH, f"input {i}: signature by {pub.sec().hex()} does not verify")
    return psbt


def _check_ethereum_signature(tx: EthereumTransaction, raw: bytes) -> None:
    try:
        decoded = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
        sender = Account.recover_transaction(raw)
    except Exception as exc:  # eth-account raises assorted errors on malformed input.
        raise SignerError(_MISMATCH, f"signed transaction does not decode: {exc}") from exc
    expected = transaction_dict(tx)
    fields = ("chainId", "nonce", "value", "gas", "maxFeePerGas", "maxPriorityFeePerGas")
    differs = [name for name in fields if decoded.get(name) != expected[name]]
    if (
        HexBytes(decoded["to"]) != HexBytes(tx.to)
        or bytes(decoded["data"]) != tx.data
        or decoded["accessList"]
    ):
        differs.append("to/data/accessList")
    if differs or sender != tx.sender:
        raise SignerError(
            _MISMATCH, f"signed transaction differs in {differs} or is from {sender}, not {tx.sender}"
        )


def combine_bitcoin(bundle: Bundle, signed: Sequence[SignedBundle]) -> tuple[str, str]:
    """Merge cosigners' partial signatures and finalize; return (raw transaction hex, txid hex)."""
    tx = bundle.body.transaction
    assert isinstance(tx, BitcoinTransaction), "combine_bitcoin needs a bitcoin bundle"
    combined = PSBT.from_string(tx.psbt_base64)
    for one in signed:
        check_signed(bundle, one)
        assert one.psbt_base64 is not None
        theirs = _check_bitcoin_signatures(tx, one.psbt_base64)
        for mine, other in zip(combined.inputs, theirs.inputs, strict=True):
            mine.partial_sigs.update(other.partial_sigs)
    final = finalize_psbt(combined)
    if final is None:
        raise SignerError(_MISMATCH, f"{len(signed)} signed results do not complete every input's multisig")
    return str(final.serialize().hex()), str(final.txid().hex())
