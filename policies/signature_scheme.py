"""Signature schemes an approver key may use.

Approvals name their scheme explicitly so that new ones (WebAuthn
assertions from hardware authenticators) can be added without changing
the approval format: a new scheme is a new enum member plus a verifier
that knows how to check its signature blob against the approval digest.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ED25519_PUBLIC_KEY_BYTES = 32
ED25519_SIGNATURE_BYTES = 64

# A verifier gets (public key bytes, digest, signature blob) and answers
# whether the blob is a valid signature over the digest. A future WebAuthn
# verifier would parse authenticatorData and clientDataJSON out of the blob
# and check that the client data's challenge is the digest.
Verifier = Callable[[bytes, bytes, bytes], bool]


class SignatureScheme(enum.StrEnum):
    """Name of a signature scheme, stored with every key and approval."""

    ED25519 = "ed25519"


def verify_ed25519(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Return whether `signature` is a valid Ed25519 signature over `message`."""
    if len(public_key) != ED25519_PUBLIC_KEY_BYTES or len(signature) != ED25519_SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def ed25519_public_bytes(private_key: Ed25519PrivateKey) -> bytes:
    """Return the raw 32-byte public key of `private_key`, as registered."""
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


DEFAULT_VERIFIERS: Mapping[SignatureScheme, Verifier] = {
    SignatureScheme.ED25519: verify_ed25519,
}
