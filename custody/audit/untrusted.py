"""Reading input the auditor does not trust: bounded, strict JSON, and safe to print (pure).

Every file of an export, a keys document, a proof and the auditor's state file
is parsed here: sizes, line lengths and nesting depth are limited before any
recursive code runs, duplicate object keys, NaN/Infinity and huge integers are
refused, and :func:`printable` escapes every string before it reaches a
terminal, so a forged file can neither crash the verifier nor paint over its
verdict with escape codes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# Put a limit on everything (docs/ledger-export.md, "Output and exit status").
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
MAX_LINE_BYTES = 64 * 1024
MAX_DEPTH = 16
MAX_INT_DIGITS = 80
READ_CHUNK_BYTES = 1024 * 1024
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


class FormatError(ValueError):
    """A file of an export (or a keys file, proof or state file) does not follow its format."""


def check_depth(raw: bytes, what: str) -> None:
    """Refuse JSON nested deeper than MAX_DEPTH (counted outside strings), before parsing it."""
    depth = 0
    for match in _TOKENS.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                raise FormatError(f"{what} is nested more than {MAX_DEPTH} levels deep")
        elif token in (b"]", b"}"):
            depth -= 1


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise FormatError(f"duplicate key {printable(key[:60])!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> object:
    raise FormatError(f"{name} is not a JSON number")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise FormatError(f"an integer has more than {MAX_INT_DIGITS} digits")
    return int(text)


def loads(raw: bytes, what: str) -> object:
    """Parse one JSON document strictly; raise :class:`FormatError` naming ``what`` on any problem."""
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise FormatError(f"{what} is larger than {MAX_DOCUMENT_BYTES} bytes")
    check_depth(raw, what)
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_no_constant,
                          parse_int=_bounded_int)
    except FormatError as exc:
        raise FormatError(f"{what}: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{what} is not valid JSON: {printable(str(exc))[:200]}") from None


def read_json(path: Path, what: str | None = None) -> object:
    """Read and strictly parse a whole JSON file of at most MAX_DOCUMENT_BYTES."""
    name = what or path.name
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise FormatError(f"cannot read {name}: {exc.strerror}") from None
    return loads(raw, name)


def lines(handle: BinaryIO, what: str, limit: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """Yield the LF-terminated lines of a file (without the LF), never holding more than one chunk.

    A line longer than ``limit`` or a last line without its LF is a :class:`FormatError`.
    """
    rest = b""
    number = 0
    while True:
        chunk = handle.read(READ_CHUNK_BYTES)
        if not chunk:
            break
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        for part in parts:
            number += 1
            if len(part) > limit:
                raise FormatError(f"{what} line {number} is longer than {limit} bytes")
            yield part
        if len(rest) > limit:
            raise FormatError(f"{what} line {number + 1} is longer than {limit} bytes")
    if rest:
        raise FormatError(f"{what} line {number + 1} does not end with a newline (truncated file?)")


def line_batches(handle: BinaryIO, what: str, limit: int = MAX_LINE_BYTES) -> Iterator[list[bytes]]:
    """Yield the file's lines (without LF) one read chunk at a time: :func:`lines` for hot loops.

    The length check runs once per chunk at C speed instead of once per line in Python.
    """
    rest = b""
    number = 0
    while True:
        chunk = handle.read(READ_CHUNK_BYTES)
        if not chunk:
            break
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        if len(rest) > limit or (parts and max(map(len, parts)) > limit):
            long = next((i for i, p in enumerate(parts) if len(p) > limit), len(parts))
            raise FormatError(f"{what} line {number + long + 1} is longer than {limit} bytes")
        number += len(parts)
        yield parts
    if rest:
        raise FormatError(f"{what} line {number + 1} does not end with a newline (truncated file?)")


def printable(text: str) -> str:
    """Return ``text`` with every character outside printable ASCII escaped (\\x1b, \\u202e, ...)."""
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
