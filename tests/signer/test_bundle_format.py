"""The bundle's canonical bytes: one encoding per bundle, everything else refused."""

from __future__ import annotations

import json

import pytest

from signer.bundle import Bundle
from signer.results import SignerCode, SignerError

from .helpers import World

WORLD = World()


def _refused(data: bytes) -> SignerCode:
    with pytest.raises(SignerError) as error:
        Bundle.from_bytes(data)
    return error.value.code


def test_bundle_round_trips_byte_for_byte() -> None:
    for bundle in (WORLD.btc_bundle(), WORLD.eth_bundle()):
        data = bundle.to_bytes()
        again = Bundle.from_bytes(data)
        assert again == bundle
        assert again.to_bytes() == data
        assert again.digest == bundle.digest


def test_bundle_identity_is_deterministic() -> None:
    assert World().eth_bundle().digest == World().eth_bundle().digest


def test_bundle_with_whitespace_or_unsorted_keys_refused_not_canonical() -> None:
    document = json.loads(WORLD.eth_bundle().to_bytes())
    assert _refused(json.dumps(document, sort_keys=True).encode()) is SignerCode.BUNDLE_NOT_CANONICAL
    unsorted = json.dumps(dict(reversed(list(document.items()))), separators=(",", ":")).encode()
    assert _refused(unsorted) is SignerCode.BUNDLE_NOT_CANONICAL


def test_bundle_with_duplicate_key_refused() -> None:
    data = WORLD.eth_bundle().to_bytes()
    duplicated = data.replace(b'"network":"anvil"', b'"network":"anvil","network":"mainnet"')
    assert _refused(duplicated) is SignerCode.BUNDLE_DUPLICATE_KEY


def test_bundle_with_float_or_numeric_amount_refused() -> None:
    data = WORLD.eth_bundle().to_bytes()
    assert _refused(data.replace(b'"nonce":0', b'"nonce":0.0')) is SignerCode.BUNDLE_NOT_CANONICAL
    as_number = data.replace(b'"value_wei":"5000000000000000000"', b'"value_wei":5000000000000000000')
    assert _refused(as_number) is SignerCode.BUNDLE_NOT_CANONICAL
    small = data.replace(b'"nonce":0', b'"nonce":"0"')
    assert _refused(small) is SignerCode.BUNDLE_MALFORMED


def test_bundle_with_unknown_field_refused() -> None:
    document = WORLD.eth_bundle().to_json()
    document["body"]["note"] = "hi"  # type: ignore[index]
    data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    assert _refused(data) is SignerCode.BUNDLE_MALFORMED


def test_bundle_with_lowercase_ethereum_address_refused() -> None:
    data = WORLD.eth_bundle().to_bytes()
    lowered = data.replace(
        b"0x8ba1f109551bD432803012645Ac136ddd64DBA72", b"0x8ba1f109551bd432803012645ac136ddd64dba72"
    )
    assert _refused(lowered) is SignerCode.BUNDLE_MALFORMED


def test_bundle_not_json_or_truncated_refused() -> None:
    data = WORLD.btc_bundle().to_bytes()
    assert _refused(data[:-1]) is SignerCode.BUNDLE_MALFORMED
    assert _refused(b"\xff\xfe") is SignerCode.BUNDLE_MALFORMED
    assert _refused(b"[]") is SignerCode.BUNDLE_MALFORMED


def test_bundle_carrying_a_corrupt_approval_refused_with_policies_cause() -> None:
    document = WORLD.eth_bundle().to_json()
    document["body"]["approvals"][0] = document["body"]["approvals"][0][:-2]  # type: ignore[index]
    data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(SignerError) as error:
        Bundle.from_bytes(data)
    assert error.value.code is SignerCode.BUNDLE_MALFORMED
    assert error.value.refusal.cause is not None
