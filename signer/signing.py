"""Sign a verified bundle: the last pure step before the shell writes the log and the file.

`sign_bundle` verifies first and signs only if nothing was refused; a key
that turns out not to belong to the wallet is reported as a refusal too.
"""

from __future__ import annotations

from dataclasses import dataclass

from signer.anchors import BitcoinWallet, EthereumWallet, TrustAnchors
from signer.bitcoin import sign_bitcoin
from signer.bundle import BitcoinTransaction, Bundle
from signer.ethereum import sign_ethereum
from signer.results import SignerError
from signer.signed import SignedBundle
from signer.signing_log import History
from signer.verification import Verification, verify_bundle


@dataclass(frozen=True, slots=True)
class SignOutcome:
    """The verification, and the signed result if and only if it passed."""

    verification: Verification
    signed: SignedBundle | None


def sign_bundle(
    bundle: Bundle, anchors: TrustAnchors, seed: bytes, now_ms: int, history: History
) -> SignOutcome:
    """Verify `bundle`; if every check passes, sign it with the key from `seed`."""
    verification = verify_bundle(bundle, anchors, now_ms, history)
    if not verification.ok:
        return SignOutcome(verification, None)
    body = bundle.body
    wallet = anchors.wallets[body.intent.source_wallet]
    try:
        if isinstance(body.transaction, BitcoinTransaction):
            assert isinstance(wallet, BitcoinWallet)
            psbt, signer_id = sign_bitcoin(body.transaction, wallet, seed)
            signed = SignedBundle(
                body.bundle_id, bundle.digest, body.chain, body.network, signer_id, now_ms, psbt_base64=psbt
            )
        else:
            assert isinstance(wallet, EthereumWallet)
            raw, tx_hash = sign_ethereum(body.transaction, wallet, seed)
            signed = SignedBundle(
                body.bundle_id,
                bundle.digest,
                body.chain,
                body.network,
                wallet.address,
                now_ms,
                raw_transaction=bytes.fromhex(raw[2:]),
                tx_hash=tx_hash,
            )
    except SignerError as exc:
        failed = Verification(bundle, (*verification.refusals, exc.refusal), verification.facts)
        return SignOutcome(failed, None)
    return SignOutcome(verification, signed)
