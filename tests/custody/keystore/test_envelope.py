"""Ciphertext blobs, sealed seeds, error codes, and the examples in docs/keystore.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from keystore_contract import expect_error

from custody.keystore import KeystoreError, KeystoreErrorCode, SealedSeed, blob_version
from custody.keystore.envelope import format_blob, parse_blob

DOC = Path(__file__).resolve().parents[3] / "docs" / "keystore.md"


@given(
    name=st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True),
    wrapped=st.binary(min_size=1, max_size=300),
    nonce=st.binary(min_size=12, max_size=12),
    ciphertext=st.binary(min_size=16, max_size=300),
)
def test_sealed_seed_round_trips_and_rejects_trailing_bytes(
    name: str, wrapped: bytes, nonce: bytes, ciphertext: bytes
) -> None:
    sealed = SealedSeed(name, wrapped, nonce, ciphertext)
    data = sealed.to_bytes()
    assert SealedSeed.from_bytes(data) == sealed
    with pytest.raises(KeystoreError):
        SealedSeed.from_bytes(data + b"\x00")
    with pytest.raises(KeystoreError):
        SealedSeed.from_bytes(data[:-1])


def test_blob_round_trip_and_version() -> None:
    blob = format_blob("local", 7, b"\x00\x01payload")
    assert blob_version(blob) == 7
    assert parse_blob("local", blob) == (7, b"\x00\x01payload")
    expect_error(KeystoreErrorCode.MALFORMED_CIPHERTEXT, lambda: parse_blob("vault", blob))
    expect_error(KeystoreErrorCode.MALFORMED_CIPHERTEXT, lambda: parse_blob("local", b"local:v0:AA=="))


def test_error_codes_are_unique_and_in_the_keystore_block() -> None:
    values = [int(code) for code in KeystoreErrorCode]
    assert len(values) == len(set(values))
    assert all(4600 <= v <= 4699 for v in values)
    body = KeystoreError(KeystoreErrorCode.KEY_NOT_FOUND, "key 'x' does not exist").to_dict()
    assert body == {"code": 4610, "error": "key_not_found", "message": "key 'x' does not exist"}


def test_documented_error_table_matches_the_enum() -> None:
    rows = re.findall(r"^\| (\d{4}) \| `([a-z_]+)` \|", DOC.read_text(), flags=re.MULTILINE)
    assert {(int(code), name) for code, name in rows} == {
        (int(code), code.error) for code in KeystoreErrorCode
    }


def test_documented_sealed_seed_example_parses() -> None:
    match = re.search(r"```sealed-seed-hex\n([0-9a-f\n]+)```", DOC.read_text())
    assert match is not None
    sealed = SealedSeed.from_bytes(bytes.fromhex(match.group(1).replace("\n", "")))
    assert sealed.kek_name == "seeds"
    assert blob_version(sealed.wrapped_data_key) == 1
    assert len(sealed.nonce) == 12
