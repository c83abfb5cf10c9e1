"""An in-process stand-in for the parts of Vault's HTTP API the keystore uses.

It follows the documented request/response shapes of Vault 1.15+:
``{"data": {...}}`` envelopes, ``{"errors": [...]}`` error bodies, 403
"permission denied" for a missing/unknown ``X-Vault-Token`` or a denied path,
503 "Vault is sealed" when sealed, base64 inputs and plaintexts,
``vault:vN:<base64>`` signatures and ciphertexts (AES-GCM: nonce || ct || tag),
and Transit quirks such as create-as-upsert and encrypt creating a missing key.

Endpoints: sys/health, auth/approle/login, transit keys (create, read, list,
config, delete, rotate), sign, verify, encrypt, decrypt, datakey/{plaintext,wrapped}.

Test hooks: ``sealed``, ``fail_next(count, status)`` for transient errors,
``deny`` (method, path) -> bool for permission denied, ``revoke_token``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import re
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

ROOT_TOKEN = "hvs.standin-root-token"
SUPPORTED_TYPES = ("aes256-gcm96", "ed25519")


class _VaultHTTPError(Exception):
    def __init__(self, status: int, errors: list[str]) -> None:
        super().__init__(status, errors)
        self.status = status
        self.errors = errors


def _bad_request(message: str) -> _VaultHTTPError:
    return _VaultHTTPError(400, [message])


def _b64decode(value: object, what: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise _bad_request(f"failed to base64-decode {what}") from None


@dataclass
class _KeyVersion:
    secret: bytes
    created: dt.datetime


@dataclass
class _TransitKey:
    name: str
    type: str
    versions: list[_KeyVersion] = field(default_factory=list)
    deletion_allowed: bool = False
    exportable: bool = False
    allow_plaintext_backup: bool = False

    @property
    def latest_version(self) -> int:
        return len(self.versions)

    def add_version(self) -> None:
        if self.type == "ed25519":
            secret = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
        else:
            secret = os.urandom(32)
        self.versions.append(_KeyVersion(secret, dt.datetime.now(dt.UTC)))

    def policy(self) -> dict[str, Any]:
        keys: dict[str, Any] = {}
        for i, v in enumerate(self.versions, start=1):
            if self.type == "ed25519":
                public = (
                    Ed25519PrivateKey.from_private_bytes(v.secret)
                    .public_key()
                    .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
                )
                keys[str(i)] = {
                    "name": "ed25519",
                    "public_key": base64.b64encode(public).decode(),
                    "creation_time": v.created.isoformat().replace("+00:00", "Z"),
                    "certificate_chain": "",
                }
            else:
                keys[str(i)] = int(v.created.timestamp())
        signing = self.type == "ed25519"
        return {
            "name": self.name,
            "type": self.type,
            "derived": False,
            "deletion_allowed": self.deletion_allowed,
            "exportable": self.exportable,
            "allow_plaintext_backup": self.allow_plaintext_backup,
            "keys": keys,
            "latest_version": self.latest_version,
            "min_available_version": 0,
            "min_decryption_version": 1,
            "min_encryption_version": 0,
            "supports_encryption": not signing,
            "supports_decryption": not signing,
            "supports_derivation": True,
            "supports_signing": signing,
            "auto_rotate_period": 0,
            "imported_key": False,
        }

    def secret(self, version: int) -> bytes:
        return self.versions[version - 1].secret


class _QuietHandler(WSGIRequestHandler):
    def log(self, type: str, message: str, *args: Any) -> None:
        pass


class VaultStandin:
    """A threaded HTTP server on 127.0.0.1 speaking a subset of Vault's API."""

    def __init__(
        self,
        *,
        root_token: str = ROOT_TOKEN,
        transit_mount: str = "transit",
        approle_mount: str = "approle",
        namespace: str | None = None,
    ) -> None:
        self.root_token = root_token
        self.transit_mount = transit_mount
        self.approle_mount = approle_mount
        self.namespace = namespace
        self.sealed = False
        self.deny: Callable[[str, str], bool] = lambda method, path: False
        self.requests: list[tuple[str, str]] = []
        self._tokens: set[str] = {root_token}
        self._approles: dict[str, str] = {}
        self._keys: dict[str, _TransitKey] = {}
        self._faults: list[int] = []
        self._lock = threading.Lock()
        self._server: BaseWSGIServer = make_server(
            "127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    # -- lifecycle and hooks -------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> VaultStandin:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> VaultStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_approle(self, role_id: str, secret_id: str) -> None:
        self._approles[role_id] = secret_id

    def revoke_token(self, token: str) -> None:
        with self._lock:
            self._tokens.discard(token)

    def revoke_all_tokens(self, keep_root: bool = True) -> None:
        with self._lock:
            self._tokens = {self.root_token} if keep_root else set()

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` requests with ``status`` before handling them."""
        with self._lock:
            self._faults.extend([status] * count)

    def key_secret(self, name: str, version: int) -> bytes:
        """Return raw key material, for tests that check the wire format only."""
        return self._keys[name].secret(version)

    # -- WSGI plumbing -------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        try:
            status, body = self._handle(request)
        except _VaultHTTPError as exc:
            status, body = exc.status, {"errors": exc.errors}
        if status == 204:
            response = Response(status=204)
        else:
            response = Response(json.dumps(body), status=status, mimetype="application/json")
        return response(environ, start_response)

    def _handle(self, request: Request) -> tuple[int, Any]:
        method = request.method.upper()
        if method == "GET" and request.args.get("list") == "true":
            method = "LIST"
        path = request.path
        with self._lock:
            self.requests.append((method, path))
            fault = self._faults.pop(0) if self._faults else None
        if fault is not None:
            raise _VaultHTTPError(fault, ["internal error"] if fault >= 500 else ["injected"])
        if not path.startswith("/v1/"):
            raise _VaultHTTPError(404, [])
        rel = path[len("/v1/") :]
        if rel == "sys/health":
            return self._health()
        if self.sealed:
            raise _VaultHTTPError(503, ["Vault is sealed"])
        body = self._json_body(request)
        if rel == f"auth/{self.approle_mount}/login" and method in ("POST", "PUT"):
            return self._approle_login(body)
        token = request.headers.get("X-Vault-Token", "")
        namespace_ok = self.namespace is None or (
            request.headers.get("X-Vault-Namespace", "").strip("/") == self.namespace
        )
        with self._lock:
            token_ok = token in self._tokens
        if not token_ok or not namespace_ok or self.deny(method, rel):
            raise _VaultHTTPError(403, ["permission denied"])
        prefix = f"{self.transit_mount}/"
        if not rel.startswith(prefix):
            raise _VaultHTTPError(404, [f'no handler for route "{rel}". route entry not found.'])
        with self._lock:
            return self._transit(method, rel[len(prefix) :], body)

    @staticmethod
    def _json_body(request: Request) -> dict[str, Any]:
        if request.method.upper() not in ("POST", "PUT"):
            return {}
        raw = request.get_data()
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            raise _bad_request("failed to parse JSON input") from None
        if not isinstance(body, dict):
            raise _bad_request("failed to parse JSON input")
        return body

    @staticmethod
    def _ok(data: dict[str, Any] | None, warnings: list[str] | None = None) -> tuple[int, Any]:
        return 200, {
            "request_id": str(uuid.uuid4()),
            "lease_id": "",
            "renewable": False,
            "lease_duration": 0,
            "data": data,
            "wrap_info": None,
            "warnings": warnings,
            "auth": None,
            "mount_type": "transit",
        }

    # -- sys and auth --------------------------------------------------------

    def _health(self) -> tuple[int, Any]:
        body = {
            "initialized": True,
            "sealed": self.sealed,
            "standby": self.sealed,
            "performance_standby": False,
            "replication_performance_mode": "disabled",
            "replication_dr_mode": "disabled",
            "server_time_utc": int(dt.datetime.now(dt.UTC).timestamp()),
            "version": "1.17.0+standin",
            "cluster_name": "vault-standin",
            "cluster_id": "00000000-0000-0000-0000-000000000000",
        }
        return (503 if self.sealed else 200), body

    def _approle_login(self, body: dict[str, Any]) -> tuple[int, Any]:
        role_id = str(body.get("role_id", ""))
        if role_id not in self._approles:
            raise _bad_request("invalid role or secret ID")
        if not secrets.compare_digest(str(body.get("secret_id", "")), self._approles[role_id]):
            raise _bad_request("invalid role or secret ID")
        token = "hvs." + secrets.token_urlsafe(24)
        with self._lock:
            self._tokens.add(token)
        return 200, {
            "request_id": str(uuid.uuid4()),
            "lease_id": "",
            "renewable": False,
            "lease_duration": 0,
            "data": None,
            "wrap_info": None,
            "warnings": None,
            "auth": {
                "client_token": token,
                "accessor": secrets.token_urlsafe(18),
                "policies": ["default", "strongroom-keystore"],
                "token_policies": ["default", "strongroom-keystore"],
                "metadata": {"role_name": "strongroom"},
                "lease_duration": 1200,
                "renewable": True,
                "entity_id": str(uuid.uuid4()),
                "token_type": "service",
                "orphan": True,
            },
        }

    # -- transit -------------------------------------------------------------

    _ROUTES = (
        (re.compile(r"^keys$"), "keys_list"),
        (re.compile(r"^keys/(?P<name>[\w.-]+)$"), "keys"),
        (re.compile(r"^keys/(?P<name>[\w.-]+)/rotate$"), "rotate"),
        (re.compile(r"^keys/(?P<name>[\w.-]+)/config$"), "config"),
        (re.compile(r"^sign/(?P<name>[\w.-]+)$"), "sign"),
        (re.compile(r"^verify/(?P<name>[\w.-]+)$"), "verify"),
        (re.compile(r"^encrypt/(?P<name>[\w.-]+)$"), "encrypt"),
        (re.compile(r"^decrypt/(?P<name>[\w.-]+)$"), "decrypt"),
        (re.compile(r"^datakey/(?P<kind>[\w]+)/(?P<name>[\w.-]+)$"), "datakey"),
    )

    def _transit(self, method: str, rel: str, body: dict[str, Any]) -> tuple[int, Any]:
        for pattern, action in self._ROUTES:
            match = pattern.fullmatch(rel)
            if match is None:
                continue
            handler = getattr(self, f"_transit_{action}")
            result: tuple[int, Any] = handler(method, body, **match.groupdict())
            return result
        raise _VaultHTTPError(404, [f'no handler for route "{rel}". route entry not found.'])

    @staticmethod
    def _require(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise _VaultHTTPError(405, ["unsupported operation"])

    def _transit_keys_list(self, method: str, body: dict[str, Any]) -> tuple[int, Any]:
        self._require(method, "LIST")
        if not self._keys:
            raise _VaultHTTPError(404, [])
        return self._ok({"keys": sorted(self._keys)})

    def _transit_keys(self, method: str, body: dict[str, Any], name: str) -> tuple[int, Any]:
        if method == "GET":
            key = self._keys.get(name)
            if key is None:
                raise _VaultHTTPError(404, [])
            return self._ok(key.policy())
        if method == "DELETE":
            key = self._keys.get(name)
            if key is not None and not key.deletion_allowed:
                raise _bad_request("deletion is not allowed for this key")
            self._keys.pop(name, None)
            return 204, None
        self._require(method, "POST", "PUT")
        key_type = str(body.get("type") or "aes256-gcm96")
        if key_type not in SUPPORTED_TYPES:
            raise _bad_request(f"unknown key type {key_type}")
        existing = self._keys.get(name)
        if existing is not None:
            return self._ok(existing.policy(), [f"key {name} already existed"])
        key = _TransitKey(
            name,
            key_type,
            exportable=bool(body.get("exportable", False)),
            allow_plaintext_backup=bool(body.get("allow_plaintext_backup", False)),
        )
        key.add_version()
        self._keys[name] = key
        return self._ok(key.policy())

    def _transit_rotate(self, method: str, body: dict[str, Any], name: str) -> tuple[int, Any]:
        self._require(method, "POST", "PUT")
        key = self._keys.get(name)
        if key is None:
            raise _bad_request("key not found")
        key.add_version()
        return self._ok(key.policy())

    def _transit_config(self, method: str, body: dict[str, Any], name: str) -> tuple[int, Any]:
        self._require(method, "POST", "PUT")
        key = self._keys.get(name)
        if key is None:
            raise _bad_request("no existing key named " + name + " could be found")
        if "deletion_allowed" in body:
            key.deletion_allowed = bool(body["deletion_allowed"])
        return self._ok(key.policy())

    def _version(self, key: _TransitKey, body: dict[str, Any], action: str) -> int:
        requested = int(body.get("key_version") or 0)
        if requested > key.latest_version:
            raise _bad_request(f"requested version for {action} is higher than the latest key version")
        return requested or key.latest_version

    def _transit_sign(self, method: str, body: dict[str, Any], name: str) -> tuple[int, Any]:
        self._require(method, "POST", "PUT")
        key = self._keys.get(name)
        if key is None:
            raise _bad_request("signing key not found")
        if key.type != "ed25519":
            raise _bad_request(f"key type {key.type} does not support signing")
        data = _b64decode(body.get("input", ""), "input")
        version = self._version(key, body, "signing")
        signature = Ed25519PrivateKey.from_private_bytes(key.secret(version)).sign(data)
        text = f"vault:v{version}:" + base64.b64encode(signature).decode()
        return self._ok({"signature": text, "key_version": version})

    @staticmethod
    def _split(text: str) -> tuple[int, bytes]:
        match = re.fullmatch(r"vault:v(\d+):(.*)", text, flags=re.DOTALL)
        if match is None:
            raise _bad_request("invalid ciphertext: no prefix")
        return int(match.group(1)), _b64decode(match.group(2), "ciphertext")

    def _transit_verify(self, method: str, body: dict[str, Any], name: str) -> tuple[int, Any]:
        self._require(method, "POST", "PUT")
        key = self._keys.get(name)
        if key is None:
            raise _bad_request("encryption key not found")
        if key.type != "ed25519":
            raise _bad_request(f"key type {key.type} does not support verification")
        data = _b64decode(body.get("input", ""), "input")
        if "signature" not in body:
            raise _bad_request("neither a 'signature' nor an 'hmac' were given to verify")
        version, signature = self._split(str(body["signature"]))
        if not 1 <= version <= key.latest_version:
            raise _bad_request("invalid key version")
        public = Ed25519PrivateKey.from_private_bytes(key.secret(version)).public_key()
        try:
            public.verify(signature, data)
            valid = True
        except InvalidSignature:
            valid = False
        return self._ok({"valid": valid})

    def _aad(self, body: dict[str, Any]) -> bytes | None:
        raw = body.get("associated_data")
        return _b64decode(raw, "associated_data") if raw else None

    def _seal(self, key: _TransitKey, version: int, plaintext: bytes, aad: bytes | None) -> str:
        nonce = os.urandom(12)
        ct = AESGCM(key.secret(version)).encrypt(nonce, plaintext, aad)
        return f"vault:v{version}:" + base64.b64encode(nonce + ct).decode()

    def _transit_encrypt(self, method: str, body: dict[str, Any], name: str) -> tuple[int, Any]:
        self._require(method, "POST", "PUT")
        plaintext = _b64decode(body.get("plaintext", ""), "plaintext")
        key = self._keys.get(name)
        if key is None:
            # Transit's encrypt is an upsert: it creates a missing aes256-gcm96 key.
            key = _TransitKey(name, str(body.get("type") or "aes256-gcm96"))
            key.add_version()
            self._keys[name] = key
        if key.type not in ("aes256-gcm96",):
            raise _bad_request(f"key type {key.type} does not support encryption")
        version = self._version(key, body, "encryption")
        text = self._seal(key, version, plaintext, self._aad(body))
        return self._ok({"ciphertext": text, "key_version": version})

    def _transit_decrypt(self, method: str, body: dict[str, Any], name: str) -> tuple[int, Any]:
        self._require(method, "POST", "PUT")
        key = self._keys.get(name)
        if key is None:
            raise _bad_request("encryption key not found")
        if key.type != "aes256-gcm96":
            raise _bad_request(f"key type {key.type} does not support decryption")
        version, raw = self._split(str(body.get("ciphertext", "")))
        if not 1 <= version <= key.latest_version:
            raise _bad_request("invalid ciphertext: version is too new")
        if len(raw) < 12 + 16:
            raise _bad_request("invalid ciphertext: too short")
        try:
            plaintext = AESGCM(key.secret(version)).decrypt(raw[:12], raw[12:], self._aad(body))
        except InvalidTag:
            raise _bad_request("cipher: message authentication failed") from None
        return self._ok({"plaintext": base64.b64encode(plaintext).decode()})

    def _transit_datakey(self, method: str, body: dict[str, Any], kind: str, name: str) -> tuple[int, Any]:
        self._require(method, "POST", "PUT")
        if kind not in ("plaintext", "wrapped"):
            raise _bad_request("Invalid path, must be 'plaintext' or 'wrapped'")
        key = self._keys.get(name)
        if key is None:
            raise _bad_request("encryption key not found")
        bits = int(body.get("bits") or 256)
        if bits not in (128, 256, 512):
            raise _bad_request("invalid bit length")
        if key.type != "aes256-gcm96":
            raise _bad_request(f"key type {key.type} does not support encryption")
        data_key = os.urandom(bits // 8)
        version = key.latest_version
        # Like Vault, wrap the raw key bytes; decrypt returns them base64-encoded.
        text = self._seal(key, version, data_key, None)
        data: dict[str, Any] = {"ciphertext": text, "key_version": version}
        if kind == "plaintext":
            data["plaintext"] = base64.b64encode(data_key).decode()
        return self._ok(data)
