"""Exact integer amounts: parsing at the edge and the U256 column."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, insert, select

from custody.db import make_engine
from custody.money import U256, U256_MAX, AmountError, parse_amount


@pytest.mark.parametrize("value", [1.0, "1.5", "1e3", True, -1, "", " 1", "0x10", 2**256, None])
def test_parse_amount_rejects_anything_but_exact_non_negative_integers(value: object) -> None:
    with pytest.raises(AmountError):
        parse_amount(value)


def test_parse_amount_accepts_ints_and_digit_strings() -> None:
    assert parse_amount(10**30) == 10**30
    assert parse_amount(str(U256_MAX)) == U256_MAX
    assert parse_amount(0, allow_zero=True) == 0


@pytest.mark.parametrize("value", [0, 1, 10**30, 2**64 + 1, U256_MAX])
def test_u256_column_round_trips_exactly(database_url: str, value: int) -> None:
    table = Table("amounts", MetaData(), Column("id", Integer, primary_key=True),
                  Column("amount", U256()))
    engine = make_engine(database_url)
    table.create(engine)
    with engine.begin() as conn:
        conn.execute(insert(table).values(id=1, amount=value))
    with engine.connect() as conn:
        stored = conn.scalar(select(table.c.amount))
    engine.dispose()
    assert stored == value and type(stored) is int


def test_u256_column_refuses_floats_and_out_of_range(sqlite_url: str) -> None:
    table = Table("amounts", MetaData(), Column("id", Integer, primary_key=True),
                  Column("amount", U256()))
    engine = make_engine(sqlite_url)
    table.create(engine)
    for bad in (1.5, -1, U256_MAX + 1):
        with pytest.raises(Exception, match="U256"), engine.begin() as conn:
            conn.execute(insert(table).values(id=1, amount=bad))
    engine.dispose()
