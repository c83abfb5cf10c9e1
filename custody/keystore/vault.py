"""HashiCorp Vault Transit keystore (via hvac).

Key types map to Transit types: ``ed25519`` -> ``ed25519`` and
``aes256-gcm`` -> ``aes256-gcm96``. Transit has no secp256k1 key type
(it offers ecdsa-p256/p384/p521 only), so secp256k1 keys are refused with
``unsupported_key_type``; use the local or PKCS#11 backend for hot-wallet keys.

Error mapping: 403 -> ``permission_denied`` (after one AppRole re-login),
503 "Vault is sealed" -> ``vault_sealed``, missing key -> ``key_not_found``,
AEAD failure -> ``decryption_failed``. Connection errors, timeouts, 429, 500,
502, 504 and unsealed 503s are retried with capped exponential backoff and
jitter, at most ``VAULT_MAX_ATTEMPTS`` times, then ``backend_unavailable``.
``rotate`` is not idempotent and is never retried: after a failure, read
``key_info`` and decide.
"""

from __future__ import annotations

import base64
import binascii
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests

from custody.keystore import envelope
from custody.keystore.backend import KeystoreBackend
from custody.keystore.errors import KeystoreError, KeystoreErrorCode
from custody.keystore.protocol import (
    DATA_KEY_SIZE_BYTES,
    DataKey,
    KeyInfo,
    KeyType,
    Signature,
    parse_key_type,
    require_bytes,
    require_key_type,
)

log = logging.getLogger(__name__)

VAULT_MAX_ATTEMPTS = 4
"""Total tries per operation (1 + 3 retries) for transient failures."""
VAULT_BACKOFF_BASE_S = 0.1
VAULT_BACKOFF_MAX_S = 2.0
VAULT_TIMEOUT_S = 10.0
MAX_LISTED_KEYS = 10_000

_TRANSIT_TYPES = {KeyType.ED25519: "ed25519", KeyType.AES256_GCM: "aes256-gcm96"}
_FROM_TRANSIT = {v: k for k, v in _TRANSIT_TYPES.items()}
_BLOB_PREFIX = "vault"
_TRANSIENT_HTTP = (
    hvac.exceptions.InternalServerError,
    hvac.exceptions.BadGateway,
    hvac.exceptions.RateLimitExceeded,
    hvac.exceptions.UnexpectedError,
)
_TRANSIENT_NETWORK = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)

T = TypeVar("T")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise KeystoreError(
            KeystoreErrorCode.BACKEND_ERROR, f"Vault returned invalid base64 for {what}"
        ) from None


def _vault_message(exc: hvac.exceptions.VaultError) -> str:
    errors = exc.errors or ([exc.args[0]] if exc.args and exc.args[0] else [])
    text = "; ".join(str(e).strip() for e in errors)
    return text[:300] or type(exc).__name__


def _parse_signature(name: str, text: object) -> Signature:
    version, raw = envelope.parse_blob(_BLOB_PREFIX, str(text).encode())
    return Signature(name, version, KeyType.ED25519, raw)


