"""The signed result: what the signer writes and the platform imports.

A canonical JSON document naming the bundle it answers (id and SHA-256)
and carrying the signature in the chain's own form: a PSBT with our
partial signatures for Bitcoin, a raw signed transaction for Ethereum. The
platform checks it against the bundle it exported (`check_signed`) and,
for Bitcoin, combines the PSBTs of enough cosigners (`combine_bitcoin`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from embit import ec  # type: ignore[import-untyped, unused-ignore]
from embit.finalizer import finalize_psbt  # type: ignore[import-untyped, unused-ignore]
from embit.psbt import PSBT  # type: ignore[import-untyped, unused-ignore]
from eth_account import Account
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from hexbytes import HexBytes

from signer.bitcoin import parse_psbt
from signer.bundle import BitcoinTransaction, Bundle, Chain, EthereumTransaction, check_version
from signer.canonical import canonical_bytes, parse_strict
from signer.ethereum import transaction_dict
from signer.fields import Fields
from signer.results import SignerCode, SignerError

SIGNED_FORMAT = "strongroom-signer-signed"
SIGNED_VERSION = 1
MAX_RAW_TX_BYTES = 65_536
_MISMATCH = SignerCode.SIGNED_MISMATCH


@dataclass(frozen=True, slots=True)
class SignedBundle:
    """One signer's signature for one bundle.

    `signer_id` is the BIP32 master fingerprint (hex) for Bitcoin and the
    signing address for Ethereum. `psbt_base64` is set for Bitcoin,
    `raw_transaction` (and `tx_hash`) for Ethereum.
    """

    bundle_id: str
    bundle_sha256: str
    chain: Chain
    network: str
    signer_id: str
    signed_at_ms: int
    psbt_base64: str | None = None
    raw_transaction: bytes | None = None
    tx_hash: str | None = None

    def __post_init__(self) -> None:
        is_bitcoin = self.chain is Chain.BITCOIN
        if is_bitcoin != (self.psbt_base64 is not None) or is_bitcoin == (self.raw_transaction is not None):
            raise SignerError(
                SignerCode.SIGNED_MALFORMED, f"a {self.chain} signature must carry its own result"
            )

    def to_json(self) -> dict[str, object]:
        result: dict[str, object]
        if self.psbt_base64 is not None:
            result = {"type": "bitcoin_psbt", "psbt": self.psbt_base64}
        else:
            assert self.raw_transaction is not None and self.tx_hash is not None
            result = {
                "type": "ethereum_raw",
                "raw_transaction": self.raw_transaction.hex(),
                "tx_hash": self.tx_hash,
            }
        return {
            "format": SIGNED_FORMAT,
            "version": SIGNED_VERSION,
            "bundle_id": self.bundle_id,
            "bundle_sha256": self.bundle_sha256,
            "chain": self.chain.value,
            "network": self.network,
            "signer_id": self.signer_id,
            "signed_at_ms": self.signed_at_ms,
            "result": result,
        }

    def to_bytes(self) -> bytes:
        return canonical_bytes(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedBundle:
        """Parse a signed result with the same strictness as a bundle."""
        document = parse_strict(data, "signed bundle")
        check_version(document, SIGNED_FORMAT, SIGNED_VERSION, "signed bundle")
        if canonical_bytes(document) != data:
            raise SignerError(SignerCode.BUNDLE_NOT_CANONICAL, "signed bundle is not in canonical form")
        f = Fields(document, "signed", SignerCode.SIGNED_MALFORMED)
        f.raw("format")
        f.raw("version")
        result = f.obj("result")
        kind = result.choice("type", ("bitcoin_psbt", "ethereum_raw"))
        signed = cls(
            bundle_id=f.text("bundle_id"),
            bundle_sha256=f.hex_bytes("bundle_sha256", 32).hex(),
            chain=Chain(f.choice("chain", tuple(c.value for c in Chain))),
            network=f.text("network"),
            signer_id=f.text("signer_id"),
            signed_at_ms=f.integer("signed_at_ms"),
            psbt_base64=result.string("psbt", 2_000_000) if kind == "bitcoin_psbt" else None,
            raw_transaction=result.hex_bytes("raw_transaction", max_length=MAX_RAW_TX_BYTES)
            if kind == "ethereum_raw"
            else None,
            tx_hash=result.text("tx_hash") if kind == "ethereum_raw" else None,
        )
        result.finish()
        f.finish()
        return signed


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
