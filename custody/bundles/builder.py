"""Building bundles on the platform side: the API `strongroom bundle export` calls.

The platform assembles the body from its withdrawal/refill record
(`build_bundle`), signs it with its Ed25519 bundle key through any signing
callable (`platform_sign`; the custody keystore's sign function fits), and
writes `Bundle.to_bytes()` to the file or QR frames. On import it parses
the answer with `SignedBundle.from_bytes` and checks it with
`custody.bundles.signed.check_signed` (and `combine_bitcoin` for multisig).
Platform code: moved here from the offline signer package, which only checks and signs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from policies.approval import Approval
from signer.bundle import (
    ED25519_SIGNATURE_BYTES,
    Bundle,
    BundleBody,
    Chain,
    Intent,
    PolicyRef,
    RequestRef,
    Transaction,
    signing_message,
)
from signer.results import SignerCode, SignerError

# Takes the exact message bytes, returns a 64-byte Ed25519 signature.
PlatformSigner = Callable[[bytes], bytes]


def build_bundle(
    *,
    bundle_id: str,
    chain: Chain,
    network: str,
    request: RequestRef,
    policy: PolicyRef,
    intent: Intent,
    transaction: Transaction,
    approvals: Sequence[Approval],
    created_at_ms: int,
    expires_at_ms: int,
) -> BundleBody:
    """Return a validated bundle body; raise `SignerError` if an approval is for another subject.

    Include only approvals that counted in the platform's own quorum check:
    the signer refuses a bundle carrying any approval that does not count.
    """
    body = BundleBody(
        bundle_id=bundle_id,
        chain=chain,
        network=network,
        created_at_ms=created_at_ms,
        expires_at_ms=expires_at_ms,
        request=request,
        policy=policy,
        intent=intent,
        transaction=transaction,
        approvals=tuple(approvals),
    )
    subject = body.subject()
    for approval in approvals:
        differences = subject.differences(approval.subject)
        if differences:
            raise SignerError(
                SignerCode.BUNDLE_MALFORMED,
                f"approval by {approval.approver_id} is for a different subject: {'; '.join(differences)}",
            )
    return body


def platform_sign(body: BundleBody, key_id: str, sign: PlatformSigner) -> Bundle:
    """Sign `body` with the platform's bundle key (via `sign`) and return the complete bundle."""
    signature = sign(signing_message(body))
    if len(signature) != ED25519_SIGNATURE_BYTES:
        raise SignerError(
            SignerCode.PLATFORM_SIGNATURE_INVALID,
            f"platform signer returned {len(signature)} bytes, expected 64",
        )
    return Bundle(body, key_id, signature)


def ed25519_signer(private_key: Ed25519PrivateKey) -> PlatformSigner:
    """Return a `PlatformSigner` for an in-memory Ed25519 key (tests, demo)."""
    return private_key.sign