class VaultKeystore(KeystoreBackend):
    """Keys in Vault's Transit engine; private key material never leaves Vault.

    Authenticate with ``token``, or with AppRole ``role_id`` + ``secret_id``
    (logged in lazily, and again once if Vault answers 403 because the token
    expired). ``namespace`` is sent as ``X-Vault-Namespace`` (Vault Enterprise).
    """

    backend_name = "vault"

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        role_id: str | None = None,
        secret_id: str | None = None,
        namespace: str | None = None,
        mount_point: str = "transit",
        approle_mount_point: str = "approle",
        verify: bool | str = True,
        timeout_s: float = VAULT_TIMEOUT_S,
        max_attempts: int = VAULT_MAX_ATTEMPTS,
        backoff_base_s: float = VAULT_BACKOFF_BASE_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if (token is None) == (role_id is None):
            raise KeystoreError(
                KeystoreErrorCode.INVALID_ARGUMENT,
                "give exactly one of token or role_id (+ secret_id) for Vault auth",
            )
        if not 1 <= max_attempts <= 10:
            raise KeystoreError(
                KeystoreErrorCode.INVALID_ARGUMENT,
                f"max_attempts was {max_attempts}, must be 1..10",
            )
        self.url = url
        self.mount_point = mount_point
        self.namespace = namespace
        self._approle = (role_id, secret_id) if role_id is not None else None
        self._approle_mount = approle_mount_point
        self._max_attempts = max_attempts
        self._backoff_base_s = backoff_base_s
        self._sleep = sleep
        self._login_lock = threading.Lock()
        self._types: dict[str, KeyType] = {}
        self._client = hvac.Client(
            url=url, token=token, namespace=namespace, verify=verify, timeout=timeout_s
        )

    def __repr__(self) -> str:
        auth = "approle" if self._approle else "token"
        return f"VaultKeystore(url={self.url!r}, mount_point={self.mount_point!r}, auth={auth})"

    __str__ = __repr__

    # -- transport: auth, retries, error mapping -----------------------------

    def login(self) -> None:
        """Log in with AppRole now (no-op for token auth)."""
        if self._approle is None:
            return
        role_id, secret_id = self._approle
        with self._login_lock:
            try:
                self._call(
                    "approle login",
                    lambda: self._client.auth.approle.login(
                        role_id=role_id, secret_id=secret_id, mount_point=self._approle_mount
                    ),
                    authenticate=False,
                )
            except KeystoreError as exc:
                # Vault answers a bad role_id/secret_id with 400 "invalid role or secret ID".
                if exc.code is KeystoreErrorCode.BACKEND_ERROR:
                    raise KeystoreError(
                        KeystoreErrorCode.PERMISSION_DENIED,
                        f"Vault AppRole login rejected: {exc.message}",
                    ) from None
                raise

    def _call(
        self,
        operation: str,
        request: Callable[[], T],
        *,
        key_name: str | None = None,
        retry: bool = True,
        authenticate: bool = True,
    ) -> T:
        """Run ``request`` with bounded retries; map Vault failures to keystore errors."""
        relogged = False
        attempts = self._max_attempts if retry else 1
        failures = 0
        while True:
            try:
                if authenticate and self._approle is not None and not self._client.token:
                    self.login()
                return request()
            except hvac.exceptions.Forbidden as exc:
                if authenticate and self._approle is not None and not relogged:
                    # An expired AppRole token also yields 403: log in once more.
                    relogged = True
                    self._client.token = None
                    continue
                raise KeystoreError(
                    KeystoreErrorCode.PERMISSION_DENIED,
                    f"Vault denied {operation}: {_vault_message(exc)}",
                ) from None
            except hvac.exceptions.Unauthorized as exc:
                raise KeystoreError(
                    KeystoreErrorCode.PERMISSION_DENIED,
                    f"Vault rejected the credentials for {operation}: {_vault_message(exc)}",
                ) from None
            except hvac.exceptions.VaultDown as exc:
                if "sealed" in _vault_message(exc).lower():
                    raise KeystoreError(
                        KeystoreErrorCode.VAULT_SEALED, f"Vault is sealed; {operation} refused"
                    ) from None
                failure = f"VaultDown: {_vault_message(exc)}"
            except hvac.exceptions.VaultNotInitialized:
                raise KeystoreError(
                    KeystoreErrorCode.BACKEND_UNAVAILABLE, f"Vault is not initialized ({operation})"
                ) from None
            except hvac.exceptions.InvalidPath as exc:
                raise self._not_found(operation, key_name, exc) from None
            except hvac.exceptions.InvalidRequest as exc:
                raise self._bad_request(operation, key_name, exc) from None
            except _TRANSIENT_HTTP as exc:
                failure = f"{type(exc).__name__}: {_vault_message(exc)}"
            except _TRANSIENT_NETWORK as exc:
                failure = type(exc).__name__
            failures += 1
            if failures >= attempts:
                raise KeystoreError(
                    KeystoreErrorCode.BACKEND_UNAVAILABLE,
                    f"Vault {operation} failed after {failures} attempt(s): {failure}",
                )
            delay_s = min(VAULT_BACKOFF_MAX_S, self._backoff_base_s * 2 ** (failures - 1))
            delay_s *= random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not crypto)
            log.warning(
                "vault %s failed (attempt %d/%d): %s; retrying in %.2fs",
                operation,
                failures,
                attempts,
                failure,
                delay_s,
            )
            self._sleep(delay_s)

    @staticmethod
    def _not_found(operation: str, key_name: str | None, exc: hvac.exceptions.VaultError) -> KeystoreError:
        if key_name is not None and "no handler" not in _vault_message(exc).lower():
            return KeystoreError(KeystoreErrorCode.KEY_NOT_FOUND, f"key {key_name!r} does not exist")
        return KeystoreError(
            KeystoreErrorCode.BACKEND_ERROR,
            f"Vault path for {operation} not found (is the mount enabled?): {_vault_message(exc)}",
        )

    @staticmethod
    def _bad_request(operation: str, key_name: str | None, exc: hvac.exceptions.VaultError) -> KeystoreError:
        message = _vault_message(exc)
        lowered = message.lower()
        if "not found" in lowered and key_name is not None:
            return KeystoreError(KeystoreErrorCode.KEY_NOT_FOUND, f"key {key_name!r} does not exist")
        if "authentication failed" in lowered:
            return KeystoreError(
                KeystoreErrorCode.DECRYPTION_FAILED,
                "ciphertext failed authentication (wrong key, associated data or tampered)",
            )
        if "invalid ciphertext" in lowered and "version" not in lowered:
            return KeystoreError(KeystoreErrorCode.MALFORMED_CIPHERTEXT, f"Vault {operation}: {message}")
        if "version" in lowered:
            return KeystoreError(KeystoreErrorCode.KEY_VERSION_NOT_FOUND, f"Vault {operation}: {message}")
        return KeystoreError(KeystoreErrorCode.BACKEND_ERROR, f"Vault rejected {operation}: {message}")

    @staticmethod
    def _data(response: object, operation: str) -> dict[str, Any]:
        data = response.get("data") if isinstance(response, dict) else None
        if not isinstance(data, dict):
            raise KeystoreError(KeystoreErrorCode.BACKEND_ERROR, f"Vault {operation} returned no data object")
        return data

    def health(self) -> dict[str, Any]:
        """Return ``/sys/health``; raise ``vault_sealed`` or ``backend_unavailable``."""
        response = self._call(
            "health check",
            lambda: self._client.sys.read_health_status(method="GET"),
            authenticate=False,
        )
        body = response.json() if isinstance(response, requests.Response) else response
        if not isinstance(body, dict):
            raise KeystoreError(KeystoreErrorCode.BACKEND_ERROR, "Vault health returned no JSON")
        if body.get("sealed"):
            raise KeystoreError(KeystoreErrorCode.VAULT_SEALED, "Vault is sealed")
        return body

    # -- keys ----------------------------------------------------------------

    def _read(self, name: str) -> KeyInfo:
        self._check_name(name)
        response = self._call(
            f"read key {name!r}",
            lambda: self._client.secrets.transit.read_key(name=name, mount_point=self.mount_point),
            key_name=name,
        )
        return self._parse_key(name, self._data(response, "read key"))

    def _parse_key(self, name: str, data: dict[str, Any]) -> KeyInfo:
        transit_type = str(data.get("type"))
        key_type = _FROM_TRANSIT.get(transit_type)
        if key_type is None:
            raise KeystoreError(
                KeystoreErrorCode.WRONG_KEY_TYPE,
                f"Vault key {name!r} has Transit type {transit_type!r}, which this keystore does not use",
            )
        latest = int(data["latest_version"])
        public: dict[int, bytes] = {}
        if key_type is KeyType.ED25519:
            for version, entry in dict(data.get("keys") or {}).items():
                public[int(version)] = _unb64(entry["public_key"], "public key")
        self._types[name] = key_type
        return KeyInfo(name, key_type, latest, public)

    def _key_type(self, name: str) -> KeyType:
        """Return the type of ``name`` (cached: a Transit key's type never changes)."""
        self._check_name(name)
        cached = self._types.get(name)
        return cached if cached is not None else self._read(name).key_type

    def create_key(self, name: str, key_type: KeyType) -> KeyInfo:
        """Create Transit key ``name``; non-exportable, no plaintext backup.

        Vault's create is an upsert, so we read first to report ``key_exists``;
        two processes racing to create the same name may both succeed.
        """
        self._check_name(name)
        kind = parse_key_type(key_type)
        transit_type = _TRANSIT_TYPES.get(kind)
        if transit_type is None:
            raise KeystoreError(
                KeystoreErrorCode.UNSUPPORTED_KEY_TYPE,
                f"Vault Transit has no {kind.value} keys; use the local or PKCS#11 keystore",
            )
        try:
            self._read(name)
        except KeystoreError as exc:
            if exc.code is not KeystoreErrorCode.KEY_NOT_FOUND:
                raise
        else:
            raise KeystoreError(KeystoreErrorCode.KEY_EXISTS, f"key {name!r} already exists")
        self._call(
            f"create key {name!r}",
            lambda: self._client.secrets.transit.create_key(
                name=name,
                key_type=transit_type,
                exportable=False,
                allow_plaintext_backup=False,
                mount_point=self.mount_point,
            ),
        )
        info = self._read(name)
        if info.key_type is not kind:
            raise KeystoreError(KeystoreErrorCode.KEY_EXISTS, f"key {name!r} already exists")
        return info

    def key_info(self, name: str) -> KeyInfo:
        """Return type, latest version and public keys of ``name``."""
        return self._read(name)

    def list_keys(self) -> list[KeyInfo]:
        """Return every Transit key of a type this keystore uses, sorted by name."""
        try:
            response = self._call(
                "list keys",
                lambda: self._client.secrets.transit.list_keys(mount_point=self.mount_point),
                key_name="",
            )
        except KeystoreError as exc:
            if exc.code is KeystoreErrorCode.KEY_NOT_FOUND:
                return []  # Vault answers 404 to LIST when there are no keys.
            raise
        names = sorted(str(n) for n in self._data(response, "list keys").get("keys", []))
        infos = []
        for name in names[:MAX_LISTED_KEYS]:
            try:
                infos.append(self._read(name))
            except KeystoreError as exc:
                if exc.code not in (
                    KeystoreErrorCode.WRONG_KEY_TYPE,
                    KeystoreErrorCode.INVALID_KEY_NAME,
                ):
                    raise
        return infos

    def rotate(self, name: str) -> int:
        """Rotate ``name`` and return the new version (not retried: not idempotent)."""
        self._key_type(name)
        self._call(
            f"rotate key {name!r}",
            lambda: self._client.secrets.transit.rotate_key(name=name, mount_point=self.mount_point),
            key_name=name,
            retry=False,
        )
        return self._read(name).latest_version

    # -- signing -------------------------------------------------------------

    def _sign_raw(self, info: KeyInfo, version: int, data: bytes) -> bytes:
        return self.sign(info.name, data, version).value

    def sign(self, name: str, message: bytes, version: int | None = None) -> Signature:
        """Sign ``message`` with Ed25519 key ``name`` in Vault."""
        message = require_bytes(message, "message")
        key_type = self._key_type(name)
        require_key_type(KeyInfo(name, key_type, 1), "sign", KeyType.ED25519, KeyType.SECP256K1)
        if version is not None and (isinstance(version, bool) or version < 1):
            raise KeystoreError(
                KeystoreErrorCode.KEY_VERSION_NOT_FOUND, f"version was {version!r}, must be >= 1"
            )
        response = self._call(
            f"sign with {name!r}",
            lambda: self._client.secrets.transit.sign_data(
                name=name,
                hash_input=_b64(message),
                key_version=version,
                mount_point=self.mount_point,
            ),
            key_name=name,
        )
        return _parse_signature(name, self._data(response, "sign").get("signature", ""))

    def verify(self, name: str, message: bytes, signature: Signature) -> bool:
        """Verify ``signature`` with Vault's verify endpoint."""
        message = require_bytes(message, "message")
        key_type = self._key_type(name)
        require_key_type(KeyInfo(name, key_type, 1), "verify", KeyType.ED25519, KeyType.SECP256K1)
        if signature.key_name != name or signature.key_type is not key_type:
            return False
        text = envelope.format_blob(_BLOB_PREFIX, signature.key_version, signature.value).decode()
        response = self._call(
            f"verify with {name!r}",
            lambda: self._client.secrets.transit.verify_signed_data(
                name=name, hash_input=_b64(message), signature=text, mount_point=self.mount_point
            ),
            key_name=name,
        )
        return self._data(response, "verify").get("valid") is True

    # -- encryption ----------------------------------------------------------

    def _require_aes(self, name: str, operation: str) -> None:
        require_key_type(KeyInfo(name, self._key_type(name), 1), operation, KeyType.AES256_GCM)

    def encrypt(self, name: str, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        """Encrypt with Transit (aes256-gcm96); returns ``vault:vN:...`` bytes.

        The key is checked to exist first: Transit's encrypt would otherwise
        silently create a new key of that name.
        """
        plaintext = require_bytes(plaintext, "plaintext")
        aad = require_bytes(associated_data, "associated data")
        self._require_aes(name, "encrypt")
        response = self._call(
            f"encrypt with {name!r}",
            lambda: self._client.secrets.transit.encrypt_data(
                name=name,
                plaintext=_b64(plaintext),
                associated_data=_b64(aad) if aad else None,
                mount_point=self.mount_point,
            ),
            key_name=name,
        )
        ciphertext = str(self._data(response, "encrypt").get("ciphertext", "")).encode()
        envelope.parse_blob(_BLOB_PREFIX, ciphertext)
        return ciphertext

    def decrypt(self, name: str, ciphertext: bytes, associated_data: bytes = b"") -> bytes:
        """Decrypt a ``vault:vN:...`` blob with the same associated data."""
        aad = require_bytes(associated_data, "associated data")
        envelope.parse_blob(_BLOB_PREFIX, ciphertext)
        self._require_aes(name, "decrypt")
        text = bytes(ciphertext).decode("ascii")
        response = self._call(
            f"decrypt with {name!r}",
            lambda: self._client.secrets.transit.decrypt_data(
                name=name,
                ciphertext=text,
                associated_data=_b64(aad) if aad else None,
                mount_point=self.mount_point,
            ),
            key_name=name,
        )
        return _unb64(self._data(response, "decrypt").get("plaintext", ""), "plaintext")

    def _datakey(self, name: str, kind: str) -> dict[str, Any]:
        self._require_aes(name, "generate_data_key")
        response = self._call(
            f"generate {kind} data key with {name!r}",
            lambda: self._client.secrets.transit.generate_data_key(
                name=name, key_type=kind, bits=DATA_KEY_SIZE_BYTES * 8, mount_point=self.mount_point
            ),
            key_name=name,
        )
        return self._data(response, "datakey")

    def generate_data_key(self, name: str) -> DataKey:
        """Return a fresh data key from ``transit/datakey/plaintext``."""
        data = self._datakey(name, "plaintext")
        wrapped = str(data.get("ciphertext", "")).encode()
        version, _ = envelope.parse_blob(_BLOB_PREFIX, wrapped)
        return DataKey(name, version, _unb64(data.get("plaintext", ""), "data key"), wrapped)

    def generate_wrapped_data_key(self, name: str) -> bytes:
        """Return only a wrapped data key (``transit/datakey/wrapped``)."""
        wrapped = str(self._datakey(name, "wrapped").get("ciphertext", "")).encode()
        envelope.parse_blob(_BLOB_PREFIX, wrapped)
        return wrapped

    def decrypt_data_key(self, name: str, wrapped: bytes) -> DataKey:
        """Unwrap a Transit data key (Transit data keys carry no associated data)."""
        version, _ = envelope.parse_blob(_BLOB_PREFIX, wrapped)
        return DataKey(name, version, self.decrypt(name, wrapped), bytes(wrapped))
