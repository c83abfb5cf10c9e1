"""Keystore: named, versioned keys whose private material never leaves the store.

Backends: ``LocalKeystore`` (embedded default, passphrase-encrypted file),
``custody.keystore.vault.VaultKeystore`` (HashiCorp Vault Transit) and
``custody.keystore.hsm.Pkcs11Keystore`` (PKCS#11 HSM). The Vault and HSM
modules are not imported here so that importing the protocol does not load
hvac or the PKCS#11 bindings.
"""

from custody.keystore.envelope import SealedSeed, blob_version, open_seed, seal_seed
from custody.keystore.errors import KeystoreError, KeystoreErrorCode
from custody.keystore.local import LocalKeystore, read_passphrase
from custody.keystore.protocol import (
    KEY_NAME_PATTERN,
    DataKey,
    KeyInfo,
    Keystore,
    KeyType,
    Signature,
    validate_key_name,
)
from custody.keystore.signature import verify_secp256k1_digest, verify_signature

__all__ = [
    "KEY_NAME_PATTERN",
    "DataKey",
    "KeyInfo",
    "KeyType",
    "Keystore",
    "KeystoreError",
    "KeystoreErrorCode",
    "LocalKeystore",
    "SealedSeed",
    "Signature",
    "blob_version",
    "open_seed",
    "read_passphrase",
    "seal_seed",
    "validate_key_name",
    "verify_secp256k1_digest",
    "verify_signature",
]
