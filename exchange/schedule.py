"""The market scheduler: what makes the exchange run on its own inside ``strongroom serve``.

One ``run_due()`` per second (strongroom/jobs.py) does, in this order:

1. poll the price feed (outside the venue lock: a slow exchange never blocks
   trading);
2. under the lock, in one journaled batch: run every funding interval and
   expiry due by now (``Venue.advance``: each at its own time, in time
   order; missed ones are caught up one by one), then record the quotes and
   recompute every fed index, which publishes marks, liquidates crossed
   accounts and samples settlement TWAPs; an index with too few fresh
   sources goes stale, which halts new risk on its instruments;
3. every ``listing_every_ms``: delist settled, empty instruments and list
   what the calendar wants now (exchange/calendar.py);
4. let the demo market maker requote (when one is configured).

Because ``ExchangeService.command()`` also runs due funding and expiries
before any API command, a boundary is settled before anything after it,
whether the scheduler or an order gets there first. The clock is passed in,
so tests (and the market-day scenario) drive the whole market on a fake one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from exchange.calendar import due_listings
from exchange.feeds import PriceFeed, SourceQuote
from exchange.instruments import MAX_INSTRUMENTS
from exchange.service import ExchangeService
from exchange.venue import Venue

log = logging.getLogger(__name__)

DEFAULT_LISTING_EVERY_MS: Final = 60_000
MAX_QUOTES_PER_RUN: Final = 1_000


class MarketParticipant(Protocol):
    """Something that trades on the scheduler's clock (the demo market maker)."""

    def step(self, now_ms: int) -> None:
        """Act at ``now_ms``."""
        ...


@dataclass
class RunReport:
    """What one ``run_due`` did (for logs and tests)."""

    now_ms: int
    quotes: int = 0
    funding: int = 0
    settlements: int = 0
    listed: list[str] = field(default_factory=list)
    delisted: list[str] = field(default_factory=list)


class MarketScheduler:
    """Drive one exchange service from a clock: feeds, funding, expiry, listings, demo maker."""

    def __init__(self, service: ExchangeService, clock: Callable[[], int], feed: PriceFeed | None = None,
                 *, calendar: bool = True, listing_every_ms: int = DEFAULT_LISTING_EVERY_MS,
                 participants: tuple[MarketParticipant, ...] = ()) -> None:
        self.service = service
        self.clock = clock
        self.feed = feed
        self.calendar = calendar
        self.listing_every_ms = listing_every_ms
        self.participants = participants
        self.next_listing_ms: int | None = None

    def run_due(self) -> RunReport:
        """Do everything due at the clock's current time (see the module docstring)."""
        now_ms = int(self.clock())
        quotes: list[SourceQuote] = self.feed.poll(now_ms)[:MAX_QUOTES_PER_RUN] if self.feed else []
        report = RunReport(now_ms, quotes=len(quotes))
        svc = self.service
        with svc.command() as venue:
            funded, settled = len(venue.funding_history), len(venue.settlement_history)
            if venue.due(now_ms):
                venue.advance(now_ms)
            self._prices(venue, quotes, now_ms)
            if self.calendar and (self.next_listing_ms is None or now_ms >= self.next_listing_ms):
                self._listings(venue, now_ms, report)
                self.next_listing_ms = now_ms + self.listing_every_ms
            report.funding = len(venue.funding_history) - funded
            report.settlements = len(venue.settlement_history) - settled
        for participant in self.participants:
            participant.step(now_ms)
        if report.funding or report.settlements or report.listed or report.delisted:
            log.info("market at %d: %d funding payments, %d settlements, listed %s, delisted %s",
                     now_ms, report.funding, report.settlements, report.listed, report.delisted)
        return report

    @staticmethod
    def _prices(venue: Venue, quotes: list[SourceQuote], now_ms: int) -> None:
        for q in quotes:
            index = venue.indices.get(q.underlying)
            if index is None or q.source not in index.config.sources or q.price <= 0:
                log.warning("dropped a quote for %s from %s: not configured", q.underlying, q.source)
                continue
            venue.quote(q.underlying, q.source, q.price, q.ts_ms)
        for underlying in sorted(venue.indices):
            # Recompute even without new quotes: an index whose sources fell silent goes stale now.
            if venue.indices[underlying].quotes:
                venue.tick(underlying, now_ms)

    @staticmethod
    def _listings(venue: Venue, now_ms: int, report: RunReport) -> None:
        for symbol in sorted(venue.listed):
            if venue.delistable(symbol):
                venue.delist(symbol)
                report.delisted.append(symbol)
        index = {u: s.price for u, s in venue.index_state.items() if s.price is not None}
        room = MAX_INSTRUMENTS - len(venue.specs)
        for spec in due_listings(venue.config, now_ms, index, venue.specs)[:max(0, room)]:
            if venue.list_instrument(spec):
                report.listed.append(spec.symbol)
