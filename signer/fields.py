"""A strict reader for JSON objects: every field typed, range-checked, none unknown.

`Fields` records which keys were read; `finish()` rejects any key left over,
so a document with an unexpected field is refused rather than half-understood.
"""

from __future__ import annotations

import re
from typing import Any

from policies.identifier import MAX_ADDRESS_CHARS, MAX_ID_CHARS, is_identifier
from policies.wire_format import MAX_U256
from signer.canonical import MAX_JSON_INT
from signer.results import SignerCode, SignerError

_DECIMAL = re.compile(r"0|[1-9][0-9]{0,77}")
_HEX = re.compile(r"(?:[0-9a-f]{2})*")


class Fields:
    """Typed access to the members of one JSON object, for error messages named by `where`."""

    def __init__(self, value: object, where: str, code: SignerCode = SignerCode.BUNDLE_MALFORMED) -> None:
        if not isinstance(value, dict):
            raise SignerError(code, f"{where} must be an object, was {type(value).__name__}")
        self._value: dict[str, Any] = value
        self._where = where
        self._code = code
        self._read: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self._value

    def raw(self, name: str) -> object:
        if name not in self._value:
            raise self.error(f"{self._where}.{name} is missing")
        self._read.add(name)
        return self._value[name]

    def text(self, name: str, max_chars: int = MAX_ID_CHARS) -> str:
        """Return an identifier: 1..max_chars printable ASCII without spaces."""
        value = self.raw(name)
        if not isinstance(value, str) or not is_identifier(value, max_chars):
            raise self.error(
                f"{self._where}.{name} was {value!r}, must be 1..{max_chars} printable ASCII characters"
            )
        return value

    def address(self, name: str) -> str:
        return self.text(name, MAX_ADDRESS_CHARS)

    def choice(self, name: str, allowed: tuple[str, ...]) -> str:
        value = self.raw(name)
        if value not in allowed:
            raise self.error(f"{self._where}.{name} was {value!r}, must be one of {', '.join(allowed)}")
        assert isinstance(value, str)
        return value

    def integer(self, name: str, low: int = 0, high: int = MAX_JSON_INT) -> int:
        """Return a JSON integer (not a bool, not a string) in low..high."""
        value = self.raw(name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(f"{self._where}.{name} was {value!r}, must be an integer in {low}..{high}")
        return value

    def amount(self, name: str, low: int = 0, high: int = MAX_U256) -> int:
        """Return an amount written as a canonical decimal string ("0", "15", never "015")."""
        value = self.raw(name)
        if not isinstance(value, str) or _DECIMAL.fullmatch(value) is None or not low <= int(value) <= high:
            raise self.error(f"{self._where}.{name} was {value!r}, must be a decimal string in {low}..{high}")
        return int(value)

    def lenient_amount(self, name: str) -> int:
        """Return an amount written as a JSON integer or a decimal string (human-edited files)."""
        value = self.raw(name)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_U256:
            return value
        self._read.discard(name)
        return self.amount(name)

    def hex_bytes(self, name: str, length: int | None = None, max_length: int = 65_536) -> bytes:
        """Return bytes written as lowercase hex without a prefix."""
        value = self.raw(name)
        if not isinstance(value, str) or _HEX.fullmatch(value) is None:
            raise self.error(f"{self._where}.{name} must be lowercase hex, was {str(value)[:80]!r}")
        data = bytes.fromhex(value)
        if (length is not None and len(data) != length) or len(data) > max_length:
            expected = length if length is not None else f"at most {max_length}"
            raise self.error(f"{self._where}.{name} was {len(data)} bytes, must be {expected}")
        return data

    def string(self, name: str, max_chars: int) -> str:
        """Return any string up to `max_chars` (base64 payloads); content is checked by the caller."""
        value = self.raw(name)
        if not isinstance(value, str) or not 1 <= len(value) <= max_chars:
            raise self.error(f"{self._where}.{name} must be a string of 1..{max_chars} characters")
        return value

    def obj(self, name: str) -> Fields:
        return Fields(self.raw(name), f"{self._where}.{name}", self._code)

    def array(self, name: str, max_items: int) -> list[Any]:
        value = self.raw(name)
        if not isinstance(value, list) or len(value) > max_items:
            raise self.error(f"{self._where}.{name} must be a list of at most {max_items} items")
        return value

    def finish(self) -> None:
        """Reject members that were never read: unknown fields are not ignored."""
        unknown = sorted(set(self._value) - self._read)
        if unknown:
            raise self.error(f"{self._where} has unknown fields: {', '.join(unknown)}")

    def error(self, message: str) -> SignerError:
        return SignerError(self._code, message)
