"""Rules for identifiers and addresses that end up in signed bytes.

Only printable ASCII without spaces is allowed, so that what an approver
reads on screen is exactly what they sign: no look-alike Unicode letters,
no invisible characters, no trailing blanks.
"""

from __future__ import annotations

from policies.results import PolicyError, ResultCode

MAX_ID_CHARS = 128
MAX_ADDRESS_CHARS = 256
_PRINTABLE_ASCII_FIRST = 0x21
_PRINTABLE_ASCII_LAST = 0x7E


def is_identifier(value: str, max_chars: int = MAX_ID_CHARS) -> bool:
    """Return whether `value` is 1..max_chars printable ASCII characters without spaces."""
    if not 1 <= len(value) <= max_chars:
        return False
    return all(_PRINTABLE_ASCII_FIRST <= ord(ch) <= _PRINTABLE_ASCII_LAST for ch in value)


def check_identifier(value: object, field: str, code: ResultCode, max_chars: int = MAX_ID_CHARS) -> str:
    """Return `value` if it is a valid identifier, else raise `PolicyError` naming `field`."""
    if not isinstance(value, str) or not is_identifier(value, max_chars):
        raise PolicyError(
            code,
            f"{field} was {value!r}, must be 1..{max_chars} printable ASCII characters without spaces",
        )
    return value
