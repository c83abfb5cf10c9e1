"""Exact integer amounts: the column type and the parsing rules at the edge.

Every amount in Strongroom is a Python ``int`` in the asset's minor unit. ETH in
wei exceeds 64 bits, so the database column must hold exact integers up to
2**256: ``NUMERIC(78, 0)`` on PostgreSQL and a canonical decimal string on SQLite
(whose INTEGER is 64-bit and whose NUMERIC silently rounds through a double).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Numeric, String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

U256_MAX = 2**256 - 1
# 78 decimal digits hold every value up to 2**256 - 1.
U256_DIGITS = 78


class AmountError(ValueError):
    """An amount at the edge was not a non-negative integer in range."""


def parse_amount(value: object, *, field: str = "amount", allow_zero: bool = False) -> int:
    """Return ``value`` as an exact integer amount, rejecting floats and junk.

    Accept a Python ``int`` or a string of decimal digits; never a float, a
    bool, an exponent or a fraction, because any of those can silently lose
    or invent value.
    """
    if isinstance(value, bool):
        raise AmountError(f"{field} was {value!r}, must be an integer in minor units")
    if isinstance(value, int):
        amount = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= U256_DIGITS:
        amount = int(value)
    else:
        raise AmountError(
            f"{field} was {value!r:.80}, must be an integer (or a string of digits) in minor units"
        )
    if amount < 0 or (amount == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise AmountError(f"{field} was {amount}, must be {bound}")
    if amount > U256_MAX:
        raise AmountError(f"{field} was {str(amount)[:80]}..., must be at most 2**256 - 1")
    return amount


class U256(TypeDecorator[int]):
    """Store exact non-negative integers up to 2**256 - 1 on every dialect."""

    impl = Numeric(U256_DIGITS, 0)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(U256_DIGITS))
        return dialect.type_descriptor(Numeric(U256_DIGITS, 0, asdecimal=True))

    def process_bind_param(self, value: int | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"U256 column got {type(value).__name__}, must be int")
        if not 0 <= value <= U256_MAX:
            raise ValueError(f"U256 column got {value}, out of range 0..2**256-1")
        if dialect.name == "sqlite":
            return str(value)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        if value is None:
            return None
        return int(value)
