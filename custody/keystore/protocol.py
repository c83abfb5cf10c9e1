"""The keystore protocol every key consumer uses, and its value types.

Private key material never crosses this interface in clear, with one
deliberate exception: ``generate_data_key`` hands out a fresh data-encryption
key so the caller can encrypt locally (envelope encryption). That key is a
``DataKey`` whose ``repr`` hides the bytes and which can be wiped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from custody.keystore.errors import KeystoreError, KeystoreErrorCode

KEY_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""Key names: 1-64 chars, ASCII letters, digits, ``_ . -``; no ``/`` or ``#``."""

SIGNATURE_SIZE_BYTES = 64
DIGEST_SIZE_BYTES = 32
DATA_KEY_SIZE_BYTES = 32
MAX_PLAINTEXT_BYTES = 1 << 20
"""Keystore encryption is for keys and seeds, not bulk data; 1 MiB is plenty."""


class KeyType(StrEnum):
    """Kinds of named keys a keystore holds."""

    ED25519 = "ed25519"
    SECP256K1 = "secp256k1"
    AES256_GCM = "aes256-gcm"

    @property
    def is_signing(self) -> bool:
        """Return True for signature keys (they have public keys)."""
        return self is not KeyType.AES256_GCM


@dataclass(frozen=True)
class Signature:
    """A signature made by a named key at a specific version.

    ``value`` is 64 bytes: the Ed25519 signature, or ``r || s`` (32 bytes
    each, big-endian) for secp256k1 with ``s`` normalised to the low half.
    """

    key_name: str
    key_version: int
    key_type: KeyType
    value: bytes

    def __post_init__(self) -> None:
        if len(self.value) != SIGNATURE_SIZE_BYTES:
            raise KeystoreError(
                KeystoreErrorCode.INVALID_ARGUMENT,
                f"signature was {len(self.value)} bytes, must be {SIGNATURE_SIZE_BYTES}",
            )
        if self.key_version < 1:
            raise KeystoreError(
                KeystoreErrorCode.INVALID_ARGUMENT,
                f"key version was {self.key_version}, must be >= 1",
            )

    def to_der(self) -> bytes:
        """Return the DER (X9.62) encoding; only secp256k1 signatures have one."""
        from custody.keystore.signature import encode_der_signature

        if self.key_type is not KeyType.SECP256K1:
            raise KeystoreError(
                KeystoreErrorCode.WRONG_KEY_TYPE,
                f"DER encoding is for secp256k1 signatures, this one is {self.key_type}",
            )
        return encode_der_signature(self.value)


@dataclass(frozen=True)
class KeyInfo:
    """Public facts about a named key: type, versions and public keys."""

    name: str
    key_type: KeyType
    latest_version: int
    public_keys: Mapping[int, bytes] = field(default_factory=dict)
    """Version -> raw public key (32-byte Ed25519, 33-byte compressed
    secp256k1); empty for AES keys."""

    @property
    def versions(self) -> tuple[int, ...]:
        """Return every usable version, oldest first."""
        return tuple(range(1, self.latest_version + 1))


class DataKey:
    """A fresh data-encryption key: plaintext for local use, plus its wrapped form.

    Call ``wipe()`` (or use it as a context manager) once done; Python cannot
    guarantee no copies remain, but the buffer we own is zeroed.
    """

    __slots__ = ("_plaintext", "_wiped", "key_name", "key_version", "wrapped")

    def __init__(self, key_name: str, key_version: int, plaintext: bytes, wrapped: bytes) -> None:
        if len(plaintext) != DATA_KEY_SIZE_BYTES:
            raise KeystoreError(
                KeystoreErrorCode.BACKEND_ERROR,
                f"data key was {len(plaintext)} bytes, expected {DATA_KEY_SIZE_BYTES}",
            )
        self.key_name = key_name
        self.key_version = key_version
        self.wrapped = wrapped
        self._plaintext = bytearray(plaintext)
        self._wiped = False

    @property
    def plaintext(self) -> bytes:
        """Return the raw 32-byte key; fails once wiped."""
        if self._wiped:
            raise KeystoreError(KeystoreErrorCode.KEYSTORE_LOCKED, "data key was wiped")
        return bytes(self._plaintext)

    def wipe(self) -> None:
        """Zero the plaintext buffer."""
        for i in range(len(self._plaintext)):
            self._plaintext[i] = 0
        self._wiped = True

    def __enter__(self) -> DataKey:
        return self

    def __exit__(self, *exc: object) -> None:
        self.wipe()

    def __repr__(self) -> str:
        return f"DataKey(key_name={self.key_name!r}, key_version={self.key_version}, <redacted>)"

    __str__ = __repr__


