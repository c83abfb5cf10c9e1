"""Open the configured keystore backend (local file, Vault Transit or a PKCS#11 HSM).

The keystore is opened lazily, on first use: opening the local file runs
scrypt, and most requests never touch a key.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from custody.keystore import Keystore, KeystoreError, KeystoreErrorCode, LocalKeystore
from strongroom.settings import Settings

PASSPHRASE_FILE_MODE = 0o600
DEMO_PASSPHRASE_BYTES = 32
REOPEN_AFTER_S = 5.0


def keystore_passphrase(settings: Settings) -> str:
    """Return the local keystore passphrase from the environment or the passphrase file."""
    if settings.keystore_passphrase:
        return settings.keystore_passphrase
    if settings.keystore_passphrase_file is not None:
        try:
            return settings.keystore_passphrase_file.read_text().strip()
        except OSError as exc:
            raise KeystoreError(KeystoreErrorCode.KEYSTORE_LOCKED,
                                f"cannot read the keystore passphrase file: {exc.strerror}") from None
    raise KeystoreError(KeystoreErrorCode.KEYSTORE_LOCKED,
                        "no keystore passphrase: set STRONGROOM_KEYSTORE_PASSPHRASE or "
                        "STRONGROOM_KEYSTORE_PASSPHRASE_FILE")


def ensure_demo_passphrase_file(path: Path) -> None:
    """Create a random passphrase file (mode 0600) for the demo if it does not exist yet."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PASSPHRASE_FILE_MODE)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(DEMO_PASSPHRASE_BYTES))


def open_keystore(settings: Settings) -> Keystore:
    """Open the backend named by ``STRONGROOM_KEYSTORE_BACKEND``."""
    backend = settings.keystore_backend
    if backend == "local":
        settings.ensure_data_dir()
        return LocalKeystore.in_data_dir(settings.data_dir, keystore_passphrase(settings))
    if backend == "vault":
        from custody.keystore.vault import VaultKeystore

        env = os.environ
        return VaultKeystore(
            env.get("VAULT_ADDR", ""), token=env.get("VAULT_TOKEN"),
            role_id=env.get("VAULT_ROLE_ID"), secret_id=env.get("VAULT_SECRET_ID"),
            namespace=env.get("VAULT_NAMESPACE"),
            mount_point=env.get("VAULT_TRANSIT_MOUNT", "transit"))
    from custody.keystore.hsm import Pkcs11Keystore

    env = os.environ
    return Pkcs11Keystore(env.get("STRONGROOM_PKCS11_LIBRARY", "/usr/lib/softhsm/libsofthsm2.so"),
                          env.get("STRONGROOM_PKCS11_TOKEN", "strongroom"),
                          env.get("STRONGROOM_PKCS11_PIN", ""))


class LazyKeystore:
    """Open the real keystore on first attribute access, once, and delegate to it."""

    def __init__(self, factory: Callable[[], Keystore],
                 monotonic_s: Callable[[], float] = time.monotonic) -> None:
        self._factory = factory
        self._keystore: Keystore | None = None
        self._lock = threading.Lock()
        self._monotonic_s = monotonic_s
        self._failure: tuple[float, KeystoreError] | None = None

    def get(self) -> Keystore:
        """Return the opened keystore, opening it if needed.

        A failed open (wrong passphrase, tampered file) is remembered for
        `REOPEN_AFTER_S`: every request would otherwise run scrypt again, so
        anyone could keep the CPU busy while the keystore is locked.
        """
        with self._lock:
            if self._keystore is not None:
                return self._keystore
            now_s = self._monotonic_s()
            if self._failure is not None and now_s - self._failure[0] < REOPEN_AFTER_S:
                # A fresh exception: re-raising the stored one would grow its traceback forever.
                raise KeystoreError(self._failure[1].code, self._failure[1].message)
            try:
                self._keystore = self._factory()
            except KeystoreError as exc:
                self._failure = (now_s, exc)
                raise
            self._failure = None
            return self._keystore

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)

    def __repr__(self) -> str:
        return f"LazyKeystore(opened={self._keystore is not None})"
