"""Builders for the market tests: an exchange service on SQLite driven by a fake clock."""

from __future__ import annotations

from custody.db import make_engine, make_session_factory
from custody.ledger.service import Ledger
from exchange.engine.messages import NewOrder
from exchange.feeds import ScriptedFeed
from exchange.instruments import ExchangeConfig, load_instruments
from exchange.schedule import MarketScheduler
from exchange.service import ExchangeService
from exchange.venue import OrderResult, Venue

USDC = 1_000_000
BTC = 60_000 * USDC
ETH = 3_000 * USDC
HOUR_MS = 3_600_000


class Clock:
    """A settable millisecond clock."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


class Market:
    """A service + scripted feed + scheduler sharing one fake clock."""

    def __init__(self, sqlite_url: str, now_ms: int, config: ExchangeConfig | None = None,
                 calendar: bool = False) -> None:
        ledger = Ledger(make_session_factory(make_engine(sqlite_url)))
        self.svc = ExchangeService(ledger, Venue(config or load_instruments()))
        self.clock = Clock(now_ms)
        self.svc.clock = self.clock
        self.v = self.svc.venue
        self.feed = ScriptedFeed(self.v.config.indices)
        self.feed.set("BTC", BTC)
        self.feed.set("ETH", ETH)
        self.scheduler = MarketScheduler(self.svc, self.clock, self.feed, calendar=calendar)
        self._n = 0

    def fund(self, who: str, amount: int) -> None:
        self.svc.credit_deposit(who, amount, f"dep-{who}-{amount}")
        with self.svc.command() as v:
            v.deposit(who, amount)

    def at(self, now_ms: int) -> None:
        """Set the clock and run the scheduler."""
        self.clock.now_ms = now_ms
        self.scheduler.run_due()

    def order(self, who: str, symbol: str, side: str, qty: int, price: int | None = None, *,
              tif: str = "GTC", reduce_only: bool = False) -> OrderResult:
        self._n += 1
        cmd = NewOrder(id=f"{who}.{self._n}", account=who, side=side, qty=qty,  # type: ignore[arg-type]
                       type="limit" if price is not None else "market", price=price,
                       tif=tif if price is not None else "IOC", reduce_only=reduce_only,  # type: ignore[arg-type]
                       ts=self.clock.now_ms * 1_000_000)
        with self.svc.command() as v:
            return v.place(symbol, cmd)

    def size(self, who: str, symbol: str) -> int:
        acct = self.v.clearing.accounts.get(who)
        pos = None if acct is None else acct.positions.get(symbol)
        return 0 if pos is None else pos.size
