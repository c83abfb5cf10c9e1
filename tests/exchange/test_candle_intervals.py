"""Candles 1m..1d: aggregated from trades, UTC bucket boundaries, the documented 1h example."""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.marketdata import INTERVALS_MS, MarketData

from .helpers import BTC, NOW, USDC, move, venue
from .test_marketdata import PERP, trade, watched

DOC = Path(__file__).resolve().parents[2] / "docs" / "market-data.md"
HOUR_MS = 3_600_000
DAY_MS = 86_400_000


def _trade_at(v, qty: int, price: int, ts_ms: int) -> None:
    move(v, "BTC", price, ts_ms)  # fresh index quotes at that time, as a live market has
    trade(v, "a", "b", qty, price, ts_ms=ts_ms)


def test_candles_hour_and_day_boundaries_split_at_utc_instants() -> None:
    v = venue(accounts={"a": 50_000 * USDC, "b": 50_000 * USDC})
    md = watched(v)
    last_ms_of_hour = NOW + HOUR_MS - 1  # 2026-01-01T00:59:59.999Z
    last_ms_of_day = NOW + DAY_MS - 1  # 2026-01-01T23:59:59.999Z
    for ts in (NOW, last_ms_of_hour, NOW + HOUR_MS, last_ms_of_day, NOW + DAY_MS):
        _trade_at(v, 100, BTC, ts)
    v.drain()
    md.catch_up()
    with md.lock:
        hours = md.candle_rows(PERP, "1h", None, None, 100)
        days = md.candle_rows(PERP, "1d", None, None, 100)
        fours = md.candle_rows(PERP, "4h", None, None, 100)
    assert [(r[0], r[-1]) for r in hours] == [(NOW, 2), (NOW + HOUR_MS, 1), (NOW + 23 * HOUR_MS, 1),
                                             (NOW + DAY_MS, 1)]
    assert [(r[0], r[-1]) for r in days] == [(NOW, 4), (NOW + DAY_MS, 1)]
    assert [(r[0], r[-1]) for r in fours] == [(NOW, 3), (NOW + 20 * HOUR_MS, 1), (NOW + DAY_MS, 1)]
    assert all(r[0] % DAY_MS == 0 for r in days)  # the epoch is a UTC midnight


def _fold(rows: list[list[int]], width: int) -> list[list[int]]:
    """Aggregate 1m rows [open_ms, o, h, l, c, v, qv, n] into buckets of ``width`` ms."""
    out: OrderedDict[int, list[int]] = OrderedDict()
    for start, o, h, lo, c, vol, qv, n in rows:
        key = start - start % width
        bar = out.get(key)
        if bar is None:
            out[key] = [o, h, lo, c, vol, qv, n]
        else:
            bar[1], bar[2], bar[3] = max(bar[1], h), min(bar[2], lo), c
            bar[4], bar[5], bar[6] = bar[4] + vol, bar[5] + qv, bar[6] + n
    return [[k, *bar] for k, bar in out.items()]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3 * DAY_MS), st.integers(1, 10_000), st.integers(1, 50)),
                min_size=1, max_size=60))
def test_candles_every_interval_equals_one_minute_candles_folded(trades: list[tuple[int, int, int]]) -> None:
    md = MarketData()
    now = NOW
    for step, price, qty in trades:
        now += step % (2 * HOUR_MS)  # trade times never go backwards
        md._candle(PERP, price * 10, qty, price * qty, now)
    minutes = md.candle_rows(PERP, "1m", None, None, 10_000)
    for name, width in INTERVALS_MS.items():
        rows = md.candle_rows(PERP, name, None, None, 10_000)
        assert rows == _fold(minutes, width), name
        assert all(r[0] % width == 0 for r in rows)
        assert sum(r[-1] for r in rows) == len(trades)


def test_candles_1h_doc_example_parses_and_keeps_the_utc_rule() -> None:
    (body,) = re.findall(r"```json example:candles-1h\n(.*?)```", DOC.read_text(), re.S)
    example = json.loads(body)
    assert example["interval"] == "1h"
    for candle in example["candles"]:
        assert candle["open_ms"] % INTERVALS_MS["1h"] == 0
        assert candle["close_ms"] == candle["open_ms"] + INTERVALS_MS["1h"] - 1


def test_candles_1h_served_answer_matches_the_documented_example() -> None:
    (body,) = re.findall(r"```json example:candles-1h\n(.*?)```", DOC.read_text(), re.S)
    example = json.loads(body)
    v = venue(accounts={"a": 50_000 * USDC, "b": 50_000 * USDC})
    md = watched(v)
    _trade_at(v, 1000, BTC, NOW + 5)
    _trade_at(v, 1000, BTC + 100 * USDC, NOW + HOUR_MS + 5)
    v.drain()
    md.catch_up()
    with md.lock:
        rows = md.candle_rows(PERP, "1h", None, None, 10)
    served = [[c["open_ms"], c["trades"]] for c in example["candles"]]
    assert [[r[0], r[-1]] for r in rows] == served
