"""Ciphertext blobs and envelope encryption of wallet seeds.

A ciphertext blob is ASCII ``<backend>:v<version>:<base64>``, the same shape
as Vault Transit's ``vault:v1:...``, so it fits a text column and names the
key version needed to decrypt it.

Envelope encryption: a fresh 256-bit data key (DEK) encrypts the seed with
AES-256-GCM locally; the keystore wraps the DEK under the named key
(the KEK). Only the wrapped DEK and the seed ciphertext are stored.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from custody.keystore.errors import KeystoreError, KeystoreErrorCode
from custody.keystore.protocol import Keystore, require_bytes, validate_key_name

GCM_NONCE_SIZE_BYTES = 12
GCM_TAG_SIZE_BYTES = 16
MAX_SEED_BYTES = 1024
MAX_WRAPPED_KEY_BYTES = 4096
_BLOB_PATTERN = re.compile(rb"^([a-z0-9]+):v([1-9][0-9]{0,8}):([A-Za-z0-9+/]+={0,2})$")
_AAD_DOMAIN = b"strongroom/keystore/aead/v1"
_SEED_AAD_DOMAIN = b"strongroom/keystore/seed/v1"
DATA_KEY_PURPOSE_AAD = b"strongroom/keystore/data-key/v1"
"""Associated data under which backends wrap data keys, so a data key blob
cannot be passed off as an ordinary ciphertext and vice versa."""


def format_blob(prefix: str, version: int, raw: bytes) -> bytes:
    """Return the ASCII blob ``prefix:vN:base64(raw)``."""
    assert version >= 1, f"key version was {version}, must be >= 1"
    return f"{prefix}:v{version}:".encode() + base64.b64encode(raw)


def parse_blob(prefix: str, blob: object) -> tuple[int, bytes]:
    """Return ``(version, raw)`` of a blob made by backend ``prefix``."""
    data = require_bytes(blob, "ciphertext", max_bytes=4 * MAX_SEED_BYTES + (2 << 20))
    match = _BLOB_PATTERN.fullmatch(data)
    if match is None or match.group(1).decode() != prefix:
        raise KeystoreError(
            KeystoreErrorCode.MALFORMED_CIPHERTEXT,
            f"ciphertext is not a {prefix}:vN:<base64> blob",
        )
    try:
        raw = base64.b64decode(match.group(3), validate=True)
    except binascii.Error:
        raise KeystoreError(KeystoreErrorCode.MALFORMED_CIPHERTEXT, "ciphertext base64 is invalid") from None
    return int(match.group(2)), raw


def blob_version(blob: bytes) -> int:
    """Return the key version a ciphertext blob (any backend) was made with."""
    match = _BLOB_PATTERN.fullmatch(bytes(blob))
    if match is None:
        raise KeystoreError(
            KeystoreErrorCode.MALFORMED_CIPHERTEXT, "ciphertext is not a <backend>:vN:<base64> blob"
        )
    return int(match.group(2))


def _length_prefixed(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def bound_aad(name: str, version: int, associated_data: bytes) -> bytes:
    """Return the GCM associated data binding key name and version to the caller's AAD."""
    return _length_prefixed(_AAD_DOMAIN, name.encode(), struct.pack(">I", version), associated_data)


