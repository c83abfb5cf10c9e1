"""Result codes and the single exception type of the keystore subsystem.

The keystore owns the 46xx block of the custody (4xxx) range. Codes are
stable: callers and API clients may match on them, so never renumber one.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class KeystoreErrorCode(IntEnum):
    """Stable result codes of the keystore (custody range, 46xx block)."""

    INVALID_KEY_NAME = 4601
    INVALID_ARGUMENT = 4602
    KEY_NOT_FOUND = 4610
    KEY_EXISTS = 4611
    KEY_VERSION_NOT_FOUND = 4612
    WRONG_KEY_TYPE = 4613
    UNSUPPORTED_KEY_TYPE = 4614
    DECRYPTION_FAILED = 4620
    MALFORMED_CIPHERTEXT = 4621
    BAD_PASSPHRASE = 4630
    KEYSTORE_TAMPERED = 4631
    INSECURE_FILE_MODE = 4632
    KEYSTORE_LOCKED = 4633
    BACKEND_UNAVAILABLE = 4640
    PERMISSION_DENIED = 4641
    VAULT_SEALED = 4642
    BACKEND_ERROR = 4643

    @property
    def error(self) -> str:
        """Return the snake_case name used in API error bodies."""
        return self.name.lower()


class KeystoreError(Exception):
    """Raise for every keystore failure; carries a stable code.

    Messages name the key and what was wrong with the request, never key
    material, plaintext, passphrases, PINs or tokens.
    """

    def __init__(self, code: KeystoreErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def error(self) -> str:
        """Return the snake_case error name, e.g. ``key_not_found``."""
        return self.code.error

    def to_dict(self) -> dict[str, Any]:
        """Return the API error body ``{"code", "error", "message"}``."""
        return {"code": int(self.code), "error": self.error, "message": self.message}

    def __str__(self) -> str:
        return f"{self.error} ({int(self.code)}): {self.message}"

    def __repr__(self) -> str:
        return f"KeystoreError({self.code.name}, {self.message!r})"
