"""Price feeds: where index quotes come from (docs/market.md, "Price feeds").

A feed is polled with the time and returns one quote per (underlying,
source) it could read. The scheduler (exchange/schedule.py) feeds them to
the venue's index (``Venue.quote`` + ``Venue.tick``); a source that cannot
be read simply sends nothing, and its last quote goes stale on its own.

Implementations: :class:`~exchange.feeds.simulated.SimulatedFeed` (the
embedded default: a seeded random walk with jumps, three simulated venues),
:class:`~exchange.feeds.ccxt_source.CcxtFeed` (exchange REST tickers through
ccxt, configured by exchange name) and :class:`ScriptedFeed` (prices set by
a script: the market-day scenario and tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from exchange.instruments import IndexConfig


@dataclass(frozen=True, slots=True)
class SourceQuote:
    """One source's price of an underlying: quote minor units per unit, at ``ts_ms``."""

    underlying: str
    source: str
    price: int
    ts_ms: int


class PriceFeed(Protocol):
    """Anything that can be polled for index quotes."""

    def poll(self, now_ms: int) -> list[SourceQuote]:
        """Return the quotes readable at ``now_ms`` (never raise for an unreachable source)."""
        ...


class ScriptedFeed:
    """Every configured source quotes the price a script set (deterministic; tests, market day)."""

    def __init__(self, indices: dict[str, IndexConfig]) -> None:
        self.indices = indices
        self.prices: dict[str, int] = {}

    def set(self, underlying: str, price: int) -> None:
        """Quote ``price`` for ``underlying`` from every source from now on."""
        if underlying not in self.indices:
            raise KeyError(f"underlying was {underlying!r}, not indexed")
        if price <= 0:
            raise ValueError(f"price was {price}, must be positive")
        self.prices[underlying] = price

    def silence(self, underlying: str) -> None:
        """Stop quoting ``underlying`` (its index goes stale after ``staleness_ms``)."""
        self.prices.pop(underlying, None)

    def poll(self, now_ms: int) -> list[SourceQuote]:
        """Return one quote per source of every scripted underlying."""
        return [SourceQuote(u, source, price, now_ms)
                for u, price in sorted(self.prices.items())
                for source in self.indices[u].sources]
