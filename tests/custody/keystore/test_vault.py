"""Vault Transit backend against the in-process stand-in: auth, sealing, retries, wire format."""

from __future__ import annotations

import base64
import logging
import socket
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from keystore_contract import expect_error, no_sleep
from vault_standin import VaultStandin

from custody.keystore import KeystoreErrorCode, KeyType
from custody.keystore.vault import VAULT_MAX_ATTEMPTS, VaultKeystore


class SleepRecorder:
    def __init__(self) -> None:
        self.delays_s: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays_s.append(seconds)


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def vault(vault_standin: VaultStandin, sleeps: SleepRecorder) -> VaultKeystore:
    return VaultKeystore(vault_standin.url, token=vault_standin.root_token, sleep=sleeps)


@pytest.fixture
def approle_standin(vault_standin: VaultStandin) -> Iterator[VaultStandin]:
    vault_standin.add_approle("role-strongroom", "secret-id-0123")
    yield vault_standin


def test_sealed_vault_raises_vault_sealed_without_retrying(
    vault: VaultKeystore, vault_standin: VaultStandin, sleeps: SleepRecorder
) -> None:
    vault.create_key("checkpoint", KeyType.ED25519)
    vault_standin.sealed = True
    expect_error(KeystoreErrorCode.VAULT_SEALED, lambda: vault.sign("checkpoint", b"m"))
    expect_error(KeystoreErrorCode.VAULT_SEALED, lambda: vault.key_info("checkpoint"))
    expect_error(KeystoreErrorCode.VAULT_SEALED, vault.health)
    assert sleeps.delays_s == []
    vault_standin.sealed = False
    assert vault.health()["sealed"] is False


def test_denied_path_raises_permission_denied(vault: VaultKeystore, vault_standin: VaultStandin) -> None:
    vault.create_key("checkpoint", KeyType.ED25519)
    vault_standin.deny = lambda method, path: path.startswith("transit/sign/")
    error = expect_error(KeystoreErrorCode.PERMISSION_DENIED, lambda: vault.sign("checkpoint", b"m"))
    assert "permission denied" in error.message
    assert vault.public_key("checkpoint")  # reading is still allowed


def test_invalid_token_raises_permission_denied(vault_standin: VaultStandin) -> None:
    vault = VaultKeystore(vault_standin.url, token="hvs.not-a-token", sleep=no_sleep)
    expect_error(KeystoreErrorCode.PERMISSION_DENIED, lambda: vault.key_info("checkpoint"))


def test_transient_500s_are_retried_then_succeed(
    vault: VaultKeystore, vault_standin: VaultStandin, sleeps: SleepRecorder
) -> None:
    vault.create_key("checkpoint", KeyType.ED25519)
    vault_standin.fail_next(VAULT_MAX_ATTEMPTS - 1, status=500)
    signature = vault.sign("checkpoint", b"m")
    assert vault.verify("checkpoint", b"m", signature)
    assert len(sleeps.delays_s) == VAULT_MAX_ATTEMPTS - 1
    assert sleeps.delays_s == sorted(sleeps.delays_s)  # exponential backoff


@pytest.mark.parametrize("status", [500, 502, 503, 429, 504])
def test_retries_exhausted_raise_backend_unavailable(
    vault: VaultKeystore, vault_standin: VaultStandin, sleeps: SleepRecorder, status: int
) -> None:
    vault.create_key("seeds", KeyType.AES256_GCM)
    vault_standin.fail_next(VAULT_MAX_ATTEMPTS, status=status)
    error = expect_error(KeystoreErrorCode.BACKEND_UNAVAILABLE, lambda: vault.encrypt("seeds", b"p"))
    assert f"{VAULT_MAX_ATTEMPTS} attempt" in error.message
    assert len(sleeps.delays_s) == VAULT_MAX_ATTEMPTS - 1


def test_retry_warnings_are_logged_without_payloads(
    vault: VaultKeystore, vault_standin: VaultStandin, caplog: pytest.LogCaptureFixture
) -> None:
    vault.create_key("seeds", KeyType.AES256_GCM)
    vault_standin.fail_next(1)
    with caplog.at_level(logging.WARNING, logger="custody.keystore.vault"):
        vault.encrypt("seeds", b"TOP-SECRET-PLAINTEXT")
    assert any("retrying" in r.getMessage() for r in caplog.records)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "TOP-SECRET" not in logged
    assert base64.b64encode(b"TOP-SECRET-PLAINTEXT").decode() not in logged


def test_rotate_is_not_retried(
    vault: VaultKeystore, vault_standin: VaultStandin, sleeps: SleepRecorder
) -> None:
    vault.create_key("seeds", KeyType.AES256_GCM)
    vault_standin.fail_next(1)
    expect_error(KeystoreErrorCode.BACKEND_UNAVAILABLE, lambda: vault.rotate("seeds"))
    assert sleeps.delays_s == []
    assert vault.key_info("seeds").latest_version == 1


