"""Request bodies are checked before any recursive code sees them.

A JSON parser recurses once per nesting level. A dependency (py_ecc) raises
the interpreter's recursion limit to 100,000 at import, and 100,000 nested
arrays then overrun the C stack: one request kills the process. So every
body is measured here first, without recursion and at C speed (regular
expressions over bytes), and refused past `MAX_JSON_DEPTH`; the server also
keeps the interpreter's recursion limit at `SANE_RECURSION_LIMIT` whatever an
import did. Duplicate object keys are refused too: "the last one wins" lets a
signed body mean one thing to a proxy or log reader and another to us.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from flask.json.provider import DefaultJSONProvider

from custody.api.errors import ApiError, RequestCode

MAX_JSON_DEPTH = 32
# Python's default is 1000; py-evm (the in-process dev chain) wants deeper EVM call stacks than we
# ever make, and py_ecc's 100,000 lets C recursion run past the thread's stack. 2000 keeps both safe.
SANE_RECURSION_LIMIT = 2000
ECHO_MAX_CHARS = 80

# A string literal, or an escape outside one (invalid JSON, but consuming it here keeps the scan
# linear: otherwise every escaped quote of an unterminated string starts a new scan to the end).
_STRING_OR_ESCAPE = re.compile(rb'"(?:[^"\\]|\\.)*+"|\\.', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
# Objects and arrays nest alike: count them with one pair of brackets.
_ONE_KIND = bytes.maketrans(b"{}", b"[]")


class DuplicateKeyError(ValueError):
    """A JSON object named the same key twice."""

    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {echo(key)} in a JSON object")
        self.key = key


def keep_recursion_limit_sane() -> None:
    """Undo any dependency's raised recursion limit (cheap: called once per request)."""
    if sys.getrecursionlimit() != SANE_RECURSION_LIMIT:
        sys.setrecursionlimit(SANE_RECURSION_LIMIT)


def nesting_within(data: bytes, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Return whether ``data``'s brackets nest at most ``max_depth`` deep (and balance)."""
    return _too_deep(data, max_depth) is None


def _too_deep(data: bytes, max_depth: int) -> bool | None:
    """Return None if nesting is within ``max_depth``; else True if too deep, False if unbalanced.

    String literals are dropped first (brackets inside them do not count), then
    everything but brackets. Each pass then removes every innermost ``[]``, which
    lowers the depth of a balanced body by exactly one: a body within the limit
    has no brackets left after ``max_depth`` passes. Every step runs at C speed.
    """
    brackets = _NOT_BRACKET.sub(b"", _STRING_OR_ESCAPE.sub(b"0", data)).translate(_ONE_KIND)
    if b"[" * (max_depth + 1) in brackets:
        return True  # The usual attack, found in one search: more opens in a row than the limit.
    for _ in range(max_depth):
        if not brackets:
            return None
        reduced = brackets.replace(b"[]", b"")
        if len(reduced) == len(brackets):
            # Nothing pairs up: unbalanced; deep if it opens more than the limit.
            return len(brackets) > max_depth
        brackets = reduced
    return True if brackets else None


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(key)
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_strict(data: str | bytes) -> Any:
    """Parse JSON refusing duplicate keys and NaN/Infinity (callers check the depth first)."""
    return json.loads(data, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, parsing strictly (``request.get_json`` goes through it)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        data = s.encode() if isinstance(s, str) else s
        if not nesting_within(data):
            raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        return loads_strict(s)


def check_request_body(data: bytes) -> None:
    """Refuse a body nested too deep or with duplicate keys, before any view parses it."""
    keep_recursion_limit_sane()
    if not data:
        return
    too_deep = _too_deep(data, MAX_JSON_DEPTH)
    if too_deep:
        raise ApiError(RequestCode.JSON_TOO_DEEP, f"request body nests deeper than {MAX_JSON_DEPTH} levels")
    if too_deep is not None:
        # Unbalanced brackets: malformed JSON, which the view refuses as invalid_json. (The
        # provider refuses it too, so the parser never recurses into it.)
        return
    try:
        loads_strict(data)
    except DuplicateKeyError as exc:
        raise ApiError(RequestCode.INVALID_JSON, str(exc)) from None
    except (ValueError, RecursionError):
        # Not JSON at all: the view refuses it with its own error (invalid_json, 415).
        return


def echo(value: object, limit: int = ECHO_MAX_CHARS) -> str:
    """Return ``repr(value)`` cut to ``limit`` characters, for error messages that quote input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
