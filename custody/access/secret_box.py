"""Encrypt secrets at rest through the keystore, bound to what they belong to.

The associated data names the purpose and the owner ("api-key:srk_..."), so a
ciphertext copied to another row does not decrypt there.
"""

from __future__ import annotations

from custody.keystore import Keystore, KeystoreError, KeystoreErrorCode, KeyType

ACCESS_KEY_NAME = "access-secrets"


class SecretBox:
    """Seal and open small secrets with the keystore's AES-256-GCM key ``access-secrets``."""

    def __init__(self, keystore: Keystore, key_name: str = ACCESS_KEY_NAME) -> None:
        self._keystore = keystore
        self._key_name = key_name
        self._ready = False

    def seal(self, purpose: str, owner: str, plaintext: bytes) -> str:
        """Return the ciphertext (ASCII) of ``plaintext`` for ``purpose:owner``."""
        self._ensure_key()
        return self._keystore.encrypt(self._key_name, plaintext, _aad(purpose, owner)).decode("ascii")

    def open(self, purpose: str, owner: str, ciphertext: str) -> bytes:
        """Return the plaintext sealed by ``seal`` for the same ``purpose:owner``."""
        return self._keystore.decrypt(self._key_name, ciphertext.encode("ascii"), _aad(purpose, owner))

    def _ensure_key(self) -> None:
        if self._ready:
            return
        try:
            self._keystore.key_info(self._key_name)
        except KeystoreError as exc:
            if exc.code is not KeystoreErrorCode.KEY_NOT_FOUND:
                raise
            try:
                self._keystore.create_key(self._key_name, KeyType.AES256_GCM)
            except KeystoreError as again:
                if again.code is not KeystoreErrorCode.KEY_EXISTS:
                    raise
        self._ready = True


def _aad(purpose: str, owner: str) -> bytes:
    return f"strongroom/access/{purpose}:{owner}".encode()
