"""Invariants of the schedule: every funding boundary paid once, in order, at its own time;
calendar expiries are Fridays 08:00 UTC in the future, whatever the date."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.calendar import expiries, upcoming
from exchange.engine.messages import NewOrder
from exchange.instruments import MARKET_CONFIG, load_instruments
from exchange.venue import Venue
from tests.exchange.helpers import BTC, NOW, USDC, move

INTERVAL = 8 * 3_600_000
CONFIG = load_instruments()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3 * INTERVAL), min_size=1, max_size=12))
def test_funding_boundaries_are_each_paid_once_in_order_whatever_the_clock_steps(steps: list[int]) -> None:
    v = Venue(CONFIG)
    for who in ("a", "b"):
        v.deposit(who, 10**12)
    move(v, "ETH", 3_000 * USDC, NOW)
    move(v, "BTC", BTC, NOW)
    v.place("BTC-PERP", NewOrder(id="s", account="a", side="sell", qty=10, price=BTC))
    v.place("BTC-PERP", NewOrder(id="b", account="b", side="buy", qty=10, price=BTC))
    now = NOW
    for step in steps:
        now += step
        v.advance(now)
    paid = [e.ts_ms for e in v.funding_history if e.symbol == "BTC-PERP"]
    first = (NOW // INTERVAL + 1) * INTERVAL
    assert paid == list(range(first, now + 1, INTERVAL))
    assert v.next_funding_ms["BTC-PERP"] == (now // INTERVAL + 1) * INTERVAL
    v.clearing.check_invariants()


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1_767_225_600_000, max_value=4_102_444_800_000))  # 2026 .. 2100
def test_calendar_expiries_are_future_fridays_at_eight_utc_for_any_date(now_ms: int) -> None:
    for cal in load_instruments(MARKET_CONFIG).calendar.values():
        for cycles in (cal.future_expiries, cal.option_expiries):
            for ms in expiries(cycles, now_ms):
                d = datetime.fromtimestamp(ms // 1000, UTC)
                assert d.weekday() == 4 and (d.hour, d.minute, d.second) == (8, 0, 0)
                assert ms > now_ms + 24 * 3_600_000
    quarterly = upcoming("quarterly", 4, now_ms)
    assert len(quarterly) == 4 and all(datetime.fromtimestamp(ms // 1000, UTC).month % 3 == 0
                                       for ms in quarterly)
    monthly = upcoming("monthly", 12, now_ms)
    assert set(quarterly) <= set(monthly) | {q for q in quarterly if q > monthly[-1]}
