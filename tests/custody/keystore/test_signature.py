"""Pure signature helpers: low-S, encodings, offline verification."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given
from hypothesis import strategies as st
from keystore_contract import expect_error

from custody.keystore import KeystoreErrorCode, KeyType, Signature, verify_signature
from custody.keystore.signature import (
    SECP256K1_HALF_ORDER,
    SECP256K1_ORDER,
    compress_secp256k1_point,
    encode_der_signature,
    is_low_s,
    low_s_from_der,
    normalize_low_s,
    rs_to_bytes,
    verify_secp256k1_digest,
)

SCALARS = st.integers(min_value=1, max_value=SECP256K1_ORDER - 1)


@given(SCALARS, SCALARS)
def test_normalize_low_s_yields_low_half_and_is_idempotent(r: int, s: int) -> None:
    r2, s2 = normalize_low_s(r, s)
    assert r2 == r and 0 < s2 <= SECP256K1_HALF_ORDER
    assert s2 in (s, SECP256K1_ORDER - s)
    assert normalize_low_s(r2, s2) == (r2, s2)


@given(SCALARS, SCALARS)
def test_der_round_trip_preserves_low_s_signature(r: int, s: int) -> None:
    value = rs_to_bytes(*normalize_low_s(r, s))
    assert low_s_from_der(encode_der_signature(value)) == value


def secp256k1_key() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    private = ec.generate_private_key(ec.SECP256K1())
    point = private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    return private, point


def test_high_s_twin_of_a_valid_signature_is_rejected() -> None:
    private, public = secp256k1_key()
    message = b"tx"
    r, s = decode_dss_signature(private.sign(message, ec.ECDSA(hashes.SHA256())))
    r, s = normalize_low_s(r, s)
    low = rs_to_bytes(r, s)
    high = rs_to_bytes(r, SECP256K1_ORDER - s)
    assert is_low_s(low) and not is_low_s(high)
    assert verify_signature(KeyType.SECP256K1, public, message, low)
    assert not verify_signature(KeyType.SECP256K1, public, message, high)
    digest = hashlib.sha256(message).digest()
    assert verify_secp256k1_digest(public, digest, low)


def test_compress_point_matches_cryptography() -> None:
    private, compressed = secp256k1_key()
    uncompressed = private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert compress_secp256k1_point(uncompressed) == compressed
    assert compress_secp256k1_point(compressed) == compressed


def test_ed25519_verify_rejects_wrong_key_and_sizes() -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    signature = key.sign(b"m")
    assert verify_signature(KeyType.ED25519, public, b"m", signature)
    other = Ed25519PrivateKey.generate().public_key()
    other_raw = other.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert not verify_signature(KeyType.ED25519, other_raw, b"m", signature)
    assert not verify_signature(KeyType.ED25519, public[:31], b"m", signature)


def test_verify_signature_for_aes_raises_wrong_key_type() -> None:
    expect_error(
        KeystoreErrorCode.WRONG_KEY_TYPE,
        lambda: verify_signature(KeyType.AES256_GCM, b"", b"m", bytes(64)),
    )


@pytest.mark.parametrize("size", [0, 63, 65, 72])
def test_signature_value_must_be_64_bytes(size: int) -> None:
    expect_error(
        KeystoreErrorCode.INVALID_ARGUMENT,
        lambda: Signature("k", 1, KeyType.ED25519, bytes(size)),
    )


def test_der_encoding_is_only_for_secp256k1() -> None:
    signature = Signature("k", 1, KeyType.ED25519, bytes(64))
    expect_error(KeystoreErrorCode.WRONG_KEY_TYPE, signature.to_der)
