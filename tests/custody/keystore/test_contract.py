"""The keystore contract suite over every backend: local, Vault stand-in, SoftHSM."""

from keystore_contract import KeystoreContract


class TestKeystoreContract(KeystoreContract):
    """Runs once per ``backend`` parameter (see conftest.py)."""
