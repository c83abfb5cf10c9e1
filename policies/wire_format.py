"""Length-prefixed binary encoding shared by every signed or hashed record.

Every field has a fixed width or an explicit length, so two different
records can never encode to the same bytes. Integers are big-endian and
unsigned; strings are UTF-8 with a 16-bit length; amounts are 256-bit so
ETH amounts in wei always fit.
"""

from __future__ import annotations

from policies.results import PolicyError, ResultCode

MAX_U8 = 2**8 - 1
MAX_U16 = 2**16 - 1
MAX_U64 = 2**64 - 1
MAX_U256 = 2**256 - 1


class Writer:
    """Append fields to a growing byte string."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, value: int) -> Writer:
        return self._uint(value, 1, MAX_U8)

    def u64(self, value: int) -> Writer:
        return self._uint(value, 8, MAX_U64)

    def u256(self, value: int) -> Writer:
        return self._uint(value, 32, MAX_U256)

    def blob(self, value: bytes) -> Writer:
        """Append bytes with a 16-bit length prefix."""
        assert len(value) <= MAX_U16, f"blob of {len(value)} bytes exceeds {MAX_U16}"
        self._parts.append(len(value).to_bytes(2, "big"))
        self._parts.append(value)
        return self

    def text(self, value: str) -> Writer:
        """Append a UTF-8 string with a 16-bit length prefix."""
        return self.blob(value.encode("utf-8"))

    def raw(self, value: bytes) -> Writer:
        """Append bytes without a prefix (only for fixed magic values)."""
        self._parts.append(value)
        return self

    def to_bytes(self) -> bytes:
        return b"".join(self._parts)

    def _uint(self, value: int, width: int, maximum: int) -> Writer:
        # Callers validate ranges first; reaching here out of range is a bug.
        assert 0 <= value <= maximum, f"value {value} does not fit in {width} bytes"
        self._parts.append(value.to_bytes(width, "big"))
        return self


class Reader:
    """Read fields back; every malformed input raises `PolicyError`."""

    def __init__(self, data: bytes, what: str, code: ResultCode) -> None:
        self._data = data
        self._offset = 0
        self._what = what
        self._code = code

    def u8(self) -> int:
        return int.from_bytes(self._take(1), "big")

    def u64(self) -> int:
        return int.from_bytes(self._take(8), "big")

    def u256(self) -> int:
        return int.from_bytes(self._take(32), "big")

    def blob(self) -> bytes:
        length = int.from_bytes(self._take(2), "big")
        return self._take(length)

    def text(self) -> str:
        raw = self.blob()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._error(f"string at byte {self._offset - len(raw)} is not UTF-8") from exc

    def expect(self, magic: bytes) -> None:
        found = self._take(len(magic))
        if found != magic:
            raise self._error(f"starts with {found!r}, expected {magic!r}")

    def finish(self) -> None:
        """Reject trailing bytes: one record has exactly one encoding."""
        trailing = len(self._data) - self._offset
        if trailing:
            raise self._error(f"has {trailing} trailing bytes")

    def _take(self, count: int) -> bytes:
        end = self._offset + count
        if end > len(self._data):
            raise self._error(
                f"is truncated: needed {count} bytes at offset {self._offset}, "
                f"only {len(self._data) - self._offset} left"
            )
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def _error(self, detail: str) -> PolicyError:
        return PolicyError(self._code, f"{self._what} {detail}")
