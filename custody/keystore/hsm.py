"""PKCS#11 HSM keystore (python-pkcs11), tested on SoftHSM2 2.6.

Keys are generated on the token as non-exportable objects (``CKA_SENSITIVE``
true, ``CKA_EXTRACTABLE`` false). Versions are separate objects labelled
``<name>#v<N>``; the private (or secret) key and its public key share the
label and ``CKA_ID``.

- ed25519: ``CKM_EC_EDWARDS_KEY_PAIR_GEN`` + ``CKM_EDDSA`` (pure Ed25519).
- secp256k1: ``CKM_EC_KEY_PAIR_GEN`` with the named-curve OID 1.3.132.0.10,
  ``CKM_ECDSA`` over a SHA-256 digest computed on the host; the token returns
  raw ``r || s`` and we normalise ``s`` to the low half.
- aes256-gcm: 256-bit ``CKK_AES`` key, ``CKM_AES_GCM`` with a 96-bit random
  nonce and a 128-bit tag, associated data bound to key name and version.

The session is not thread-safe in PKCS#11, so every call holds one lock.
Rotation and creation assume a single writer per token; two processes
creating the same name at once could both succeed.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pkcs11
import pkcs11.exceptions as p11err
from pkcs11 import Attribute, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import KeyType as P11KeyType
from pkcs11.util.ec import encode_named_curve_parameters

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
from custody.keystore.signature import compress_secp256k1_point, low_s_from_raw

MAX_VERSIONS_PER_KEY = 1_000
ED25519_OID = "1.3.101.112"
SECP256K1_OID = "1.3.132.0.10"
_ED25519_PARAMS = encode_named_curve_parameters(ED25519_OID)
_SECP256K1_PARAMS = encode_named_curve_parameters(SECP256K1_OID)
_BLOB_PREFIX = "pkcs11"
_NONCE_SIZE = envelope.GCM_NONCE_SIZE_BYTES
_TAG_BITS = envelope.GCM_TAG_SIZE_BYTES * 8
_SESSION_LOST = (
    p11err.SessionClosed,
    p11err.SessionHandleInvalid,
    p11err.DeviceRemoved,
    p11err.TokenNotPresent,
    p11err.DeviceError,
    p11err.UserNotLoggedIn,
)

T = TypeVar("T")


def _label(name: str, version: int) -> str:
    return f"{name}#v{version}"


def _unwrap_octet_string(data: bytes) -> bytes:
    """Return the contents of a DER OCTET STRING, or ``data`` if it is not one.

    PKCS#11 2.40/3.0 say ``CKA_EC_POINT`` is a DER OCTET STRING; some tokens
    return the bare point, so accept both.
    """
    if len(data) >= 2 and data[0] == 0x04:
        if data[1] < 0x80 and 2 + data[1] == len(data):
            return data[2:]
        if data[1] == 0x81 and len(data) >= 3 and 3 + data[2] == len(data):
            return data[3:]
    return data


class Pkcs11Keystore(KeystoreBackend):
    """Signing and encryption keys held non-exportably on a PKCS#11 token."""

    backend_name = "pkcs11"

    def __init__(self, library_path: str, token_label: str, user_pin: str) -> None:
        self.library_path = library_path
        self.token_label = token_label
        self._pin = user_pin
        self._lock = threading.RLock()
        self._session: Any = None
        with self._lock:
            self._open()

    def __repr__(self) -> str:
        state = "open" if self._session is not None else "closed"
        return f"Pkcs11Keystore(library={self.library_path!r}, token={self.token_label!r}, {state})"

    __str__ = __repr__

    # -- session -------------------------------------------------------------

    def _open(self) -> None:
        try:
            lib = pkcs11.lib(self.library_path)
            token = lib.get_token(token_label=self.token_label)
            try:
                self._session = token.open(user_pin=self._pin, rw=True)
            except p11err.UserAlreadyLoggedIn:
                # Login state is per process and token: another session of ours
                # already logged in, and a new session inherits it.
                self._session = token.open(rw=True)
        except p11err.NoSuchToken:
            raise KeystoreError(
                KeystoreErrorCode.BACKEND_UNAVAILABLE,
                f"PKCS#11 token {self.token_label!r} not found in {self.library_path}",
            ) from None
        except p11err.PinIncorrect:
            raise KeystoreError(
                KeystoreErrorCode.BAD_PASSPHRASE,
                f"wrong PIN for PKCS#11 token {self.token_label!r}",
            ) from None
        except (p11err.PinLocked, p11err.PinExpired):
            raise KeystoreError(
                KeystoreErrorCode.KEYSTORE_LOCKED,
                f"PIN of PKCS#11 token {self.token_label!r} is locked or expired",
            ) from None
        except (p11err.PKCS11Error, OSError, RuntimeError) as exc:
            raise KeystoreError(
                KeystoreErrorCode.BACKEND_UNAVAILABLE,
                f"cannot open PKCS#11 token {self.token_label!r}: {type(exc).__name__}",
            ) from None

    def close(self) -> None:
        """Log out and close the session; later calls fail with keystore_locked."""
        with self._lock:
            if self._session is not None:
                session, self._session = self._session, None
                # C_Logout fails if another session of this process logged out first.
                with contextlib.suppress(p11err.PKCS11Error):
                    session.close()

    def _run(self, operation: str, action: Callable[[Any], T]) -> T:
        """Run ``action(session)`` under the lock, reopening a lost session once."""
        with self._lock:
            for attempt in (1, 2):
                if self._session is None:
                    raise KeystoreError(KeystoreErrorCode.KEYSTORE_LOCKED, "PKCS#11 keystore is closed")
                try:
                    return action(self._session)
                except _SESSION_LOST as exc:
                    if attempt == 2:
                        raise KeystoreError(
                            KeystoreErrorCode.BACKEND_UNAVAILABLE,
                            f"PKCS#11 {operation} failed: {type(exc).__name__}",
                        ) from None
                    self._open()
            raise AssertionError("unreachable")

    # -- object lookup -------------------------------------------------------

    @staticmethod
    def _find(session: Any, label: str, object_class: ObjectClass) -> Any | None:
        found = list(session.get_objects({Attribute.LABEL: label, Attribute.CLASS: object_class}))
        if len(found) > 1:
            raise KeystoreError(
                KeystoreErrorCode.BACKEND_ERROR,
                f"PKCS#11 token holds {len(found)} objects {label!r}",
            )
        return found[0] if found else None

    def _private(self, session: Any, name: str, version: int) -> Any | None:
        label = _label(name, version)
        key = self._find(session, label, ObjectClass.PRIVATE_KEY)
        return key if key is not None else self._find(session, label, ObjectClass.SECRET_KEY)

    @staticmethod
    def _type_of(name: str, key: Any) -> KeyType:
        p11_type = key[Attribute.KEY_TYPE]
        if p11_type == P11KeyType.EC_EDWARDS:
            return KeyType.ED25519
        if p11_type == P11KeyType.EC and bytes(key[Attribute.EC_PARAMS]) == _SECP256K1_PARAMS:
            return KeyType.SECP256K1
        if p11_type == P11KeyType.AES and int(key[Attribute.VALUE_LEN]) == 32:
            return KeyType.AES256_GCM
        raise KeystoreError(
            KeystoreErrorCode.WRONG_KEY_TYPE,
            f"PKCS#11 key {name!r} is a {p11_type!s} key this keystore does not use",
        )

    def _public_key_bytes(self, session: Any, name: str, version: int, key_type: KeyType) -> bytes:
        public = self._find(session, _label(name, version), ObjectClass.PUBLIC_KEY)
        if public is None:
            raise KeystoreError(
                KeystoreErrorCode.BACKEND_ERROR,
                f"PKCS#11 public key {_label(name, version)!r} is missing",
            )
        point = bytes(public[Attribute.EC_POINT])
        bare = len(point) == (65 if key_type is KeyType.SECP256K1 else 32)
        point = point if bare else _unwrap_octet_string(point)
        if key_type is KeyType.SECP256K1:
            return compress_secp256k1_point(point)
        if len(point) != 32:
            raise KeystoreError(KeystoreErrorCode.BACKEND_ERROR, "Ed25519 public point is not 32 bytes")
        return point

    def _info_in(self, session: Any, name: str) -> KeyInfo:
        self._check_name(name)
        first = self._private(session, name, 1)
        if first is None:
            raise KeystoreError(KeystoreErrorCode.KEY_NOT_FOUND, f"key {name!r} does not exist")
        key_type = self._type_of(name, first)
        latest = 1
        while latest < MAX_VERSIONS_PER_KEY and self._private(session, name, latest + 1) is not None:
            latest += 1
        public: dict[int, bytes] = {}
        if key_type.is_signing:
            for version in range(1, latest + 1):
                public[version] = self._public_key_bytes(session, name, version, key_type)
        return KeyInfo(name, key_type, latest, public)

    # -- key management ------------------------------------------------------

    @staticmethod
    def _generate(session: Any, name: str, version: int, key_type: KeyType) -> None:
        label = _label(name, version)
        key_id = label.encode()
        private_template = {
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.PRIVATE: True,
        }
        if key_type is KeyType.AES256_GCM:
            session.generate_key(
                P11KeyType.AES,
                256,
                id=key_id,
                label=label,
                store=True,
                capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                template=private_template,
            )
            return
        ed = key_type is KeyType.ED25519
        params = session.create_domain_parameters(
            P11KeyType.EC_EDWARDS if ed else P11KeyType.EC,
            {Attribute.EC_PARAMS: _ED25519_PARAMS if ed else _SECP256K1_PARAMS},
            local=True,
        )
        params.generate_keypair(
            id=key_id,
            label=label,
            store=True,
            capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
            mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN if ed else Mechanism.EC_KEY_PAIR_GEN,
            private_template=private_template,
        )

    def _generate_checked(self, session: Any, name: str, version: int, key_type: KeyType) -> None:
        try:
            self._generate(session, name, version, key_type)
        except (p11err.MechanismInvalid, p11err.DomainParamsInvalid, p11err.FunctionNotSupported):
            raise KeystoreError(
                KeystoreErrorCode.UNSUPPORTED_KEY_TYPE,
                f"PKCS#11 token {self.token_label!r} cannot generate {key_type.value} keys",
            ) from None

    def create_key(self, name: str, key_type: KeyType) -> KeyInfo:
        """Generate version 1 of ``name`` on the token."""
        self._check_name(name)
        kind = parse_key_type(key_type)

        def create(session: Any) -> KeyInfo:
            if self._private(session, name, 1) is not None:
                raise KeystoreError(KeystoreErrorCode.KEY_EXISTS, f"key {name!r} already exists")
            self._generate_checked(session, name, 1, kind)
            return self._info_in(session, name)

        return self._run(f"create key {name!r}", create)

    def key_info(self, name: str) -> KeyInfo:
        """Return type, latest version and public keys of ``name``."""
        return self._run(f"read key {name!r}", lambda s: self._info_in(s, name))

    def list_keys(self) -> list[KeyInfo]:
        """Return every ``<name>#v1`` key on the token, sorted by name."""

        def names(session: Any) -> list[str]:
            found = set()
            for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.SECRET_KEY):
                for obj in session.get_objects({Attribute.CLASS: object_class}):
                    label = str(obj.label or "")
                    if label.endswith("#v1"):
                        found.add(label[: -len("#v1")])
            return sorted(found)

        infos = []
        for name in self._run("list keys", names):
            try:
                infos.append(self.key_info(name))
            except KeystoreError as exc:
                if exc.code not in (
                    KeystoreErrorCode.INVALID_KEY_NAME,
                    KeystoreErrorCode.WRONG_KEY_TYPE,
                ):
                    raise
        return infos

    def rotate(self, name: str) -> int:
        """Generate version N+1 of ``name`` and return N+1."""

        def rotate(session: Any) -> int:
            info = self._info_in(session, name)
            if info.latest_version >= MAX_VERSIONS_PER_KEY:
                raise KeystoreError(
                    KeystoreErrorCode.INVALID_ARGUMENT,
                    f"key {name!r} has {MAX_VERSIONS_PER_KEY} versions already",
                )
            self._generate_checked(session, name, info.latest_version + 1, info.key_type)
            return info.latest_version + 1

        return self._run(f"rotate key {name!r}", rotate)

    # -- operations ----------------------------------------------------------

    def _key(self, session: Any, name: str, version: int) -> Any:
        key = self._private(session, name, version)
        if key is None:
            raise KeystoreError(
                KeystoreErrorCode.KEY_VERSION_NOT_FOUND, f"key {name!r} has no version {version}"
            )
        return key

    def _sign_raw(self, info: KeyInfo, version: int, data: bytes) -> bytes:
        def sign(session: Any) -> bytes:
            key = self._key(session, info.name, version)
            if info.key_type is KeyType.ED25519:
                return bytes(key.sign(data, mechanism=Mechanism.EDDSA))
            return low_s_from_raw(bytes(key.sign(data, mechanism=Mechanism.ECDSA)))

        return self._run(f"sign with {info.name!r}", sign)

    def encrypt(self, name: str, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        """Encrypt with the latest version of AES key ``name`` on the token."""
        plaintext = require_bytes(plaintext, "plaintext")
        aad = require_bytes(associated_data, "associated data")
        info = self.key_info(name)
        require_key_type(info, "encrypt", KeyType.AES256_GCM)
        version = info.latest_version
        nonce = os.urandom(_NONCE_SIZE)
        params = pkcs11.GCMParams(nonce, envelope.bound_aad(name, version, aad), _TAG_BITS)

        def encrypt(session: Any) -> bytes:
            key = self._key(session, name, version)
            return bytes(key.encrypt(plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=params))

        raw = nonce + self._run(f"encrypt with {name!r}", encrypt)
        return envelope.format_blob(_BLOB_PREFIX, version, raw)

    def decrypt(self, name: str, ciphertext: bytes, associated_data: bytes = b"") -> bytes:
        """Decrypt a ``pkcs11:vN:...`` blob with the same associated data."""
        aad = require_bytes(associated_data, "associated data")
        info = self.key_info(name)
        require_key_type(info, "decrypt", KeyType.AES256_GCM)
        version, raw = envelope.parse_blob(_BLOB_PREFIX, ciphertext)
        version = resolve_version(info, version)
        if len(raw) < _NONCE_SIZE + envelope.GCM_TAG_SIZE_BYTES:
            raise KeystoreError(KeystoreErrorCode.MALFORMED_CIPHERTEXT, "ciphertext is too short")
        params = pkcs11.GCMParams(raw[:_NONCE_SIZE], envelope.bound_aad(name, version, aad), _TAG_BITS)

        def decrypt(session: Any) -> bytes:
            key = self._key(session, name, version)
            try:
                return bytes(
                    key.decrypt(raw[_NONCE_SIZE:], mechanism=Mechanism.AES_GCM, mechanism_param=params)
                )
            except (p11err.EncryptedDataInvalid, p11err.GeneralError, p11err.EncryptedDataLenRange):
                # SoftHSM reports a GCM tag mismatch as CKR_GENERAL_ERROR.
                raise KeystoreError(
                    KeystoreErrorCode.DECRYPTION_FAILED,
                    "ciphertext failed authentication (wrong key, associated data or tampered)",
                ) from None

        return self._run(f"decrypt with {name!r}", decrypt)
