"""The demo market maker and taker: a live two-sided market for ``make run`` (docs/market.md).

The maker keeps ``LEVELS`` bids and asks on every trading instrument around
its mark (perpetuals and futures ``SPREAD_BPS`` apart per level, options a
fixed share of their mark, never below one tick), and requotes a symbol by
amending its orders when the mark has moved by more than half a spread or
an order was filled. The taker sends one small IOC order every
``TAKE_EVERY_MS`` against a symbol and side drawn from a seeded generator,
so trades print, both demo accounts hold positions, and funding flows
between them. Both are funded once through the ledger (hot wallet ->
spot balance -> exchange collateral, with fixed transfer ids, so a restart
funds nothing twice). Refusals (margin, stale index) are logged, never
raised: the demo must not stop the server.
"""

from __future__ import annotations

import logging
import random
from typing import Final

from exchange.engine.messages import Amend, NewOrder, Side
from exchange.instruments import InstrumentSpec
from exchange.service import ExchangeService
from exchange.venue import Venue

log = logging.getLogger(__name__)

MAKER: Final = "demo-maker"
TAKER: Final = "demo-taker"
MAKER_COLLATERAL: Final = 50_000_000 * 1_000_000  # 50 M USDC
TAKER_COLLATERAL: Final = 2_000_000 * 1_000_000
LEVELS: Final = 2
SPREAD_BPS: Final = 10
OPTION_SPREAD_PPM: Final = 50_000  # options: 5 % of the mark per level
LINEAR_QTY: Final = 100
OPTION_QTY: Final = 5
REQUOTE_EVERY_MS: Final = 2_000
TAKE_EVERY_MS: Final = 5_000
MAX_TAKER_QTY: Final = 20


class DemoMarketMaker:
    """A seeded maker/taker pair keeping every book two-sided (see the module docstring)."""

    def __init__(self, service: ExchangeService, seed: int = 7) -> None:
        self.service = service
        self.rng = random.Random(seed)  # noqa: S311 (a demo, not secrets)
        self.quoted: dict[str, int] = {}  # symbol -> mark its quotes were built on
        self.n = 0
        self.next_quote_ms = 0
        self.next_take_ms = 0
        self.funded = False

    def step(self, now_ms: int) -> None:
        """Fund once, requote what moved, and take liquidity on schedule."""
        if not self.funded:
            self.fund()
        if now_ms >= self.next_quote_ms:
            with self.service.command() as venue:
                for symbol in sorted(venue.specs):
                    self._quote(venue, symbol, now_ms)
            self.next_quote_ms = now_ms + REQUOTE_EVERY_MS
        if now_ms >= self.next_take_ms:
            with self.service.command() as venue:
                self._take(venue, now_ms)
            self.next_take_ms = now_ms + TAKE_EVERY_MS

    def fund(self) -> None:
        """Credit and deposit the demo accounts' collateral (idempotent across restarts)."""
        svc = self.service
        for account, amount in ((MAKER, MAKER_COLLATERAL), (TAKER, TAKER_COLLATERAL)):
            svc.credit_deposit(account, amount, f"demo-exchange-funding-{account}")
            with svc.command() as venue:
                if account not in venue.clearing.accounts:
                    venue.deposit(account, amount)
        self.funded = True

    def _levels(self, spec: InstrumentSpec, mark: int) -> list[tuple[Side, int]]:
        out: list[tuple[Side, int]] = []
        tick = spec.tick_size
        for level in range(1, LEVELS + 1):
            if spec.is_option:
                width = max(tick, mark * OPTION_SPREAD_PPM * level // 1_000_000)
            else:
                width = max(tick, mark * SPREAD_BPS * level // 10_000)
            bid = (mark - width) // tick * tick
            ask = -(-(mark + width) // tick) * tick
            if bid >= tick:
                out.append(("buy", bid))
            out.append(("sell", ask))
        return out

    def _quote(self, venue: Venue, symbol: str, now_ms: int) -> None:
        spec = venue.specs[symbol]
        mark = venue.clearing.marks.get(symbol)
        if mark is None or not venue.clearing.trading[symbol]:
            self.quoted.pop(symbol, None)
            return
        if spec.expiry_ms is not None and now_ms >= spec.expiry_ms:
            return
        book = venue.books[symbol]
        mine = sorted(o for o in book.orders if o.startswith(f"{MAKER}.{symbol}."))
        last = self.quoted.get(symbol)
        # Requote once the mark has moved half a spread (options: half their wider spread).
        half_spread = max(spec.tick_size, mark * OPTION_SPREAD_PPM // 2_000_000 if spec.is_option
                          else mark * SPREAD_BPS // 20_000)
        if last is not None and abs(mark - last) <= half_spread and len(mine) == 2 * LEVELS:
            return
        wanted = self._levels(spec, mark)
        qty = OPTION_QTY if spec.is_option else LINEAR_QTY
        for i, (side, price) in enumerate(wanted):
            oid = next((o for o in mine if o.split(".")[-2] == f"{side}{i}"), None)
            if oid is not None:
                order = book.orders[oid]
                if order.price != price:
                    venue.amend(symbol, Amend(oid, None, price, MAKER, now_ms * 1_000_000))
                continue
            self.n += 1
            result = venue.place(symbol, NewOrder(
                id=f"{MAKER}.{symbol}.{side}{i}.{self.n}", account=MAKER, side=side, qty=qty,
                price=price, tif="GTC", ts=now_ms * 1_000_000))
            if result.code:
                log.debug("demo maker %s %s refused: %s", symbol, side, result.message)
        self.quoted[symbol] = mark

    def _take(self, venue: Venue, now_ms: int) -> None:
        live = [s for s in sorted(venue.specs)
                if venue.clearing.trading[s] and s in venue.clearing.marks
                and (venue.specs[s].expiry_ms is None or now_ms < (venue.specs[s].expiry_ms or 0))]
        if not live:
            return
        symbol = self.rng.choice(live)
        side: Side = "buy" if self.rng.randrange(2) else "sell"
        qty = self.rng.randint(1, MAX_TAKER_QTY if not venue.specs[symbol].is_option else 2)
        self.n += 1
        result = venue.place(symbol, NewOrder(id=f"{TAKER}.{self.n}", account=TAKER, side=side, qty=qty,
                                              type="market", tif="IOC", ts=now_ms * 1_000_000))
        if result.code:
            log.debug("demo taker %s %s refused: %s", symbol, side, result.message)