def gcm_seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Return ``nonce || ciphertext || tag`` under a fresh random 96-bit nonce."""
    nonce = os.urandom(GCM_NONCE_SIZE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def gcm_open(key: bytes, raw: bytes, aad: bytes) -> bytes:
    """Open ``nonce || ciphertext || tag``; raise ``decryption_failed`` if it does not verify."""
    if len(raw) < GCM_NONCE_SIZE_BYTES + GCM_TAG_SIZE_BYTES:
        raise KeystoreError(KeystoreErrorCode.MALFORMED_CIPHERTEXT, "ciphertext is too short")
    try:
        return AESGCM(key).decrypt(raw[:GCM_NONCE_SIZE_BYTES], raw[GCM_NONCE_SIZE_BYTES:], aad)
    except InvalidTag:
        raise KeystoreError(
            KeystoreErrorCode.DECRYPTION_FAILED,
            "ciphertext failed authentication (wrong key, associated data or tampered)",
        ) from None


_SEALED_MAGIC = b"SRSEED"
_SEALED_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SealedSeed:
    """A wallet seed encrypted under a data key that is wrapped by a named KEK."""

    kek_name: str
    wrapped_data_key: bytes
    nonce: bytes
    ciphertext: bytes

    def to_bytes(self) -> bytes:
        """Return the canonical binary encoding."""
        name = self.kek_name.encode()
        return b"".join(
            [
                _SEALED_MAGIC,
                bytes([_SEALED_FORMAT_VERSION, len(name)]),
                name,
                struct.pack(">H", len(self.wrapped_data_key)),
                self.wrapped_data_key,
                self.nonce,
                struct.pack(">H", len(self.ciphertext)),
                self.ciphertext,
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SealedSeed:
        """Parse ``to_bytes`` output; reject anything malformed or trailing."""
        try:
            return cls._parse(memoryview(bytes(data)))
        except (IndexError, struct.error, UnicodeDecodeError, ValueError):
            raise KeystoreError(KeystoreErrorCode.MALFORMED_CIPHERTEXT, "sealed seed is malformed") from None

    @classmethod
    def _parse(cls, view: memoryview) -> SealedSeed:
        if bytes(view[:6]) != _SEALED_MAGIC or view[6] != _SEALED_FORMAT_VERSION:
            raise ValueError("bad magic or format version")
        pos = 8 + view[7]
        name = bytes(view[8:pos]).decode("ascii")
        (wrapped_len,) = struct.unpack(">H", view[pos : pos + 2])
        wrapped = bytes(view[pos + 2 : pos + 2 + wrapped_len])
        pos += 2 + wrapped_len
        nonce = bytes(view[pos : pos + GCM_NONCE_SIZE_BYTES])
        pos += GCM_NONCE_SIZE_BYTES
        (ct_len,) = struct.unpack(">H", view[pos : pos + 2])
        ciphertext = bytes(view[pos + 2 : pos + 2 + ct_len])
        pos += 2 + ct_len
        if pos != len(view) or len(wrapped) != wrapped_len or len(ciphertext) != ct_len:
            raise ValueError("truncated or trailing bytes")
        if len(nonce) != GCM_NONCE_SIZE_BYTES:
            raise ValueError("truncated nonce")
        return cls(name, wrapped, nonce, ciphertext)


def _seed_aad(kek_name: str, associated_data: bytes) -> bytes:
    return _length_prefixed(_SEED_AAD_DOMAIN, kek_name.encode(), associated_data)


def seal_seed(keystore: Keystore, name: str, seed: bytes, associated_data: bytes = b"") -> bytes:
    """Encrypt ``seed`` under a fresh data key wrapped by KEK ``name``; return sealed bytes."""
    validate_key_name(name)
    seed = require_bytes(seed, "seed", max_bytes=MAX_SEED_BYTES)
    aad = require_bytes(associated_data, "associated data")
    if not seed:
        raise KeystoreError(KeystoreErrorCode.INVALID_ARGUMENT, "seed was empty")
    with keystore.generate_data_key(name) as data_key:
        if len(data_key.wrapped) > MAX_WRAPPED_KEY_BYTES:
            raise KeystoreError(KeystoreErrorCode.BACKEND_ERROR, "wrapped data key is too large")
        raw = gcm_seal(data_key.plaintext, seed, _seed_aad(name, aad))
        sealed = SealedSeed(name, data_key.wrapped, raw[:GCM_NONCE_SIZE_BYTES], raw[GCM_NONCE_SIZE_BYTES:])
    return sealed.to_bytes()


def open_seed(keystore: Keystore, name: str, sealed: bytes, associated_data: bytes = b"") -> bytes:
    """Return the seed sealed by ``seal_seed`` under KEK ``name`` with the same AAD."""
    validate_key_name(name)
    aad = require_bytes(associated_data, "associated data")
    parsed = SealedSeed.from_bytes(require_bytes(sealed, "sealed seed"))
    if parsed.kek_name != name:
        raise KeystoreError(
            KeystoreErrorCode.DECRYPTION_FAILED,
            f"sealed seed is wrapped by key {parsed.kek_name!r}, not {name!r}",
        )
    with keystore.decrypt_data_key(name, parsed.wrapped_data_key) as data_key:
        return gcm_open(data_key.plaintext, parsed.nonce + parsed.ciphertext, _seed_aad(name, aad))
