"""PKCS#11 backend on SoftHSM2: non-exportable keys, labels, PIN and token errors."""

from __future__ import annotations

from collections.abc import Iterator

import pkcs11
import pytest
from keystore_contract import NewName, SoftHsm, expect_error

from custody.keystore import KeystoreErrorCode, KeyType
from custody.keystore.hsm import Pkcs11Keystore


@pytest.fixture
def hsm(softhsm: SoftHsm) -> Iterator[Pkcs11Keystore]:
    keystore = Pkcs11Keystore(softhsm.library, softhsm.token_label, softhsm.user_pin)
    yield keystore
    keystore.close()


def token_objects(softhsm: SoftHsm, hsm: Pkcs11Keystore, label: str) -> list[object]:
    session = hsm._session
    return list(session.get_objects({pkcs11.Attribute.LABEL: label}))


@pytest.mark.parametrize("key_type", list(KeyType))
def test_keys_are_sensitive_and_not_extractable(
    softhsm: SoftHsm, hsm: Pkcs11Keystore, key_type: KeyType, new_name: NewName
) -> None:
    name = new_name(key_type.value)
    hsm.create_key(name, key_type)
    secret_class = (
        pkcs11.ObjectClass.SECRET_KEY if key_type is KeyType.AES256_GCM else pkcs11.ObjectClass.PRIVATE_KEY
    )
    (private,) = [o for o in token_objects(softhsm, hsm, f"{name}#v1") if o.object_class == secret_class]
    assert private[pkcs11.Attribute.SENSITIVE] is True
    assert private[pkcs11.Attribute.EXTRACTABLE] is False
    assert private[pkcs11.Attribute.TOKEN] is True
    with pytest.raises(pkcs11.exceptions.PKCS11Error):
        private[pkcs11.Attribute.VALUE]


def test_rotation_adds_a_labelled_version_object(
    softhsm: SoftHsm, hsm: Pkcs11Keystore, new_name: NewName
) -> None:
    name = new_name("rotating")
    hsm.create_key(name, KeyType.ED25519)
    hsm.rotate(name)
    assert token_objects(softhsm, hsm, f"{name}#v1")
    assert token_objects(softhsm, hsm, f"{name}#v2")
    assert not token_objects(softhsm, hsm, f"{name}#v3")


def test_second_instance_shares_the_token(softhsm: SoftHsm, hsm: Pkcs11Keystore, new_name: NewName) -> None:
    name = new_name("shared")
    hsm.create_key(name, KeyType.ED25519)
    other = Pkcs11Keystore(softhsm.library, softhsm.token_label, softhsm.user_pin)
    try:
        signature = other.sign(name, b"m")
    finally:
        other.close()
    assert hsm.verify(name, b"m", signature)  # survives the other's logout


def test_wrong_pin_raises_bad_passphrase(softhsm: SoftHsm) -> None:
    error = expect_error(
        KeystoreErrorCode.BAD_PASSPHRASE,
        lambda: Pkcs11Keystore(softhsm.library, softhsm.token_label, "000000"),
    )
    assert "000000" not in str(error)


def test_unknown_token_raises_backend_unavailable(softhsm: SoftHsm) -> None:
    expect_error(
        KeystoreErrorCode.BACKEND_UNAVAILABLE,
        lambda: Pkcs11Keystore(softhsm.library, "no-such-token", softhsm.user_pin),
    )


def test_missing_library_raises_backend_unavailable(tmp_path: object) -> None:
    expect_error(
        KeystoreErrorCode.BACKEND_UNAVAILABLE,
        lambda: Pkcs11Keystore("/nonexistent/libpkcs11.so", "t", "1234"),
    )


def test_closed_keystore_raises_keystore_locked(softhsm: SoftHsm) -> None:
    keystore = Pkcs11Keystore(softhsm.library, softhsm.token_label, softhsm.user_pin)
    keystore.close()
    expect_error(KeystoreErrorCode.KEYSTORE_LOCKED, lambda: keystore.list_keys())
    assert softhsm.user_pin not in repr(keystore)
