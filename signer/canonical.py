"""Canonical JSON: one byte string per value, and a parser that accepts only that.

The canonical form is what `json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=True)` writes: keys sorted, no whitespace, ASCII only, no
floats. Parsing rejects duplicate keys, floats, NaN, trailing bytes and any
input that does not re-encode to exactly the same bytes, so a value has
exactly one encoding and its SHA-256 is its identity.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from signer.results import SignerCode, SignerError

MAX_DOCUMENT_BYTES = 2_000_000
# JSON integers above 2^53 lose precision in JavaScript; larger values
# (amounts in wei) are written as decimal strings instead.
MAX_JSON_INT = 2**53 - 1


class _DuplicateKeyError(ValueError):
    pass


class _FloatError(ValueError):
    pass


def canonical_bytes(value: object) -> bytes:
    """Return the canonical encoding of a JSON value built from dict/list/str/int/bool/None."""
    _check_encodable(value)
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text.encode("ascii")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_canonical(data: bytes, what: str) -> dict[str, Any]:
    """Parse `data` as a canonical JSON object; raise `SignerError` on anything else."""
    value = parse_strict(data, what)
    if canonical_bytes(value) != data:
        raise SignerError(
            SignerCode.BUNDLE_NOT_CANONICAL,
            f"{what} is not in canonical form (sorted keys, no whitespace, ASCII, no floats)",
        )
    return value


def parse_strict(data: bytes, what: str, *, big_ints: bool = False) -> dict[str, Any]:
    """Parse one JSON object: no duplicate keys, no floats, no trailing bytes (form not checked).

    Integers beyond +-(2^53 - 1) are refused unless `big_ints` (hand-written
    configuration files); canonical documents write those as strings.
    """
    if len(data) > MAX_DOCUMENT_BYTES:
        raise SignerError(
            SignerCode.BUNDLE_TOO_LARGE, f"{what} was {len(data)} bytes, at most {MAX_DOCUMENT_BYTES}"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SignerError(SignerCode.BUNDLE_MALFORMED, f"{what} is not UTF-8 text") from exc
    decoder = json.JSONDecoder(
        object_pairs_hook=_object_without_duplicates,
        parse_float=_no_float,
        parse_constant=_no_float,
        parse_int=int if big_ints else _small_int,
    )
    try:
        value, end = decoder.raw_decode(text)
    except _DuplicateKeyError as exc:
        raise SignerError(SignerCode.BUNDLE_DUPLICATE_KEY, f"{what} has a duplicate key {exc}") from exc
    except _FloatError as exc:
        raise SignerError(
            SignerCode.BUNDLE_NOT_CANONICAL, f"{what} contains a number not allowed here: {exc}"
        ) from exc
    except ValueError as exc:
        raise SignerError(SignerCode.BUNDLE_MALFORMED, f"{what} is not JSON: {exc}") from exc
    if end != len(text):
        raise SignerError(
            SignerCode.BUNDLE_TRAILING_BYTES,
            f"{what} has {len(text) - end} trailing characters after the JSON value",
        )
    if not isinstance(value, dict):
        raise SignerError(
            SignerCode.BUNDLE_MALFORMED, f"{what} must be a JSON object, was {type(value).__name__}"
        )
    return value


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(repr(key))
        result[key] = value
    return result


def _small_int(text: str) -> int:
    value = int(text)
    if not -MAX_JSON_INT <= value <= MAX_JSON_INT:
        raise _FloatError(f"{text} (integers beyond 2^53 - 1 must be decimal strings)")
    return value


def _no_float(text: str) -> Any:
    raise _FloatError(repr(text))


def _check_encodable(value: object) -> None:
    # A float or an oversized int here is a programming error in the caller.
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str), f"JSON key {key!r} is not a string"
            _check_encodable(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_encodable(item)
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        return
    elif isinstance(value, int):
        assert -MAX_JSON_INT <= value <= MAX_JSON_INT, f"integer {value} must be written as a string"
    else:
        raise AssertionError(f"{type(value).__name__} is not a canonical JSON value")