def test_unreachable_vault_raises_backend_unavailable(sleeps: SleepRecorder) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before use: nothing listens there
    vault = VaultKeystore(f"http://127.0.0.1:{port}", token="t", sleep=sleeps, timeout_s=1)
    expect_error(KeystoreErrorCode.BACKEND_UNAVAILABLE, lambda: vault.key_info("checkpoint"))
    assert len(sleeps.delays_s) == VAULT_MAX_ATTEMPTS - 1


def test_approle_login_then_operations_use_issued_token(approle_standin: VaultStandin) -> None:
    vault = VaultKeystore(
        approle_standin.url, role_id="role-strongroom", secret_id="secret-id-0123", sleep=no_sleep
    )
    vault.create_key("checkpoint", KeyType.ED25519)
    assert ("POST", "/v1/auth/approle/login") in approle_standin.requests
    assert "secret-id-0123" not in repr(vault)


def test_approle_expired_token_logs_in_again(approle_standin: VaultStandin) -> None:
    vault = VaultKeystore(
        approle_standin.url, role_id="role-strongroom", secret_id="secret-id-0123", sleep=no_sleep
    )
    vault.create_key("checkpoint", KeyType.ED25519)
    approle_standin.revoke_all_tokens()
    assert vault.key_info("checkpoint").latest_version == 1
    logins = [r for r in approle_standin.requests if r[1] == "/v1/auth/approle/login"]
    assert len(logins) == 2


def test_approle_bad_secret_raises_permission_denied(approle_standin: VaultStandin) -> None:
    vault = VaultKeystore(approle_standin.url, role_id="role-strongroom", secret_id="wrong", sleep=no_sleep)
    error = expect_error(KeystoreErrorCode.PERMISSION_DENIED, lambda: vault.key_info("checkpoint"))
    assert "wrong" not in error.message


def test_token_and_approle_together_are_rejected(vault_standin: VaultStandin) -> None:
    expect_error(
        KeystoreErrorCode.INVALID_ARGUMENT,
        lambda: VaultKeystore(vault_standin.url, token="t", role_id="r", secret_id="s"),
    )


def test_namespace_is_sent_as_header() -> None:
    with VaultStandin(namespace="team-custody") as standin:
        plain = VaultKeystore(standin.url, token=standin.root_token, sleep=no_sleep)
        expect_error(KeystoreErrorCode.PERMISSION_DENIED, lambda: plain.list_keys())
        scoped = VaultKeystore(
            standin.url, token=standin.root_token, namespace="team-custody", sleep=no_sleep
        )
        scoped.create_key("checkpoint", KeyType.ED25519)
        assert [k.name for k in scoped.list_keys()] == ["checkpoint"]


def test_custom_mount_point(vault_standin: VaultStandin) -> None:
    with VaultStandin(transit_mount="keys-transit") as standin:
        vault = VaultKeystore(
            standin.url, token=standin.root_token, mount_point="keys-transit", sleep=no_sleep
        )
        vault.create_key("checkpoint", KeyType.ED25519)
        assert any(path.startswith("/v1/keys-transit/") for _, path in standin.requests)
        wrong = VaultKeystore(standin.url, token=standin.root_token, sleep=no_sleep)
        expect_error(KeystoreErrorCode.BACKEND_ERROR, lambda: wrong.list_keys())


def test_ciphertext_uses_vault_wire_format(vault: VaultKeystore, vault_standin: VaultStandin) -> None:
    vault.create_key("seeds", KeyType.AES256_GCM)
    blob = vault.encrypt("seeds", b"plain", b"aad")
    prefix, version, payload = blob.decode().split(":")
    assert (prefix, version) == ("vault", "v1")
    raw = base64.b64decode(payload)
    key = vault_standin.key_secret("seeds", 1)
    assert AESGCM(key).decrypt(raw[:12], raw[12:], b"aad") == b"plain"


def test_secp256k1_is_refused_with_reason(vault: VaultKeystore) -> None:
    error = expect_error(
        KeystoreErrorCode.UNSUPPORTED_KEY_TYPE, lambda: vault.create_key("hot", KeyType.SECP256K1)
    )
    assert "Transit" in error.message


def test_foreign_transit_key_type_raises_wrong_key_type(
    vault: VaultKeystore, vault_standin: VaultStandin
) -> None:
    vault.create_key("seeds", KeyType.AES256_GCM)
    vault_standin._keys["seeds"].type = "ecdsa-p256"  # as if made by another tool
    expect_error(KeystoreErrorCode.WRONG_KEY_TYPE, lambda: vault.key_info("seeds"))


def test_list_keys_on_empty_mount_is_empty(vault: VaultKeystore) -> None:
    assert vault.list_keys() == []
