"""Local keystore: every key in one passphrase-encrypted file (the embedded default).

File layout (all integers unsigned, big-endian)::

    magic "SRKEYS" | format u8 = 1 | kdf u8 = 1 (scrypt) | log2(N) u8 | r u8 | p u8
    | salt[16] | check[32] | nonce[12] | header_sha256[32]      <- header, 104 bytes
    | AES-256-GCM(payload JSON) with the whole header as associated data

scrypt(passphrase, salt) yields 64 bytes: an encryption key and a check key.
``check`` = HMAC-SHA256(check key, label) tells a wrong passphrase apart from
tampering; ``header_sha256`` catches accidental or naive edits of the header
before the (slow) key derivation; GCM authenticates header and payload.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import getpass
import hashlib
import hmac
import json
import os
import secrets
import stat
import struct
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from custody.keystore import envelope
from custody.keystore.backend import KeystoreBackend
from custody.keystore.errors import KeystoreError, KeystoreErrorCode
from custody.keystore.protocol import (
    KeyInfo,
    KeyType,
    parse_key_type,
    require_bytes,
    require_key_type,
    resolve_version,
)
from custody.keystore.signature import compress_secp256k1_point, low_s_from_der

PASSPHRASE_ENV = "STRONGROOM_KEYSTORE_PASSPHRASE"  # noqa: S105 (a variable name)
DEFAULT_FILENAME = "keystore.srks"
DEFAULT_SCRYPT_LOG2_N = 15
DEFAULT_SCRYPT_R = 8
DEFAULT_SCRYPT_P = 1
MIN_SCRYPT_LOG2_N = 10
"""Floor for tests; production files should keep the default (2**15) or more."""
MAX_SCRYPT_LOG2_N = 22
MAX_SCRYPT_R = 32
MAX_SCRYPT_P = 16
MAX_KEYS = 10_000
MAX_VERSIONS_PER_KEY = 1_000
MAX_FILE_BYTES = 64 << 20
MIN_PASSPHRASE_CHARS = 8

_MAGIC = b"SRKEYS"
_FORMAT_VERSION = 1
_KDF_SCRYPT = 1
_SALT_SIZE = 16
_CHECK_SIZE = 32
_NONCE_SIZE = 12
_DIGEST_SIZE = 32
_PREFIX = struct.Struct(">6sBBBBB")
_HEADER_SIZE = _PREFIX.size + _SALT_SIZE + _CHECK_SIZE + _NONCE_SIZE + _DIGEST_SIZE
_CHECK_LABEL = b"strongroom/keystore/local/passphrase-check/v1"
_BLOB_PREFIX = "local"


@dataclass(frozen=True)
class _KdfParams:
    log2_n: int
    r: int
    p: int
    salt: bytes


@dataclass(frozen=True)
class _DerivedKeys:
    params: _KdfParams
    encryption_key: bytes
    check: bytes

    def __repr__(self) -> str:
        return f"_DerivedKeys(log2_n={self.params.log2_n}, <redacted>)"


@dataclass
class _StoredKey:
    key_type: KeyType
    secrets_by_version: list[bytes]
    public_keys: dict[int, bytes]

    def __repr__(self) -> str:
        return f"_StoredKey({self.key_type.value}, versions={len(self.secrets_by_version)})"


def _tampered(detail: str) -> KeystoreError:
    return KeystoreError(KeystoreErrorCode.KEYSTORE_TAMPERED, f"keystore file {detail}")


def _derive(passphrase: bytes, params: _KdfParams) -> _DerivedKeys:
    kdf = Scrypt(salt=params.salt, length=64, n=1 << params.log2_n, r=params.r, p=params.p)
    out = kdf.derive(passphrase)
    check = hmac.new(out[32:], _CHECK_LABEL, hashlib.sha256).digest()
    return _DerivedKeys(params, out[:32], check)


def _encode_header(keys: _DerivedKeys, nonce: bytes) -> bytes:
    p = keys.params
    body = _PREFIX.pack(_MAGIC, _FORMAT_VERSION, _KDF_SCRYPT, p.log2_n, p.r, p.p)
    body += p.salt + keys.check + nonce
    return body + hashlib.sha256(body).digest()


def _decode_header(data: bytes) -> tuple[_KdfParams, bytes, bytes]:
    """Return ``(kdf params, check, nonce)`` of a structurally sound header."""
    if len(data) < _HEADER_SIZE + envelope.GCM_TAG_SIZE_BYTES:
        raise _tampered(f"is truncated ({len(data)} bytes)")
    magic, fmt, kdf, log2_n, r, p = _PREFIX.unpack_from(data)
    body = data[: _HEADER_SIZE - _DIGEST_SIZE]
    if not hmac.compare_digest(hashlib.sha256(body).digest(), data[len(body) : _HEADER_SIZE]):
        raise _tampered("header checksum does not match")
    if magic != _MAGIC or fmt != _FORMAT_VERSION or kdf != _KDF_SCRYPT:
        raise _tampered(f"has an unknown format (format {fmt}, kdf {kdf})")
    if not (
        MIN_SCRYPT_LOG2_N <= log2_n <= MAX_SCRYPT_LOG2_N and 1 <= r <= MAX_SCRYPT_R and 1 <= p <= MAX_SCRYPT_P
    ):
        raise _tampered(f"has out-of-range scrypt parameters (log2 N {log2_n}, r {r}, p {p})")
    pos = _PREFIX.size
    salt = data[pos : pos + _SALT_SIZE]
    check = data[pos + _SALT_SIZE : pos + _SALT_SIZE + _CHECK_SIZE]
    nonce = data[pos + _SALT_SIZE + _CHECK_SIZE : pos + _SALT_SIZE + _CHECK_SIZE + _NONCE_SIZE]
    return _KdfParams(log2_n, r, p, salt), check, nonce


def _generate_secret(key_type: KeyType) -> bytes:
    if key_type is KeyType.ED25519:
        return Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    if key_type is KeyType.SECP256K1:
        value = ec.generate_private_key(ec.SECP256K1()).private_numbers().private_value
        return value.to_bytes(32, "big")
    return os.urandom(32)


def _public_from_secret(key_type: KeyType, secret: bytes) -> bytes | None:
    if key_type is KeyType.ED25519:
        return (
            Ed25519PrivateKey.from_private_bytes(secret)
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
    if key_type is KeyType.SECP256K1:
        point = (
            ec.derive_private_key(int.from_bytes(secret, "big"), ec.SECP256K1())
            .public_key()
            .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        )
        return compress_secp256k1_point(point)
    return None


def _stored_key(key_type: KeyType, secret_list: list[bytes]) -> _StoredKey:
    public = {}
    for version, secret in enumerate(secret_list, start=1):
        pub = _public_from_secret(key_type, secret)
        if pub is not None:
            public[version] = pub
    return _StoredKey(key_type, secret_list, public)


def _encode_payload(keys: Mapping[str, _StoredKey]) -> bytes:
    doc = {
        "keys": {
            name: {
                "type": key.key_type.value,
                "versions": [base64.b64encode(s).decode() for s in key.secrets_by_version],
            }
            for name, key in sorted(keys.items())
        }
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _decode_payload(payload: bytes) -> dict[str, _StoredKey]:
    try:
        doc = json.loads(payload)
        return {
            name: _stored_key(
                parse_key_type(entry["type"]),
                [base64.b64decode(v, validate=True) for v in entry["versions"]],
            )
            for name, entry in doc["keys"].items()
        }
    except (ValueError, KeyError, TypeError, KeystoreError):
        # Authenticated yet unparseable means a bug or a forged key; treat as tampering.
        raise _tampered("payload is malformed") from None


class LocalKeystore(KeystoreBackend):
    """Keys in one AES-256-GCM encrypted file, unlocked by a passphrase.

    Opening (or creating) happens in the constructor, so a wrong passphrase or
    a tampered file fails fast. Every change rewrites the file atomically
    (temp file, fsync, rename) under an advisory lock, so concurrent processes
    sharing the file do not lose each other's keys.
    """

    backend_name = "local"

    def __init__(
        self,
        path: str | os.PathLike[str],
        passphrase: str | bytes,
        *,
        create: bool = True,
        scrypt_log2_n: int = DEFAULT_SCRYPT_LOG2_N,
        scrypt_r: int = DEFAULT_SCRYPT_R,
        scrypt_p: int = DEFAULT_SCRYPT_P,
    ) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._keys: dict[str, _StoredKey] = {}
        self._closed = False
        secret = passphrase.encode() if isinstance(passphrase, str) else bytes(passphrase)
        if len(secret) < MIN_PASSPHRASE_CHARS:
            raise KeystoreError(
                KeystoreErrorCode.INVALID_ARGUMENT,
                f"passphrase was {len(secret)} bytes, must be at least {MIN_PASSPHRASE_CHARS}",
            )
        if not MIN_SCRYPT_LOG2_N <= scrypt_log2_n <= MAX_SCRYPT_LOG2_N:
            raise KeystoreError(
                KeystoreErrorCode.INVALID_ARGUMENT,
                f"scrypt log2 N was {scrypt_log2_n}, must be in {MIN_SCRYPT_LOG2_N}..{MAX_SCRYPT_LOG2_N}",
            )
        with self._file_lock():
            if self.path.exists():
                self._derived = self._open_existing(secret)
            elif create:
                params = _KdfParams(scrypt_log2_n, scrypt_r, scrypt_p, os.urandom(_SALT_SIZE))
                self._derived = _derive(secret, params)
                self._write(exclusive=True)
            else:
                raise KeystoreError(
                    KeystoreErrorCode.BACKEND_UNAVAILABLE,
                    f"keystore file {self.path} does not exist",
                )

    @classmethod
    def in_data_dir(
        cls, data_dir: str | os.PathLike[str], passphrase: str | bytes, **kwargs: Any
    ) -> LocalKeystore:
        """Open (or create) ``<data_dir>/keystore.srks``."""
        return cls(Path(data_dir) / DEFAULT_FILENAME, passphrase, **kwargs)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._keys)} keys"
        return f"LocalKeystore(path={str(self.path)!r}, {state})"

    __str__ = __repr__

    # -- file handling -------------------------------------------------------

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Hold the thread lock and an advisory lock on ``<file>.lock``."""
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock_path = self.path.with_name(self.path.name + ".lock")
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _read_file(self) -> bytes:
        try:
            mode = os.stat(self.path).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeystoreError(
                    KeystoreErrorCode.INSECURE_FILE_MODE,
                    f"keystore file {self.path} has mode {stat.S_IMODE(mode):04o}, must be 0600",
                )
            with open(self.path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise KeystoreError(
                KeystoreErrorCode.BACKEND_UNAVAILABLE,
                f"cannot read keystore file {self.path}: {exc.strerror}",
            ) from None
        if len(data) > MAX_FILE_BYTES:
            raise _tampered(f"is larger than {MAX_FILE_BYTES} bytes")
        return data

    def _open_existing(self, passphrase: bytes) -> _DerivedKeys:
        data = self._read_file()
        params, check, _ = _decode_header(data)
        derived = _derive(passphrase, params)
        if not hmac.compare_digest(derived.check, check):
            raise KeystoreError(
                KeystoreErrorCode.BAD_PASSPHRASE,
                f"wrong passphrase for keystore file {self.path}",
            )
        self._keys = self._decrypt_file(data, derived)
        return derived

    def _reload(self) -> None:
        """Re-read the file (another process may have changed it) with the cached key."""
        data = self._read_file()
        params, check, _ = _decode_header(data)
        if params != self._derived.params or not hmac.compare_digest(check, self._derived.check):
            raise KeystoreError(
                KeystoreErrorCode.KEYSTORE_LOCKED,
                f"keystore file {self.path} was re-keyed by another process; reopen it",
            )
        self._keys = self._decrypt_file(data, self._derived)

    @staticmethod
    def _decrypt_file(data: bytes, derived: _DerivedKeys) -> dict[str, _StoredKey]:
        header, body = data[:_HEADER_SIZE], data[_HEADER_SIZE:]
        nonce = header[_HEADER_SIZE - _DIGEST_SIZE - _NONCE_SIZE : _HEADER_SIZE - _DIGEST_SIZE]
        try:
            payload = AESGCM(derived.encryption_key).decrypt(nonce, body, header)
        except InvalidTag:
            raise _tampered("failed authentication (contents were modified)") from None
        return _decode_payload(payload)

    def _write(self, *, exclusive: bool = False) -> None:
        """Encrypt all keys under a fresh nonce and atomically replace the file."""
        nonce = os.urandom(_NONCE_SIZE)
        header = _encode_header(self._derived, nonce)
        body = AESGCM(self._derived.encryption_key).encrypt(nonce, _encode_payload(self._keys), header)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(tmp, flags, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(header + body)
                f.flush()
                os.fsync(f.fileno())
            if exclusive:
                # Refuse to clobber a file that appeared since we looked.
                os.link(tmp, self.path)
                os.unlink(tmp)
            else:
                os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @contextlib.contextmanager
    def _mutation(self) -> Iterator[None]:
        """Reload under the file lock, let the caller mutate, then persist or roll back."""
        with self._file_lock():
            self._require_open()
            self._reload()
            before = dict(self._keys)
            try:
                yield
                self._write()
            except BaseException:
                self._keys = before
                raise

    def _require_open(self) -> None:
        if self._closed:
            raise KeystoreError(KeystoreErrorCode.KEYSTORE_LOCKED, "local keystore is closed")

    def close(self) -> None:
        """Forget keys and the derived file key; later calls fail with keystore_locked."""
        with self._lock:
            self._keys = {}
            self._closed = True

    def change_passphrase(self, new_passphrase: str | bytes) -> None:
        """Re-encrypt the file under a new passphrase and fresh salt."""
        secret = new_passphrase.encode() if isinstance(new_passphrase, str) else bytes(new_passphrase)
        if len(secret) < MIN_PASSPHRASE_CHARS:
            raise KeystoreError(
                KeystoreErrorCode.INVALID_ARGUMENT,
                f"passphrase was {len(secret)} bytes, must be at least {MIN_PASSPHRASE_CHARS}",
            )
        with self._mutation():
            old = self._derived.params
            self._derived = _derive(secret, _KdfParams(old.log2_n, old.r, old.p, os.urandom(_SALT_SIZE)))

    # -- protocol ------------------------------------------------------------

    def _stored(self, name: str) -> _StoredKey:
        self._require_open()
        self._check_name(name)
        key = self._keys.get(name)
        if key is None:
            raise KeystoreError(KeystoreErrorCode.KEY_NOT_FOUND, f"key {name!r} does not exist")
        return key

    @staticmethod
    def _info(name: str, key: _StoredKey) -> KeyInfo:
        return KeyInfo(name, key.key_type, len(key.secrets_by_version), dict(key.public_keys))

    def create_key(self, name: str, key_type: KeyType) -> KeyInfo:
        """Create key ``name`` of ``key_type`` at version 1."""
        self._check_name(name)
        kind = parse_key_type(key_type)
        with self._mutation():
            if name in self._keys:
                raise KeystoreError(KeystoreErrorCode.KEY_EXISTS, f"key {name!r} already exists")
            if len(self._keys) >= MAX_KEYS:
                raise KeystoreError(
                    KeystoreErrorCode.INVALID_ARGUMENT, f"keystore holds {MAX_KEYS} keys already"
                )
            self._keys[name] = _stored_key(kind, [_generate_secret(kind)])
        return self.key_info(name)

    def key_info(self, name: str) -> KeyInfo:
        """Return type, latest version and public keys of ``name``."""
        with self._lock:
            return self._info(name, self._stored(name))

    def list_keys(self) -> list[KeyInfo]:
        """Return every key, sorted by name."""
        with self._lock:
            self._require_open()
            return [self._info(n, k) for n, k in sorted(self._keys.items())]

    def rotate(self, name: str) -> int:
        """Add a new version of ``name`` and return its number."""
        self._check_name(name)
        with self._mutation():
            key = self._stored(name)
            if len(key.secrets_by_version) >= MAX_VERSIONS_PER_KEY:
                raise KeystoreError(
                    KeystoreErrorCode.INVALID_ARGUMENT,
                    f"key {name!r} has {MAX_VERSIONS_PER_KEY} versions already",
                )
            self._keys[name] = _stored_key(
                key.key_type, [*key.secrets_by_version, _generate_secret(key.key_type)]
            )
            return len(key.secrets_by_version) + 1

    def _secret(self, name: str, version: int) -> bytes:
        with self._lock:
            return self._stored(name).secrets_by_version[version - 1]

    def _sign_raw(self, info: KeyInfo, version: int, data: bytes) -> bytes:
        secret = self._secret(info.name, version)
        if info.key_type is KeyType.ED25519:
            return Ed25519PrivateKey.from_private_bytes(secret).sign(data)
        key = ec.derive_private_key(int.from_bytes(secret, "big"), ec.SECP256K1())
        return low_s_from_der(key.sign(data, ec.ECDSA(Prehashed(hashes.SHA256()))))

    def encrypt(self, name: str, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        """Encrypt ``plaintext`` with the latest version of AES key ``name``."""
        plaintext = require_bytes(plaintext, "plaintext")
        aad = require_bytes(associated_data, "associated data")
        info = self.key_info(name)
        require_key_type(info, "encrypt", KeyType.AES256_GCM)
        version = info.latest_version
        raw = envelope.gcm_seal(
            self._secret(name, version), plaintext, envelope.bound_aad(name, version, aad)
        )
        return envelope.format_blob(_BLOB_PREFIX, version, raw)

    def decrypt(self, name: str, ciphertext: bytes, associated_data: bytes = b"") -> bytes:
        """Decrypt a blob made by ``encrypt`` with the same associated data."""
        aad = require_bytes(associated_data, "associated data")
        info = self.key_info(name)
        require_key_type(info, "decrypt", KeyType.AES256_GCM)
        version, raw = envelope.parse_blob(_BLOB_PREFIX, ciphertext)
        version = resolve_version(info, version)
        return envelope.gcm_open(self._secret(name, version), raw, envelope.bound_aad(name, version, aad))


def read_passphrase(
    environ: Mapping[str, str] | None = None,
    prompt: Callable[[str], str] | None = None,
) -> str:
    """Return the keystore passphrase from ``STRONGROOM_KEYSTORE_PASSPHRASE`` or a prompt.

    The prompt is only used on an interactive terminal; otherwise a missing
    variable is a ``keystore_locked`` error rather than a hang.
    """
    env = os.environ if environ is None else environ
    value = env.get(PASSPHRASE_ENV)
    if value:
        return value
    if prompt is None:
        if not sys.stdin.isatty():
            raise KeystoreError(
                KeystoreErrorCode.KEYSTORE_LOCKED,
                f"no keystore passphrase: set {PASSPHRASE_ENV} or run interactively",
            )
        prompt = getpass.getpass
    return prompt("Keystore passphrase: ")
