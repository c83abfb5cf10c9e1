"""Fixtures for the keystore tests: one contract suite, every backend.

``backend`` is parametrised over local, vault (in-process stand-in) and
pkcs11 (SoftHSM2 with a token directory private to this test run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Helper modules (the Vault stand-in, the contract suite) live next to this file.
sys.path.insert(0, str(Path(__file__).parent))

from keystore_contract import (
    SOFTHSM_LIBRARY_CANDIDATES,
    SOFTHSM_PIN,
    SOFTHSM_SO_PIN,
    SOFTHSM_TOKEN,
    TEST_PASSPHRASE,
    TEST_SCRYPT_LOG2_N,
    BackendUnderTest,
    SoftHsm,
    find_softhsm_library,
    no_sleep,
)
from vault_standin import VaultStandin

from custody.keystore import LocalKeystore
from custody.keystore.protocol import Keystore


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """Initialise a SoftHSM2 token in a temp directory via a temp SOFTHSM2_CONF."""
    library = find_softhsm_library()
    if library is None:
        pytest.skip(
            "SoftHSM2 library not found (looked in "
            + ", ".join(SOFTHSM_LIBRARY_CANDIDATES)
            + "); install it with scripts/install-softhsm.sh"
        )
    util = shutil.which("softhsm2-util")
    if util is None:
        pytest.skip("softhsm2-util not on PATH; install the softhsm2 package")
    root = tmp_path_factory.mktemp("softhsm")
    token_dir = root / "tokens"
    token_dir.mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {token_dir}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        subprocess.run(
            [
                util,
                "--init-token",
                "--free",
                "--label",
                SOFTHSM_TOKEN,
                "--pin",
                SOFTHSM_PIN,
                "--so-pin",
                SOFTHSM_SO_PIN,
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        )
        import pkcs11

        loaded = getattr(pkcs11, "_loaded", {}).get(library)
        if loaded is not None:
            loaded.reinitialize()  # SoftHSM reads SOFTHSM2_CONF at C_Initialize.
        yield SoftHsm(library, SOFTHSM_TOKEN, SOFTHSM_PIN, conf)
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture
def vault_standin() -> Iterator[VaultStandin]:
    with VaultStandin() as standin:
        yield standin


@pytest.fixture
def local_keystore(tmp_path: Path) -> LocalKeystore:
    return LocalKeystore(tmp_path / "keystore.srks", TEST_PASSPHRASE, scrypt_log2_n=TEST_SCRYPT_LOG2_N)


@pytest.fixture(params=["local", "vault", "pkcs11"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BackendUnderTest]:
    """Yield each keystore backend in turn, freshly set up."""
    if request.param == "local":
        yield BackendUnderTest(request.getfixturevalue("local_keystore"), [TEST_PASSPHRASE])
    elif request.param == "vault":
        from custody.keystore.vault import VaultKeystore

        standin: VaultStandin = request.getfixturevalue("vault_standin")
        keystore = VaultKeystore(standin.url, token=standin.root_token, sleep=no_sleep)
        yield BackendUnderTest(keystore, [standin.root_token], supports_secp256k1=False)
    else:
        from custody.keystore.hsm import Pkcs11Keystore

        hsm: SoftHsm = request.getfixturevalue("softhsm")
        keystore = Pkcs11Keystore(hsm.library, hsm.token_label, hsm.user_pin)
        try:
            yield BackendUnderTest(keystore, [hsm.user_pin])
        finally:
            keystore.close()


@pytest.fixture
def keystore(backend: BackendUnderTest) -> Keystore:
    return backend.keystore


@pytest.fixture
def new_name() -> Callable[[str], str]:
    """Return a factory of unique key names (keys outlive tests on shared HSMs/Vaults)."""

    def make(label: str = "key") -> str:
        return f"t-{uuid.uuid4().hex[:12]}-{label}"

    return make
