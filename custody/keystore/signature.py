"""Pure signature helpers: verification, low-S normalisation, encodings.

Everything here works on public data only, so auditors and the offline
verifier can check keystore signatures without any keystore backend.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

from custody.keystore.errors import KeystoreError, KeystoreErrorCode
from custody.keystore.protocol import DIGEST_SIZE_BYTES, SIGNATURE_SIZE_BYTES, KeyType

SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_HALF_ORDER = SECP256K1_ORDER // 2
SCALAR_SIZE_BYTES = 32
COMPRESSED_POINT_SIZE_BYTES = 33
UNCOMPRESSED_POINT_SIZE_BYTES = 65
ED25519_PUBLIC_KEY_SIZE_BYTES = 32


def normalize_low_s(r: int, s: int) -> tuple[int, int]:
    """Return ``(r, s)`` with ``s`` in the low half of the group order.

    Bitcoin (BIP 62/146) and Ethereum (EIP-2) reject high-S signatures as
    malleable; ``(r, n - s)`` is the equally valid low-S twin.
    """
    assert 0 < r < SECP256K1_ORDER and 0 < s < SECP256K1_ORDER, "r, s out of range"
    if s > SECP256K1_HALF_ORDER:
        s = SECP256K1_ORDER - s
    return r, s


def rs_to_bytes(r: int, s: int) -> bytes:
    """Return the 64-byte ``r || s`` encoding."""
    return r.to_bytes(SCALAR_SIZE_BYTES, "big") + s.to_bytes(SCALAR_SIZE_BYTES, "big")


def rs_from_bytes(value: bytes) -> tuple[int, int]:
    """Split a 64-byte ``r || s`` signature into integers."""
    if len(value) != SIGNATURE_SIZE_BYTES:
        raise KeystoreError(
            KeystoreErrorCode.INVALID_ARGUMENT,
            f"signature was {len(value)} bytes, must be {SIGNATURE_SIZE_BYTES}",
        )
    return (
        int.from_bytes(value[:SCALAR_SIZE_BYTES], "big"),
        int.from_bytes(value[SCALAR_SIZE_BYTES:], "big"),
    )


def encode_der_signature(value: bytes) -> bytes:
    """Return the DER encoding of a 64-byte ``r || s`` signature."""
    r, s = rs_from_bytes(value)
    return encode_dss_signature(r, s)


def low_s_from_der(der: bytes) -> bytes:
    """Return the low-S ``r || s`` form of a DER ECDSA signature over secp256k1."""
    r, s = decode_dss_signature(der)
    return rs_to_bytes(*normalize_low_s(r, s))


def low_s_from_raw(value: bytes) -> bytes:
    """Return the low-S ``r || s`` form of a raw PKCS#11 ``r || s`` signature."""
    return rs_to_bytes(*normalize_low_s(*rs_from_bytes(value)))


def is_low_s(value: bytes) -> bool:
    """Return True if the ``r || s`` signature has ``s <= n/2``."""
    _, s = rs_from_bytes(value)
    return 0 < s <= SECP256K1_HALF_ORDER


def compress_secp256k1_point(point: bytes) -> bytes:
    """Return the 33-byte SEC1 compressed form of a 65-byte uncompressed point."""
    if len(point) == COMPRESSED_POINT_SIZE_BYTES and point[0] in (2, 3):
        return point
    if len(point) != UNCOMPRESSED_POINT_SIZE_BYTES or point[0] != 4:
        raise KeystoreError(
            KeystoreErrorCode.BACKEND_ERROR,
            f"secp256k1 point was {len(point)} bytes, expected an uncompressed SEC1 point",
        )
    y_is_odd = point[-1] & 1
    return bytes([2 + y_is_odd]) + point[1 : 1 + SCALAR_SIZE_BYTES]


def secp256k1_public_key(public_key: bytes) -> ec.EllipticCurvePublicKey:
    """Load a compressed (or uncompressed) SEC1 secp256k1 public key."""
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), public_key)
    except ValueError:
        raise KeystoreError(
            KeystoreErrorCode.INVALID_ARGUMENT,
            f"secp256k1 public key was {len(public_key)} bytes and not a valid point",
        ) from None


def message_digest(message: bytes) -> bytes:
    """Return the SHA-256 digest that ``sign`` signs for secp256k1 keys."""
    return hashlib.sha256(message).digest()


def verify_secp256k1_digest(public_key: bytes, digest: bytes, value: bytes) -> bool:
    """Return True for a valid low-S secp256k1 signature over a 32-byte digest.

    High-S signatures are rejected on purpose: every keystore backend emits
    low-S only, so a high-S signature was not made by us unmodified.
    """
    if len(digest) != DIGEST_SIZE_BYTES or len(value) != SIGNATURE_SIZE_BYTES:
        return False
    r, s = rs_from_bytes(value)
    if not (0 < r < SECP256K1_ORDER and 0 < s <= SECP256K1_HALF_ORDER):
        return False
    key = secp256k1_public_key(public_key)
    try:
        key.verify(encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature:
        return False
    return True


def verify_signature(key_type: KeyType, public_key: bytes, message: bytes, value: bytes) -> bool:
    """Return True if ``value`` is a valid signature over ``message``.

    Ed25519 signs the message itself; secp256k1 signs its SHA-256 digest.
    """
    if key_type is KeyType.ED25519:
        if len(public_key) != ED25519_PUBLIC_KEY_SIZE_BYTES or len(value) != SIGNATURE_SIZE_BYTES:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(value, message)
        except InvalidSignature:
            return False
        return True
    if key_type is KeyType.SECP256K1:
        return verify_secp256k1_digest(public_key, message_digest(message), value)
    raise KeystoreError(KeystoreErrorCode.WRONG_KEY_TYPE, f"{key_type.value} keys do not make signatures")
