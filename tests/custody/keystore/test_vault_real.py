"""The keystore contract against a real Vault (opt-in).

Runs when VAULT_ADDR and VAULT_TOKEN are set, with the Transit engine enabled
at VAULT_TRANSIT_MOUNT (default ``transit``); VAULT_NAMESPACE is optional.
Keys the tests create (named ``t-<random>-...``) are deleted afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import hvac
import pytest
from keystore_contract import BackendUnderTest, KeystoreContract, no_sleep

from custody.keystore.vault import VaultKeystore

VAULT_ADDR = os.environ.get("VAULT_ADDR")
VAULT_TOKEN = os.environ.get("VAULT_TOKEN")
VAULT_NAMESPACE = os.environ.get("VAULT_NAMESPACE") or None
VAULT_TRANSIT_MOUNT = os.environ.get("VAULT_TRANSIT_MOUNT", "transit")


def _delete_test_keys(client: hvac.Client, keep: set[str]) -> None:
    try:
        listed = client.secrets.transit.list_keys(mount_point=VAULT_TRANSIT_MOUNT)
    except hvac.exceptions.InvalidPath:
        return
    for name in listed["data"]["keys"]:
        if name in keep or not name.startswith("t-"):
            continue
        client.secrets.transit.update_key_configuration(
            name=name, deletion_allowed=True, mount_point=VAULT_TRANSIT_MOUNT
        )
        client.secrets.transit.delete_key(name=name, mount_point=VAULT_TRANSIT_MOUNT)


@pytest.fixture
def backend() -> Iterator[BackendUnderTest]:
    if not (VAULT_ADDR and VAULT_TOKEN):
        pytest.skip("real Vault tests need VAULT_ADDR and VAULT_TOKEN (Transit engine enabled)")
    client = hvac.Client(url=VAULT_ADDR, token=VAULT_TOKEN, namespace=VAULT_NAMESPACE)
    try:
        before = set(client.secrets.transit.list_keys(mount_point=VAULT_TRANSIT_MOUNT)["data"]["keys"])
    except hvac.exceptions.InvalidPath:
        before = set()
    keystore = VaultKeystore(
        VAULT_ADDR,
        token=VAULT_TOKEN,
        namespace=VAULT_NAMESPACE,
        mount_point=VAULT_TRANSIT_MOUNT,
        sleep=no_sleep,
    )
    try:
        yield BackendUnderTest(keystore, [VAULT_TOKEN], supports_secp256k1=False)
    finally:
        _delete_test_keys(client, before)


class TestRealVaultContract(KeystoreContract):
    """The shared contract suite, against ``VAULT_ADDR``."""
