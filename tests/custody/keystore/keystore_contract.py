"""The keystore contract: behaviour every backend must show.

Test modules subclass ``KeystoreContract`` and provide a ``backend`` fixture
yielding a ``BackendUnderTest``; see conftest.py (local, Vault stand-in,
SoftHSM) and test_vault_real.py (a real Vault).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from custody.keystore import (
    KeyInfo,
    Keystore,
    KeystoreError,
    KeystoreErrorCode,
    KeyType,
    SealedSeed,
    Signature,
    blob_version,
    verify_signature,
)
from custody.keystore.signature import SECP256K1_HALF_ORDER, rs_from_bytes

TEST_PASSPHRASE = "correct horse battery staple"
TEST_SCRYPT_LOG2_N = 10  # the floor; production default is 2**15
SOFTHSM_PIN = "246810"
SOFTHSM_SO_PIN = "13579111"
SOFTHSM_TOKEN = "strongroom-test"
SOFTHSM_LIBRARY_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)


@dataclass
class BackendUnderTest:
    """A keystore plus facts the contract tests need about it."""

    keystore: Keystore
    secrets: list[str] = field(default_factory=list)
    supports_secp256k1: bool = True


def find_softhsm_library() -> str | None:
    """Return the SoftHSM2 PKCS#11 library path (``SOFTHSM2_LIB`` overrides)."""
    override = os.environ.get("SOFTHSM2_LIB")
    if override:
        return override if Path(override).exists() else None
    return next((p for p in SOFTHSM_LIBRARY_CANDIDATES if Path(p).exists()), None)


@dataclass(frozen=True)
class SoftHsm:
    library: str
    token_label: str
    user_pin: str
    conf_path: Path


def no_sleep(_seconds: float) -> None:
    """Replace backoff sleeps so retry tests run instantly."""


NewName = Callable[[str], str]
SIGNING_TYPES = [KeyType.ED25519, KeyType.SECP256K1]
PUBLIC_KEY_SIZES = {KeyType.ED25519: 32, KeyType.SECP256K1: 33}


def expect_error(code: KeystoreErrorCode, action: Callable[[], object]) -> KeystoreError:
    """Run ``action`` and return the ``KeystoreError`` it raised with ``code``."""
    with pytest.raises(KeystoreError) as caught:
        action()
    assert caught.value.code is code, f"expected {code.name}, got {caught.value!r}"
    return caught.value


