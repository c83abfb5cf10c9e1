"""The signed result: what the signer writes and the platform imports.

A canonical JSON document naming the bundle it answers (id and SHA-256)
and carrying the signature in the chain's own form: a PSBT with our
partial signatures for Bitcoin, a raw signed transaction for Ethereum. The
platform checks it against the bundle it exported and, for Bitcoin, combines
the PSBTs of enough cosigners (custody.bundles.signed: platform code, not here).
"""

from __future__ import annotations

from dataclasses import dataclass

from signer.bundle import Chain, check_version
from signer.canonical import canonical_bytes, parse_strict
from signer.fields import Fields
from signer.results import SignerCode, SignerError

SIGNED_FORMAT = "strongroom-signer-signed"
SIGNED_VERSION = 1
MAX_RAW_TX_BYTES = 65_536


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