@runtime_checkable
class Keystore(Protocol):
    """Named, versioned keys whose private material never leaves the store."""

    backend_name: str

    def create_key(self, name: str, key_type: KeyType) -> KeyInfo:
        """Create key ``name`` at version 1; ``key_exists`` if it already exists."""
        ...

    def key_info(self, name: str) -> KeyInfo:
        """Return type, latest version and public keys of ``name``."""
        ...

    def list_keys(self) -> list[KeyInfo]:
        """Return every key, sorted by name."""
        ...

    def rotate(self, name: str) -> int:
        """Add a new version of ``name`` and return it; old versions stay usable."""
        ...

    def public_key(self, name: str, version: int | None = None) -> bytes:
        """Return the raw public key of ``name`` (latest version by default)."""
        ...

    def sign(self, name: str, message: bytes, version: int | None = None) -> Signature:
        """Sign ``message`` (Ed25519 over the message; secp256k1 over its SHA-256)."""
        ...

    def sign_digest(self, name: str, digest: bytes, version: int | None = None) -> Signature:
        """Sign a 32-byte digest with a secp256k1 key (sighash, keccak256)."""
        ...

    def verify(self, name: str, message: bytes, signature: Signature) -> bool:
        """Return True if ``signature`` by ``name`` over ``message`` is valid."""
        ...

    def encrypt(self, name: str, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        """Encrypt with AES-256-GCM key ``name``; return an ASCII blob naming the version."""
        ...

    def decrypt(self, name: str, ciphertext: bytes, associated_data: bytes = b"") -> bytes:
        """Decrypt a blob from ``encrypt``; ``decryption_failed`` on a wrong AAD."""
        ...

    def generate_data_key(self, name: str) -> DataKey:
        """Return a fresh 256-bit data key and its form wrapped by key ``name``."""
        ...

    def generate_wrapped_data_key(self, name: str) -> bytes:
        """Return only the wrapped form of a fresh data key."""
        ...

    def decrypt_data_key(self, name: str, wrapped: bytes) -> DataKey:
        """Unwrap a data key previously returned by ``generate_data_key``."""
        ...

    def seal_seed(self, name: str, seed: bytes, associated_data: bytes = b"") -> bytes:
        """Envelope-encrypt a wallet seed under KEK ``name``; return ``SealedSeed`` bytes."""
        ...

    def open_seed(self, name: str, sealed: bytes, associated_data: bytes = b"") -> bytes:
        """Return the seed sealed by ``seal_seed``."""
        ...


def validate_key_name(name: object) -> str:
    """Return ``name`` if it is a valid key name, else raise ``invalid_key_name``."""
    if not isinstance(name, str) or not KEY_NAME_PATTERN.fullmatch(name):
        shown = repr(name)[:80]
        raise KeystoreError(
            KeystoreErrorCode.INVALID_KEY_NAME,
            f"key name was {shown}, must match {KEY_NAME_PATTERN.pattern}",
        )
    return name


def parse_key_type(key_type: object) -> KeyType:
    """Return ``key_type`` as a ``KeyType``, else raise ``unsupported_key_type``."""
    try:
        return KeyType(str(key_type))
    except ValueError:
        allowed = ", ".join(t.value for t in KeyType)
        raise KeystoreError(
            KeystoreErrorCode.UNSUPPORTED_KEY_TYPE,
            f"key type was {str(key_type)[:40]!r}, must be one of {allowed}",
        ) from None


def require_key_type(info: KeyInfo, operation: str, *allowed: KeyType) -> None:
    """Raise ``wrong_key_type`` unless ``info`` has one of the ``allowed`` types."""
    if info.key_type not in allowed:
        wanted = " or ".join(t.value for t in allowed)
        raise KeystoreError(
            KeystoreErrorCode.WRONG_KEY_TYPE,
            f"key {info.name!r} is {info.key_type.value}; {operation} needs {wanted}",
        )


def resolve_version(info: KeyInfo, version: int | None) -> int:
    """Return ``version`` (default: latest) after checking that it exists."""
    if version is None:
        return info.latest_version
    if isinstance(version, bool) or not isinstance(version, int) or not (1 <= version <= info.latest_version):
        raise KeystoreError(
            KeystoreErrorCode.KEY_VERSION_NOT_FOUND,
            f"key {info.name!r} has versions 1..{info.latest_version}, version was {version!r}",
        )
    return version


def require_bytes(value: object, what: str, max_bytes: int = MAX_PLAINTEXT_BYTES) -> bytes:
    """Return ``value`` as bytes or raise ``invalid_argument`` (never echoing it)."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise KeystoreError(
            KeystoreErrorCode.INVALID_ARGUMENT,
            f"{what} was {type(value).__name__}, must be bytes",
        )
    data = bytes(value)
    if len(data) > max_bytes:
        raise KeystoreError(
            KeystoreErrorCode.INVALID_ARGUMENT,
            f"{what} was {len(data)} bytes, must be at most {max_bytes}",
        )
    return data