def flip_base64_char(blob: bytes) -> bytes:
    """Return ``blob`` with one byte of its base64 payload changed."""
    prefix, _, payload = blob.rpartition(b":")
    raw = bytearray(base64.b64decode(payload))
    raw[len(raw) // 2] ^= 0x01
    return prefix + b":" + base64.b64encode(bytes(raw))


class KeystoreContract:
    """Contract tests; ``backend`` and ``new_name`` fixtures come from the caller."""

    @pytest.fixture
    def signing_key(self, backend: BackendUnderTest, new_name: NewName) -> Callable[[KeyType], str]:
        def make(key_type: KeyType) -> str:
            if key_type is KeyType.SECP256K1 and not backend.supports_secp256k1:
                pytest.skip(f"{backend.keystore.backend_name} has no secp256k1 keys (by design)")
            name = new_name(key_type.value)
            backend.keystore.create_key(name, key_type)
            return name

        return make

    @pytest.fixture
    def aes_key(self, keystore: Keystore, new_name: NewName) -> str:
        name = new_name("dek")
        keystore.create_key(name, KeyType.AES256_GCM)
        return name

    # -- creation and metadata -----------------------------------------------

    def test_keystore_satisfies_protocol(self, keystore: Keystore) -> None:
        assert isinstance(keystore, Keystore)

    @pytest.mark.parametrize("key_type", list(KeyType))
    def test_create_key_new_name_returns_version_1_info(
        self, backend: BackendUnderTest, new_name: NewName, key_type: KeyType
    ) -> None:
        if key_type is KeyType.SECP256K1 and not backend.supports_secp256k1:
            pytest.skip("backend has no secp256k1 keys; see test_create_secp256k1_unsupported")
        name = new_name("k")
        info = backend.keystore.create_key(name, key_type)
        assert info == KeyInfo(name, key_type, 1, info.public_keys)
        assert backend.keystore.key_info(name) == info
        if key_type.is_signing:
            assert set(info.public_keys) == {1}
            assert len(info.public_keys[1]) == PUBLIC_KEY_SIZES[key_type]
        else:
            assert info.public_keys == {}

    def test_create_secp256k1_unsupported_backend_raises_unsupported_key_type(
        self, backend: BackendUnderTest, new_name: NewName
    ) -> None:
        if backend.supports_secp256k1:
            pytest.skip("backend supports secp256k1")
        error = expect_error(
            KeystoreErrorCode.UNSUPPORTED_KEY_TYPE,
            lambda: backend.keystore.create_key(new_name("k1"), KeyType.SECP256K1),
        )
        assert "secp256k1" in error.message

    def test_create_key_accepts_type_strings(self, keystore: Keystore, new_name: NewName) -> None:
        name = new_name("s")
        info = keystore.create_key(name, "ed25519")  # type: ignore[arg-type]
        assert info.key_type is KeyType.ED25519

    def test_create_key_unknown_type_raises_unsupported_key_type(
        self, keystore: Keystore, new_name: NewName
    ) -> None:
        expect_error(
            KeystoreErrorCode.UNSUPPORTED_KEY_TYPE,
            lambda: keystore.create_key(new_name("r"), "rsa-4096"),  # type: ignore[arg-type]
        )

    def test_create_key_twice_raises_key_exists(self, keystore: Keystore, new_name: NewName) -> None:
        name = new_name("dup")
        keystore.create_key(name, KeyType.ED25519)
        expect_error(KeystoreErrorCode.KEY_EXISTS, lambda: keystore.create_key(name, KeyType.ED25519))
        expect_error(KeystoreErrorCode.KEY_EXISTS, lambda: keystore.create_key(name, KeyType.AES256_GCM))
        assert keystore.key_info(name).latest_version == 1

    @pytest.mark.parametrize("bad", ["", "a/b", "x#v1", "../etc", "-lead", "a b", "é", "x" * 65])
    def test_invalid_key_name_raises_invalid_key_name(self, keystore: Keystore, bad: str) -> None:
        expect_error(KeystoreErrorCode.INVALID_KEY_NAME, lambda: keystore.create_key(bad, KeyType.ED25519))
        expect_error(KeystoreErrorCode.INVALID_KEY_NAME, lambda: keystore.key_info(bad))

    def test_list_keys_includes_created_keys_sorted(self, keystore: Keystore, new_name: NewName) -> None:
        names = [new_name("b"), new_name("a")]
        keystore.create_key(names[0], KeyType.ED25519)
        keystore.create_key(names[1], KeyType.AES256_GCM)
        listed = keystore.list_keys()
        listed_names = [info.name for info in listed]
        assert listed_names == sorted(listed_names)
        by_name = {info.name: info for info in listed}
        assert by_name[names[0]].key_type is KeyType.ED25519
        assert by_name[names[1]].key_type is KeyType.AES256_GCM

    # -- unknown keys, wrong types, versions -----------------------------------

    @pytest.mark.parametrize(
        "operation",
        ["key_info", "public_key", "sign", "rotate", "encrypt", "decrypt", "data_key", "seal"],
    )
    def test_unknown_key_raises_key_not_found(
        self, keystore: Keystore, new_name: NewName, operation: str
    ) -> None:
        name = new_name("missing")
        calls: dict[str, Callable[[], object]] = {
            "key_info": lambda: keystore.key_info(name),
            "public_key": lambda: keystore.public_key(name),
            "sign": lambda: keystore.sign(name, b"m"),
            "rotate": lambda: keystore.rotate(name),
            "encrypt": lambda: keystore.encrypt(name, b"p"),
            "decrypt": lambda: keystore.decrypt(name, b"vault:v1:AAAA"),
            "data_key": lambda: keystore.generate_data_key(name),
            "seal": lambda: keystore.seal_seed(name, b"s" * 32),
        }
        error = expect_error(KeystoreErrorCode.KEY_NOT_FOUND, calls[operation])
        assert name in error.message
        # A failed encrypt must not create the key as a side effect (Vault upserts).
        expect_error(KeystoreErrorCode.KEY_NOT_FOUND, lambda: keystore.key_info(name))

    def test_signing_key_used_for_encryption_raises_wrong_key_type(
        self, keystore: Keystore, signing_key: Callable[[KeyType], str]
    ) -> None:
        name = signing_key(KeyType.ED25519)
        expect_error(KeystoreErrorCode.WRONG_KEY_TYPE, lambda: keystore.encrypt(name, b"p"))
        expect_error(KeystoreErrorCode.WRONG_KEY_TYPE, lambda: keystore.generate_data_key(name))
        expect_error(KeystoreErrorCode.WRONG_KEY_TYPE, lambda: keystore.seal_seed(name, b"s" * 32))
        expect_error(KeystoreErrorCode.WRONG_KEY_TYPE, lambda: keystore.sign_digest(name, b"d" * 32))

    def test_aes_key_used_for_signing_raises_wrong_key_type(self, keystore: Keystore, aes_key: str) -> None:
        expect_error(KeystoreErrorCode.WRONG_KEY_TYPE, lambda: keystore.sign(aes_key, b"m"))
        expect_error(KeystoreErrorCode.WRONG_KEY_TYPE, lambda: keystore.public_key(aes_key))

    def test_sign_unknown_version_raises_key_version_not_found(
        self, keystore: Keystore, signing_key: Callable[[KeyType], str]
    ) -> None:
        name = signing_key(KeyType.ED25519)
        expect_error(KeystoreErrorCode.KEY_VERSION_NOT_FOUND, lambda: keystore.sign(name, b"m", version=2))
        expect_error(KeystoreErrorCode.KEY_VERSION_NOT_FOUND, lambda: keystore.public_key(name, version=0))

    # -- signing -------------------------------------------------------------

    @pytest.mark.parametrize("key_type", SIGNING_TYPES)
    def test_sign_then_verify_accepts_and_rejects_other_message(
        self, keystore: Keystore, signing_key: Callable[[KeyType], str], key_type: KeyType
    ) -> None:
        name = signing_key(key_type)
        signature = keystore.sign(name, b"checkpoint 42")
        assert signature.key_name == name
        assert signature.key_version == 1
        assert signature.key_type is key_type
        assert len(signature.value) == 64
        assert keystore.verify(name, b"checkpoint 42", signature)
        assert not keystore.verify(name, b"checkpoint 43", signature)
        forged = Signature(name, 1, key_type, bytes(64 - 1) + b"\x01")
        assert not keystore.verify(name, b"checkpoint 42", forged)

    @pytest.mark.parametrize("key_type", SIGNING_TYPES)
    def test_signature_from_other_key_does_not_verify(
        self, keystore: Keystore, signing_key: Callable[[KeyType], str], key_type: KeyType
    ) -> None:
        first, second = signing_key(key_type), signing_key(key_type)
        signature = keystore.sign(first, b"m")
        moved = Signature(second, signature.key_version, key_type, signature.value)
        assert not keystore.verify(second, b"m", moved)
        assert not keystore.verify(second, b"m", signature)

    @pytest.mark.parametrize("key_type", SIGNING_TYPES)
    def test_public_key_is_stable_raw_and_matches_key_info(
        self, keystore: Keystore, signing_key: Callable[[KeyType], str], key_type: KeyType
    ) -> None:
        name = signing_key(key_type)
        public = keystore.public_key(name)
        assert len(public) == PUBLIC_KEY_SIZES[key_type]
        assert keystore.public_key(name) == public
        assert keystore.public_key(name, version=1) == public
        assert keystore.key_info(name).public_keys == {1: public}
        if key_type is KeyType.SECP256K1:
            assert public[0] in (2, 3)

    def test_ed25519_signature_verifies_with_cryptography(
        self, keystore: Keystore, signing_key: Callable[[KeyType], str]
    ) -> None:
        name = signing_key(KeyType.ED25519)
        signature = keystore.sign(name, b"ledger checkpoint")
        public = keystore.public_key(name)
        Ed25519PublicKey.from_public_bytes(public).verify(signature.value, b"ledger checkpoint")
        assert verify_signature(KeyType.ED25519, public, b"ledger checkpoint", signature.value)

    def test_secp256k1_signatures_are_low_s_and_verify_with_cryptography(
        self, keystore: Keystore, signing_key: Callable[[KeyType], str]
    ) -> None:
        name = signing_key(KeyType.SECP256K1)
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), keystore.public_key(name))
        for i in range(24):  # about half of raw ECDSA signatures are high-S
            message = f"withdrawal {i}".encode()
            signature = keystore.sign(name, message)
            _r, s = rs_from_bytes(signature.value)
            assert 0 < s <= SECP256K1_HALF_ORDER
            public.verify(signature.to_der(), message, ec.ECDSA(hashes.SHA256()))
            assert keystore.verify(name, message, signature)

    def test_secp256k1_sign_digest_signs_the_given_digest(
        self, keystore: Keystore, signing_key: Callable[[KeyType], str]
    ) -> None:
        name = signing_key(KeyType.SECP256K1)
        digest = hashlib.sha3_256(b"ethereum-ish transaction").digest()
        signature = keystore.sign_digest(name, digest)
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), keystore.public_key(name))
        public.verify(signature.to_der(), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        expect_error(KeystoreErrorCode.INVALID_ARGUMENT, lambda: keystore.sign_digest(name, b"short"))

    # -- rotation ------------------------------------------------------------

    @pytest.mark.parametrize("key_type", SIGNING_TYPES)
    def test_rotate_signing_key_old_signatures_still_verify(
        self, keystore: Keystore, signing_key: Callable[[KeyType], str], key_type: KeyType
    ) -> None:
        name = signing_key(key_type)
        old_public = keystore.public_key(name)
        old_signature = keystore.sign(name, b"m")
        assert keystore.rotate(name) == 2
        info = keystore.key_info(name)
        assert info.latest_version == 2
        assert info.versions == (1, 2)
        assert info.public_keys[1] == old_public != info.public_keys[2]
        new_signature = keystore.sign(name, b"m")
        assert new_signature.key_version == 2
        assert keystore.verify(name, b"m", old_signature)
        assert keystore.verify(name, b"m", new_signature)
        pinned = keystore.sign(name, b"m", version=1)
        assert pinned.key_version == 1
        assert verify_signature(key_type, old_public, b"m", pinned.value)

    def test_rotate_aes_key_old_ciphertexts_still_decrypt(self, keystore: Keystore, aes_key: str) -> None:
        old = keystore.encrypt(aes_key, b"secret", b"ctx")
        assert blob_version(old) == 1
        assert keystore.rotate(aes_key) == 2
        assert keystore.rotate(aes_key) == 3
        new = keystore.encrypt(aes_key, b"secret", b"ctx")
        assert blob_version(new) == 3
        assert keystore.decrypt(aes_key, old, b"ctx") == b"secret"
        assert keystore.decrypt(aes_key, new, b"ctx") == b"secret"

    # -- encryption ----------------------------------------------------------

    @pytest.mark.parametrize("plaintext", [b"", b"x", os.urandom(1000)])
    def test_encrypt_decrypt_round_trip_with_aad(
        self, keystore: Keystore, aes_key: str, plaintext: bytes
    ) -> None:
        blob = keystore.encrypt(aes_key, plaintext, b"wallet:7")
        assert blob.isascii()
        assert keystore.decrypt(aes_key, blob, b"wallet:7") == plaintext
        assert keystore.encrypt(aes_key, plaintext, b"wallet:7") != blob  # fresh nonce

    def test_decrypt_with_other_aad_raises_decryption_failed(self, keystore: Keystore, aes_key: str) -> None:
        blob = keystore.encrypt(aes_key, b"secret", b"wallet:7")
        expect_error(
            KeystoreErrorCode.DECRYPTION_FAILED,
            lambda: keystore.decrypt(aes_key, blob, b"wallet:8"),
        )
        expect_error(KeystoreErrorCode.DECRYPTION_FAILED, lambda: keystore.decrypt(aes_key, blob))

    def test_decrypt_tampered_ciphertext_raises_decryption_failed(
        self, keystore: Keystore, aes_key: str
    ) -> None:
        blob = keystore.encrypt(aes_key, b"secret", b"a")
        expect_error(
            KeystoreErrorCode.DECRYPTION_FAILED,
            lambda: keystore.decrypt(aes_key, flip_base64_char(blob), b"a"),
        )

    def test_decrypt_under_other_key_fails(self, keystore: Keystore, aes_key: str, new_name: NewName) -> None:
        other = new_name("other")
        keystore.create_key(other, KeyType.AES256_GCM)
        blob = keystore.encrypt(aes_key, b"secret")
        expect_error(KeystoreErrorCode.DECRYPTION_FAILED, lambda: keystore.decrypt(other, blob))

    @pytest.mark.parametrize("garbage", [b"", b"not a blob", b"x:v1:AAAA", b"v1:AAAA", "text"])
    def test_decrypt_malformed_blob_raises_clear_error(
        self, keystore: Keystore, aes_key: str, garbage: object
    ) -> None:
        with pytest.raises(KeystoreError) as caught:
            keystore.decrypt(aes_key, garbage)  # type: ignore[arg-type]
        assert caught.value.code in (
            KeystoreErrorCode.MALFORMED_CIPHERTEXT,
            KeystoreErrorCode.INVALID_ARGUMENT,
        )

    def test_decrypt_future_version_raises_key_version_not_found(
        self, keystore: Keystore, aes_key: str
    ) -> None:
        blob = keystore.encrypt(aes_key, b"secret")
        prefix, _, payload = blob.split(b":", 2)
        future = prefix + b":v9:" + payload
        expect_error(KeystoreErrorCode.KEY_VERSION_NOT_FOUND, lambda: keystore.decrypt(aes_key, future))

    # -- envelope encryption ---------------------------------------------------

    def test_data_key_unwraps_to_same_key_and_hides_plaintext(self, keystore: Keystore, aes_key: str) -> None:
        data_key = keystore.generate_data_key(aes_key)
        plaintext = data_key.plaintext
        assert len(plaintext) == 32
        assert data_key.key_version == 1
        assert plaintext.hex() not in repr(data_key) and str(plaintext) not in repr(data_key)
        unwrapped = keystore.decrypt_data_key(aes_key, data_key.wrapped)
        assert unwrapped.plaintext == plaintext
        data_key.wipe()
        expect_error(KeystoreErrorCode.KEYSTORE_LOCKED, lambda: data_key.plaintext)

    def test_wrapped_data_key_unwraps(self, keystore: Keystore, aes_key: str) -> None:
        wrapped = keystore.generate_wrapped_data_key(aes_key)
        assert len(keystore.decrypt_data_key(aes_key, wrapped).plaintext) == 32

    def test_seal_open_seed_round_trip(self, keystore: Keystore, aes_key: str) -> None:
        seed = os.urandom(64)
        sealed = keystore.seal_seed(aes_key, seed, b"wallet:hot-btc")
        assert seed not in sealed
        parsed = SealedSeed.from_bytes(sealed)
        assert parsed.kek_name == aes_key
        assert parsed.to_bytes() == sealed
        assert keystore.open_seed(aes_key, sealed, b"wallet:hot-btc") == seed

    def test_open_seed_after_kek_rotation(self, keystore: Keystore, aes_key: str) -> None:
        seed = os.urandom(32)
        sealed = keystore.seal_seed(aes_key, seed)
        keystore.rotate(aes_key)
        assert keystore.open_seed(aes_key, sealed) == seed
        resealed = keystore.seal_seed(aes_key, seed)
        assert blob_version(SealedSeed.from_bytes(resealed).wrapped_data_key) == 2

    def test_open_seed_with_other_aad_or_kek_fails(
        self, keystore: Keystore, aes_key: str, new_name: NewName
    ) -> None:
        other = new_name("kek2")
        keystore.create_key(other, KeyType.AES256_GCM)
        sealed = keystore.seal_seed(aes_key, b"s" * 32, b"wallet:1")
        expect_error(
            KeystoreErrorCode.DECRYPTION_FAILED,
            lambda: keystore.open_seed(aes_key, sealed, b"wallet:2"),
        )
        expect_error(
            KeystoreErrorCode.DECRYPTION_FAILED,
            lambda: keystore.open_seed(other, sealed, b"wallet:1"),
        )
        expect_error(
            KeystoreErrorCode.MALFORMED_CIPHERTEXT,
            lambda: keystore.open_seed(aes_key, sealed + b"\x00", b"wallet:1"),
        )

    # -- secrecy -------------------------------------------------------------

    def test_no_secret_material_in_repr_errors_or_logs(
        self,
        backend: BackendUnderTest,
        aes_key: str,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        keystore = backend.keystore
        caplog.set_level(logging.DEBUG)
        seed = b"SEED-" + os.urandom(16).hex().encode()
        sealed = keystore.seal_seed(aes_key, seed, b"aad")
        texts = [repr(keystore), str(keystore)]
        data_key = keystore.generate_data_key(aes_key)
        texts += [repr(data_key), str(data_key)]
        failures: list[Callable[[], object]] = [
            lambda: keystore.open_seed(aes_key, sealed, b"other-aad"),
            lambda: keystore.decrypt(aes_key, keystore.encrypt(aes_key, seed), b"x"),
            lambda: keystore.sign(aes_key, seed),
            lambda: keystore.encrypt(aes_key + "-missing", seed),
        ]
        for failure in failures:
            with pytest.raises(KeystoreError) as caught:
                failure()
            texts += [str(caught.value), repr(caught.value), str(caught.value.to_dict())]
        texts += [record.getMessage() for record in caplog.records]
        forbidden = [seed.decode(), data_key.plaintext.hex(), *backend.secrets]
        for text in texts:
            for secret in forbidden:
                assert secret not in text, f"secret leaked into {text!r}"
        assert str(data_key.plaintext) not in " ".join(texts)
