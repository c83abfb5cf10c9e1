"""Behaviour shared by keystore backends, written once against the protocol."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

from custody.keystore import envelope
from custody.keystore.errors import KeystoreError, KeystoreErrorCode
from custody.keystore.protocol import (
    DATA_KEY_SIZE_BYTES,
    DIGEST_SIZE_BYTES,
    DataKey,
    KeyInfo,
    KeyType,
    Signature,
    require_bytes,
    require_key_type,
    resolve_version,
    validate_key_name,
)
from custody.keystore.signature import message_digest, verify_signature


class KeystoreBackend(ABC):
    """Base class: subclasses implement key storage and the private-key operations."""

    backend_name: str = "abstract"

    @abstractmethod
    def create_key(self, name: str, key_type: KeyType) -> KeyInfo: ...

    @abstractmethod
    def key_info(self, name: str) -> KeyInfo: ...

    @abstractmethod
    def list_keys(self) -> list[KeyInfo]: ...

    @abstractmethod
    def rotate(self, name: str) -> int: ...

    @abstractmethod
    def _sign_raw(self, info: KeyInfo, version: int, data: bytes) -> bytes:
        """Return the 64-byte signature: Ed25519 over ``data``, secp256k1 over digest ``data``."""

    @abstractmethod
    def encrypt(self, name: str, plaintext: bytes, associated_data: bytes = b"") -> bytes: ...

    @abstractmethod
    def decrypt(self, name: str, ciphertext: bytes, associated_data: bytes = b"") -> bytes: ...

    def public_key(self, name: str, version: int | None = None) -> bytes:
        """Return the raw public key of ``name`` at ``version`` (default latest)."""
        info = self.key_info(name)
        require_key_type(info, "public_key", KeyType.ED25519, KeyType.SECP256K1)
        return info.public_keys[resolve_version(info, version)]

    def sign(self, name: str, message: bytes, version: int | None = None) -> Signature:
        """Sign ``message``: Ed25519 directly, secp256k1 over SHA-256(message)."""
        message = require_bytes(message, "message")
        info = self.key_info(name)
        require_key_type(info, "sign", KeyType.ED25519, KeyType.SECP256K1)
        version = resolve_version(info, version)
        data = message if info.key_type is KeyType.ED25519 else message_digest(message)
        return Signature(info.name, version, info.key_type, self._sign_raw(info, version, data))

    def sign_digest(self, name: str, digest: bytes, version: int | None = None) -> Signature:
        """Sign a 32-byte digest with a secp256k1 key; the signature is low-S."""
        digest = require_bytes(digest, "digest")
        if len(digest) != DIGEST_SIZE_BYTES:
            raise KeystoreError(
                KeystoreErrorCode.INVALID_ARGUMENT,
                f"digest was {len(digest)} bytes, must be {DIGEST_SIZE_BYTES}",
            )
        info = self.key_info(name)
        require_key_type(info, "sign_digest", KeyType.SECP256K1)
        version = resolve_version(info, version)
        return Signature(info.name, version, info.key_type, self._sign_raw(info, version, digest))

    def verify(self, name: str, message: bytes, signature: Signature) -> bool:
        """Return True if ``signature`` is a valid signature by ``name`` over ``message``."""
        message = require_bytes(message, "message")
        info = self.key_info(name)
        require_key_type(info, "verify", KeyType.ED25519, KeyType.SECP256K1)
        if signature.key_name != info.name or signature.key_type is not info.key_type:
            return False
        version = resolve_version(info, signature.key_version)
        return verify_signature(info.key_type, info.public_keys[version], message, signature.value)

    def generate_data_key(self, name: str) -> DataKey:
        """Return a fresh 256-bit data key and its wrapped form under key ``name``."""
        plaintext = os.urandom(DATA_KEY_SIZE_BYTES)
        wrapped = self.encrypt(name, plaintext, envelope.DATA_KEY_PURPOSE_AAD)
        return DataKey(name, envelope.blob_version(wrapped), plaintext, wrapped)

    def generate_wrapped_data_key(self, name: str) -> bytes:
        """Return only the wrapped form of a fresh data key (to hand to another party)."""
        with self.generate_data_key(name) as data_key:
            return data_key.wrapped

    def decrypt_data_key(self, name: str, wrapped: bytes) -> DataKey:
        """Unwrap a data key made by ``generate_data_key``."""
        plaintext = self.decrypt(name, wrapped, envelope.DATA_KEY_PURPOSE_AAD)
        return DataKey(name, envelope.blob_version(wrapped), plaintext, bytes(wrapped))

    def seal_seed(self, name: str, seed: bytes, associated_data: bytes = b"") -> bytes:
        """Envelope-encrypt ``seed`` under KEK ``name``; return ``SealedSeed`` bytes."""
        return envelope.seal_seed(self, name, seed, associated_data)

    def open_seed(self, name: str, sealed: bytes, associated_data: bytes = b"") -> bytes:
        """Return the seed sealed by ``seal_seed``."""
        return envelope.open_seed(self, name, sealed, associated_data)

    @staticmethod
    def _check_name(name: str) -> str:
        return validate_key_name(name)
