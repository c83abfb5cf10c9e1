"""The offline keystore: encrypted BIP39 seed, clear errors for every failure."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from signer.keystore import create_keystore, keystore_fingerprint, load_seed, restore_keystore
from signer.results import SignerCode, SignerError

from .helpers import PASSPHRASE, TEST_SCRYPT_LOG2_N, mnemonic, seed


def _code(call: object) -> SignerCode:
    with pytest.raises(SignerError) as error:
        call()  # type: ignore[operator]
    return error.value.code


def test_create_then_load_returns_the_mnemonic_seed(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    created = create_keystore(path, PASSPHRASE, scrypt_log2_n=TEST_SCRYPT_LOG2_N)
    assert len(created.mnemonic.split()) == 24
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert created.mnemonic not in path.read_text()
    assert keystore_fingerprint(path) == created.fingerprint
    restored = tmp_path / "restored.json"
    assert (
        restore_keystore(restored, PASSPHRASE, created.mnemonic, scrypt_log2_n=TEST_SCRYPT_LOG2_N)
        == created.fingerprint
    )
    assert load_seed(path, PASSPHRASE) == load_seed(restored, PASSPHRASE)


def test_restore_from_mnemonic_gives_the_same_seed(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    restore_keystore(
        path, PASSPHRASE, "  " + mnemonic(0).upper().lower() + "\n", scrypt_log2_n=TEST_SCRYPT_LOG2_N
    )
    assert load_seed(path, PASSPHRASE) == seed(0)


def test_wrong_passphrase_refused_passphrase_wrong(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    restore_keystore(path, PASSPHRASE, mnemonic(0), scrypt_log2_n=TEST_SCRYPT_LOG2_N)
    assert _code(lambda: load_seed(path, PASSPHRASE + "!")) is SignerCode.PASSPHRASE_WRONG


def _rewrite(path: Path, field: str, value: object) -> None:
    document = json.loads(path.read_text())
    document[field] = value
    os.chmod(path, 0o600)
    path.write_text(json.dumps(document, sort_keys=True, separators=(",", ":")))


def test_modified_ciphertext_refused_tampered(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    restore_keystore(path, PASSPHRASE, mnemonic(0), scrypt_log2_n=TEST_SCRYPT_LOG2_N)
    ciphertext = json.loads(path.read_text())["ciphertext"]
    _rewrite(path, "ciphertext", ("0" if ciphertext[0] != "0" else "1") + ciphertext[1:])
    assert _code(lambda: load_seed(path, PASSPHRASE)) is SignerCode.KEYSTORE_TAMPERED


def test_modified_fingerprint_refused_tampered(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    restore_keystore(path, PASSPHRASE, mnemonic(0), scrypt_log2_n=TEST_SCRYPT_LOG2_N)
    _rewrite(path, "fingerprint", "00000000")
    assert _code(lambda: load_seed(path, PASSPHRASE)) is SignerCode.KEYSTORE_TAMPERED


def test_garbage_file_refused_malformed(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    restore_keystore(path, PASSPHRASE, mnemonic(0), scrypt_log2_n=TEST_SCRYPT_LOG2_N)
    path.write_text('{"format":"strongroom-signer-keystore","version":1}')
    assert _code(lambda: load_seed(path, PASSPHRASE)) is SignerCode.KEYSTORE_MALFORMED


def test_group_readable_keystore_refused(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    restore_keystore(path, PASSPHRASE, mnemonic(0), scrypt_log2_n=TEST_SCRYPT_LOG2_N)
    os.chmod(path, 0o644)
    assert _code(lambda: load_seed(path, PASSPHRASE)) is SignerCode.KEYSTORE_PERMISSIONS


def test_existing_keystore_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    restore_keystore(path, PASSPHRASE, mnemonic(0), scrypt_log2_n=TEST_SCRYPT_LOG2_N)
    before = path.read_bytes()
    code = _code(lambda: restore_keystore(path, PASSPHRASE, mnemonic(1), scrypt_log2_n=TEST_SCRYPT_LOG2_N))
    assert code is SignerCode.KEYSTORE_EXISTS
    assert path.read_bytes() == before


def test_invalid_mnemonic_and_short_passphrase_refused(tmp_path: Path) -> None:
    words = mnemonic(0).split()
    swapped = " ".join([words[1], words[0], *words[2:]])
    code = _code(
        lambda: restore_keystore(tmp_path / "a", PASSPHRASE, swapped, scrypt_log2_n=TEST_SCRYPT_LOG2_N)
    )
    assert code is SignerCode.MNEMONIC_INVALID
    code = _code(
        lambda: restore_keystore(tmp_path / "b", "short", mnemonic(0), scrypt_log2_n=TEST_SCRYPT_LOG2_N)
    )
    assert code is SignerCode.PASSPHRASE_WRONG
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_missing_keystore_refused_missing(tmp_path: Path) -> None:
    assert _code(lambda: load_seed(tmp_path / "nope.json", PASSPHRASE)) is SignerCode.KEYSTORE_MISSING
