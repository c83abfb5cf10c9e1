"""Index price, mark prices and the settlement TWAP (pure; the caller passes the time).

Index: the median of the sources whose latest quote is at most
``staleness_ms`` old; with fewer than ``min_sources`` fresh sources the index
is *stale* (``price`` None) and nothing that needs it (marks, liquidation,
funding, settlement samples) moves.

Perpetual/future mark: ``mark = index + basis``, where ``basis`` is an
exponential moving average of ``mid - index`` (``mid`` = book mid, or the
last trade when one side is empty) with ``alpha = 1/BASIS_EMA_SPAN``,
integer arithmetic with floor division, clamped to ``+-BASIS_CLAMP_PPM`` of
the index and rounded to the tick. A thin or manipulated book can move the
mark at most 0.5 % away from the index.

Option mark: Black-Scholes (forward = index, no rates) with the configured
implied volatility. The model runs in binary floating point; its result is
converted once, ``round(value / tick)`` (half to even), to an integer number
of ticks, so money never sees a float. Different libm versions could in
theory flip a value that lies within ~1e-12 of a half tick; the mark is
published as an event and replayed from the event, never recomputed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from exchange.instruments import PPM, IndexConfig, InstrumentSpec

BASIS_EMA_SPAN = 30
BASIS_CLAMP_PPM = 5_000
MS_PER_YEAR = 365 * 24 * 3_600_000
MAX_TWAP_SAMPLES = 100_000


@dataclass(frozen=True, slots=True)
class IndexState:
    """The index of one underlying at a moment."""

    underlying: str
    price: int | None
    fresh_sources: int
    ts_ms: int

    @property
    def stale(self) -> bool:
        """Tell whether too few sources were fresh to publish a price."""
        return self.price is None


class IndexPrice:
    """Latest quote per source of one underlying; the index is their fresh median."""

    def __init__(self, config: IndexConfig) -> None:
        self.config = config
        self.quotes: dict[str, tuple[int, int]] = {}

    def quote(self, source: str, price: int, ts_ms: int) -> None:
        """Record a source's price; unknown sources and non-positive prices are refused."""
        if source not in self.config.sources:
            raise ValueError(f"source was {source!r}, must be one of {list(self.config.sources)}")
        if price <= 0:
            raise ValueError(f"price was {price}, must be positive")
        self.quotes[source] = (price, ts_ms)

    def compute(self, now_ms: int) -> IndexState:
        """Return the median of fresh quotes, or a stale state when too few are fresh."""
        limit = self.config.staleness_ms
        fresh = sorted(p for p, ts in self.quotes.values() if 0 <= now_ms - ts <= limit)
        if len(fresh) < self.config.min_sources:
            return IndexState(self.config.underlying, None, len(fresh), now_ms)
        n = len(fresh)
        mid = fresh[n // 2] if n % 2 else (fresh[n // 2 - 1] + fresh[n // 2]) // 2
        return IndexState(self.config.underlying, mid, n, now_ms)


@dataclass(slots=True)
class BasisTracker:
    """The smoothed basis of a perpetual or future (see the module docstring)."""

    basis: int = 0
    initialised: bool = False

    def update(self, index: int, mid: int | None) -> int:
        """Fold one ``mid - index`` sample into the average; return the clamped basis."""
        if mid is not None:
            sample = mid - index
            if not self.initialised:
                self.basis, self.initialised = sample, True
            else:
                self.basis += (sample - self.basis) // BASIS_EMA_SPAN
        bound = index * BASIS_CLAMP_PPM // PPM
        return max(-bound, min(bound, self.basis))


def linear_mark(spec: InstrumentSpec, index: int, basis: int) -> int:
    """Return the mark of a perpetual or future: index plus clamped basis, on the tick grid."""
    return spec.round_to_tick(index + basis)


def black_scholes(spot: float, strike: float, vol: float, years: float, call: bool) -> float:
    """Return the undiscounted Black-Scholes value of a European option (float model)."""
    if years <= 0 or vol <= 0:
        return max(0.0, spot - strike) if call else max(0.0, strike - spot)
    sd = vol * math.sqrt(years)
    d1 = (math.log(spot / strike) + 0.5 * sd * sd) / sd
    d2 = d1 - sd
    if call:
        return spot * _ncdf(d1) - strike * _ncdf(d2)
    return strike * _ncdf(-d2) - spot * _ncdf(-d1)


def _ncdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def option_mark(spec: InstrumentSpec, index: int, now_ms: int) -> int:
    """Return the option mark in integer ticks: Black-Scholes rounded once (see module doc)."""
    assert spec.strike is not None and spec.implied_vol_ppm is not None
    assert spec.expiry_ms is not None
    years = max(0, spec.expiry_ms - now_ms) / MS_PER_YEAR
    value = black_scholes(float(index), float(spec.strike), spec.implied_vol_ppm / PPM, years,
                          spec.option_type == "call")
    ticks = round(value / spec.tick_size)
    # A listed option never marks below one tick (it still has time value or is worthless
    # at expiry, where settlement uses the intrinsic value, not the mark).
    return max(1, ticks) * spec.tick_size


def intrinsic(spec: InstrumentSpec, price: int) -> int:
    """Return the option's intrinsic value per underlying unit at ``price`` (0 for futures)."""
    assert spec.strike is not None
    if spec.option_type == "call":
        return max(0, price - spec.strike)
    return max(0, spec.strike - price)


@dataclass(slots=True)
class Twap:
    """Index samples for the settlement window; the settlement price is their time average.

    Binance-style: the settlement price is the average of the index in force
    at every moment of ``[window_start, expiry)``. A sample is the index
    computed at a tick; it is in force from its time until the next sample,
    but never longer than ``hold_ms`` (the index staleness limit: an index
    whose quotes are that old is no longer an index). The last sample taken
    *before* the window is kept too, because it is the value in force when
    the window opens. Averaging over the moments covered by some index, at
    millisecond resolution, equals a per-second sampling of the index in
    force up to rounding; moments without a fresh index count for nothing.
    """

    window_start_ms: int
    expiry_ms: int
    samples: list[tuple[int, int]] = field(default_factory=list)

    def sample(self, ts_ms: int, price: int) -> None:
        """Record the index at ``ts_ms`` (before the window: keep only the latest such sample)."""
        if ts_ms > self.expiry_ms or len(self.samples) >= MAX_TWAP_SAMPLES:
            return
        if ts_ms < self.window_start_ms:
            # Only the latest sample before the window matters (the value in force at its start).
            if not self.samples:
                self.samples.append((ts_ms, price))
            elif self.samples[-1][0] < self.window_start_ms and ts_ms >= self.samples[-1][0]:
                self.samples[-1] = (ts_ms, price)
            return
        if self.samples and ts_ms < self.samples[-1][0]:
            raise ValueError(f"sample time went backwards: {ts_ms} < {self.samples[-1][0]}")
        self.samples.append((ts_ms, price))

    def price(self, hold_ms: int | None = None) -> int | None:
        """Return the time-weighted average over the window, or None when no index was in force."""
        start, end = self.window_start_ms, self.expiry_ms
        total = weight = 0
        samples = self.samples
        for i, (ts, price) in enumerate(samples):
            until = samples[i + 1][0] if i + 1 < len(samples) else end
            if hold_ms is not None:
                until = min(until, ts + hold_ms)
            dt = min(until, end) - max(ts, start)
            if dt > 0:
                total += price * dt
                weight += dt
        if weight == 0:
            # A single sample exactly at expiry still is the index in force at that moment.
            last = [p for ts, p in samples if ts == end]
            return last[-1] if last else None
        return total // weight
