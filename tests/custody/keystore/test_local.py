"""Local encrypted-file keystore: passphrase, tampering, file handling."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from keystore_contract import TEST_PASSPHRASE, TEST_SCRYPT_LOG2_N, expect_error

from custody.keystore import KeystoreErrorCode, KeyType, LocalKeystore, read_passphrase
from custody.keystore.local import DEFAULT_SCRYPT_LOG2_N, PASSPHRASE_ENV


def open_store(path: Path, passphrase: str = TEST_PASSPHRASE, **kwargs: object) -> LocalKeystore:
    return LocalKeystore(path, passphrase, scrypt_log2_n=TEST_SCRYPT_LOG2_N, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "keystore.srks"
    store = open_store(path)
    store.create_key("checkpoint", KeyType.ED25519)
    store.create_key("seeds", KeyType.AES256_GCM)
    return path


def test_reopen_with_same_passphrase_keeps_keys_and_signatures(store_path: Path) -> None:
    first = open_store(store_path)
    signature = first.sign("checkpoint", b"m")
    again = open_store(store_path)
    assert [k.name for k in again.list_keys()] == ["checkpoint", "seeds"]
    assert again.verify("checkpoint", b"m", signature)
    assert again.public_key("checkpoint") == first.public_key("checkpoint")


def test_open_with_wrong_passphrase_raises_bad_passphrase(store_path: Path) -> None:
    error = expect_error(
        KeystoreErrorCode.BAD_PASSPHRASE, lambda: open_store(store_path, "wrong passphrase!")
    )
    assert "wrong passphrase" in error.message
    assert "wrong passphrase!" not in str(error)


def test_every_flipped_byte_is_detected_as_tampering(store_path: Path) -> None:
    original = store_path.read_bytes()
    for position in range(len(original)):
        tampered = bytearray(original)
        tampered[position] ^= 0x40
        store_path.write_bytes(bytes(tampered))
        expect_error(KeystoreErrorCode.KEYSTORE_TAMPERED, lambda: open_store(store_path))
    store_path.write_bytes(original)
    assert open_store(store_path).key_info("seeds").latest_version == 1


@pytest.mark.parametrize("cut", [0, 10, 103, -1])
def test_truncated_file_is_detected_as_tampering(store_path: Path, cut: int) -> None:
    data = store_path.read_bytes()
    store_path.write_bytes(data[:cut])
    expect_error(KeystoreErrorCode.KEYSTORE_TAMPERED, lambda: open_store(store_path))


def test_appended_bytes_are_detected_as_tampering(store_path: Path) -> None:
    store_path.write_bytes(store_path.read_bytes() + b"\x00")
    expect_error(KeystoreErrorCode.KEYSTORE_TAMPERED, lambda: open_store(store_path))


def test_file_is_created_with_mode_0600(store_path: Path) -> None:
    assert stat.S_IMODE(os.stat(store_path).st_mode) == 0o600
    open_store(store_path).rotate("seeds")  # rewritten through a temp file
    assert stat.S_IMODE(os.stat(store_path).st_mode) == 0o600
    leftovers = [p.name for p in store_path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_group_or_world_readable_file_is_refused(store_path: Path) -> None:
    os.chmod(store_path, 0o644)
    expect_error(KeystoreErrorCode.INSECURE_FILE_MODE, lambda: open_store(store_path))


def test_missing_file_with_create_false_raises_backend_unavailable(tmp_path: Path) -> None:
    expect_error(
        KeystoreErrorCode.BACKEND_UNAVAILABLE,
        lambda: open_store(tmp_path / "absent.srks", create=False),
    )


def test_file_does_not_contain_key_material_in_clear(tmp_path: Path) -> None:
    path = tmp_path / "ks.srks"
    store = open_store(path)
    store.create_key("checkpoint", KeyType.ED25519)
    data = path.read_bytes()
    assert b"checkpoint" not in data
    assert b"ed25519" not in data


def test_default_scrypt_cost_is_at_least_2_pow_15(tmp_path: Path) -> None:
    assert DEFAULT_SCRYPT_LOG2_N >= 15
    path = tmp_path / "ks.srks"
    LocalKeystore(path, TEST_PASSPHRASE)
    assert path.read_bytes()[8] == DEFAULT_SCRYPT_LOG2_N  # log2(N) byte of the header


def test_scrypt_cost_below_floor_is_rejected(tmp_path: Path) -> None:
    expect_error(
        KeystoreErrorCode.INVALID_ARGUMENT,
        lambda: LocalKeystore(tmp_path / "ks", TEST_PASSPHRASE, scrypt_log2_n=4),
    )


def test_short_passphrase_is_rejected(tmp_path: Path) -> None:
    expect_error(KeystoreErrorCode.INVALID_ARGUMENT, lambda: open_store(tmp_path / "ks", "short"))


def test_two_instances_on_one_file_do_not_lose_keys(store_path: Path) -> None:
    first, second = open_store(store_path), open_store(store_path)
    first.create_key("a", KeyType.ED25519)
    second.create_key("b", KeyType.ED25519)
    assert {k.name for k in open_store(store_path).list_keys()} == {"checkpoint", "seeds", "a", "b"}


def test_failed_mutation_leaves_file_unchanged(store_path: Path) -> None:
    before = open_store(store_path)
    expect_error(KeystoreErrorCode.KEY_EXISTS, lambda: before.create_key("seeds", KeyType.ED25519))
    assert [k.name for k in before.list_keys()] == ["checkpoint", "seeds"]


def test_change_passphrase_old_one_stops_working(store_path: Path) -> None:
    store = open_store(store_path)
    blob = store.encrypt("seeds", b"secret")
    store.change_passphrase("a brand new passphrase")
    expect_error(KeystoreErrorCode.BAD_PASSPHRASE, lambda: open_store(store_path))
    reopened = open_store(store_path, "a brand new passphrase")
    assert reopened.decrypt("seeds", blob) == b"secret"


def test_closed_keystore_raises_keystore_locked(store_path: Path) -> None:
    store = open_store(store_path)
    store.close()
    expect_error(KeystoreErrorCode.KEYSTORE_LOCKED, lambda: store.sign("checkpoint", b"m"))
    assert "closed" in repr(store)


def test_read_passphrase_prefers_environment() -> None:
    def prompt(_: str) -> str:
        raise AssertionError("must not prompt")

    assert read_passphrase({PASSPHRASE_ENV: "from-env-123"}, prompt) == "from-env-123"


def test_read_passphrase_prompts_when_environment_is_empty() -> None:
    assert read_passphrase({}, lambda _: "typed-123") == "typed-123"


def test_read_passphrase_without_tty_or_env_raises_keystore_locked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    error = expect_error(KeystoreErrorCode.KEYSTORE_LOCKED, lambda: read_passphrase({}))
    assert PASSPHRASE_ENV in error.message
