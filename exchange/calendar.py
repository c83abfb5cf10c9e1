"""The listing calendar: which dated futures and options should be listed at a given moment (pure).

Dated instruments expire on Fridays at 08:00 UTC (Deribit's and Binance's
convention). Per underlying, the calendar configuration (``[calendar.X]`` in
the market file, see :class:`~exchange.instruments.CalendarConfig`) names how
many upcoming expiries of each cycle stay listed:

* weekly: every Friday;
* monthly: the last Friday of a month;
* quarterly: the last Friday of March, June, September and December.

An expiry that belongs to several cycles is listed once. Only expiries more
than ``MIN_LIFE_MS`` away are newly listed, so a fresh start on a Friday
morning does not list an instrument that expires within the hour. Options
get ``strikes_each_side`` strikes on each side of the at-the-money strike
(the index rounded to ``strike_step``), a call and a put at each; as the
index moves, later runs add the new strikes around it to the expiries
already listed ("options roll"). Nothing here removes an instrument:
expiry stops trading and settles (exchange/venue.py), and the scheduler
delists what has settled and is empty.

Symbols follow Deribit: ``BTC-27MAR26`` and ``BTC-27MAR26-60000-C`` (strike
in whole quote units).
"""

from __future__ import annotations

import calendar as _cal
from collections.abc import Collection, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Final

from exchange.instruments import CalendarConfig, ExchangeConfig, InstrumentSpec

EXPIRY_HOUR: Final = 8
MIN_LIFE_MS: Final = 24 * 3_600_000
MAX_LISTINGS_PER_RUN: Final = 200
QUOTE_UNIT: Final = 1_000_000
_MONTHS: Final = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_FRIDAY: Final = 4


def expiry_ms(day: date) -> int:
    """Return the Unix ms of 08:00 UTC on ``day``."""
    return int(datetime(day.year, day.month, day.day, EXPIRY_HOUR, tzinfo=UTC).timestamp()) * 1000


def expiry_code(ms: int) -> str:
    """Return the Deribit date code of an expiry, e.g. ``27MAR26``."""
    d = datetime.fromtimestamp(ms // 1000, UTC)
    return f"{d.day}{_MONTHS[d.month - 1]}{d.year % 100:02d}"


def last_friday(year: int, month: int) -> date:
    """Return the last Friday of a month."""
    last = date(year, month, _cal.monthrange(year, month)[1])
    return last - timedelta(days=(last.weekday() - _FRIDAY) % 7)


def _candidates(cycle: str, start: date) -> Iterator[date]:
    if cycle == "weekly":
        day = start + timedelta(days=(_FRIDAY - start.weekday()) % 7)
        while True:
            yield day
            day += timedelta(days=7)
    year, month = start.year, start.month
    while True:
        if cycle == "monthly" or month % 3 == 0:
            yield last_friday(year, month)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def upcoming(cycle: str, count: int, now_ms: int) -> list[int]:
    """Return the next ``count`` expiries (Unix ms) of ``cycle`` more than ``MIN_LIFE_MS`` away."""
    start = datetime.fromtimestamp(now_ms // 1000, UTC).date()
    out: list[int] = []
    for day in _candidates(cycle, start):
        if len(out) >= count:
            break
        ms = expiry_ms(day)
        if ms > now_ms + MIN_LIFE_MS:
            out.append(ms)
    return out


def expiries(cycles: tuple[tuple[str, int], ...], now_ms: int) -> list[int]:
    """Return the union of the cycles' upcoming expiries, ascending."""
    return sorted({ms for cycle, count in cycles for ms in upcoming(cycle, count, now_ms)})


def strikes(cal: CalendarConfig, index: int) -> list[int]:
    """Return the strikes around ``index``: the at-the-money one and ``strikes_each_side`` each side."""
    step = cal.strike_step
    atm = (index + step // 2) // step * step
    return [k for k in (atm + i * step for i in range(-cal.strikes_each_side, cal.strikes_each_side + 1))
            if k > 0]


def future_spec(cal: CalendarConfig, expiry: int) -> InstrumentSpec:
    """Return the dated future of ``cal``'s underlying expiring at ``expiry``."""
    return replace(cal.future, symbol=f"{cal.underlying}-{expiry_code(expiry)}", expiry_ms=expiry)


def option_spec(cal: CalendarConfig, expiry: int, strike: int, call: bool) -> InstrumentSpec:
    """Return one option of ``cal``'s underlying."""
    proto = cal.call if call else cal.put
    suffix = "C" if call else "P"
    return replace(proto, symbol=f"{cal.underlying}-{expiry_code(expiry)}-{strike // QUOTE_UNIT}-{suffix}",
                   expiry_ms=expiry, strike=strike)


def due_listings(config: ExchangeConfig, now_ms: int, index: dict[str, int],
                 listed: Collection[str]) -> list[InstrumentSpec]:
    """Return the instruments the calendar wants listed at ``now_ms`` that are not in ``listed``.

    Options of an underlying whose index is unknown wait for the first index
    (``index`` lacks it); futures do not need one. At most
    ``MAX_LISTINGS_PER_RUN`` are returned, in expiry then symbol order.
    """
    wanted: list[InstrumentSpec] = []
    for underlying, cal in sorted(config.calendar.items()):
        for expiry in expiries(cal.future_expiries, now_ms):
            wanted.append(future_spec(cal, expiry))
        price = index.get(underlying)
        if price is None or price <= 0:
            continue
        for expiry in expiries(cal.option_expiries, now_ms):
            for strike in strikes(cal, price):
                wanted += [option_spec(cal, expiry, strike, True), option_spec(cal, expiry, strike, False)]
    fresh = [s for s in wanted if s.symbol not in listed]
    fresh.sort(key=lambda s: (s.expiry_ms or 0, s.symbol))
    return fresh[:MAX_LISTINGS_PER_RUN]
