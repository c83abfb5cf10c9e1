"""The scripted market day (docs/market-day.md): a whole exchange day against the real ledger.

Deposits are credited in the ledger (hot wallet -> trader), moved into
exchange collateral, a market maker quotes, traders open leveraged perp,
futures and option positions, funding is paid, BTC slides 2 %, then crashes
in four gaps (liquidations: partial into the book, full with the insurance fund,
then ADL once the fund is empty), and at 08:00 UTC on 27 March 2026 the
dated future and the options expire and settle on the TWAP of the index.
The day ends with the ledger balanced and in agreement with the clearing
house, account by account.

The day runs on the market scheduler's clock (exchange/schedule.py), as a
server does: the script only moves its clock and sets what the price
sources quote (a scripted feed); the scheduler polls the feed, publishes
the index and marks, pays funding at the 00:00 boundary and expires the
dated instruments at 08:00, exactly as ``strongroom serve`` would.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from custody.ledger.service import Ledger
from exchange.engine.messages import NewOrder
from exchange.feeds import ScriptedFeed
from exchange.instruments import ExchangeConfig, load_instruments
from exchange.risk.clearing import CLEARING, FEES, INSURANCE
from exchange.schedule import MarketScheduler
from exchange.service import ExchangeService
from exchange.venue import Venue

USDC = 1_000_000
EXPIRY_MS = 1_774_598_400_000  # 2026-03-27T08:00:00Z
START_MS = EXPIRY_MS - 10 * 3_600_000  # 22:00 the evening before
SOURCES = ("coinbase", "kraken", "bitstamp")
PERP, FUTURE = "BTC-PERP", "BTC-27MAR26"
CALL, PUT = "BTC-27MAR26-60000-C", "BTC-27MAR26-50000-P"
BTC = 60_000 * USDC


@dataclass
class MarketDayReport:
    """What happened, for the CLI and the test."""

    events: Counter[str] = field(default_factory=Counter)
    insurance_start: int = 0
    insurance_end: int = 0
    fees: int = 0
    deposits: int = 0
    ledger_entries: int = 0
    settlement_prices: dict[str, int] = field(default_factory=dict)
    funding_rates: list[int] = field(default_factory=list)
    balanced: bool = False
    agrees: bool = False
    mismatches: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready summary."""
        return {
            "events": dict(sorted(self.events.items())), "insurance_start": self.insurance_start,
            "insurance_end": self.insurance_end, "fees": self.fees, "deposits": self.deposits,
            "ledger_entries": self.ledger_entries, "settlement_prices": self.settlement_prices,
            "funding_rates_ppm": self.funding_rates, "ledger_balanced": self.balanced,
            "ledger_agrees_with_positions": self.agrees, "mismatches": self.mismatches,
        }


class MarketDay:
    """The script, step by step; ``run()`` plays all of it."""

    def __init__(self, ledger: Ledger, *, run_id: str = "md", config: ExchangeConfig | None = None,
                 insurance: int = 400 * USDC) -> None:
        self.run = run_id
        self.svc = ExchangeService(ledger, Venue(config or load_instruments(), namespace=run_id))
        self.v = self.svc.venue
        self.insurance = insurance
        self.report = MarketDayReport()
        self.now = START_MS
        self._n = 0
        self.feed = ScriptedFeed(self.v.config.indices)
        self.scheduler = MarketScheduler(self.svc, lambda: self.now, self.feed, calendar=False)

    def name(self, who: str) -> str:
        return f"{self.run}-{who}"

    def run_all(self) -> MarketDayReport:
        """Play the whole day and check the books."""
        self.deposits()
        self.open_market()
        self.trade()
        self.funding()
        self.crash()
        self.expiry()
        self.check()
        return self.report

    # ------------------------------------------------------------------ steps

    def deposits(self) -> None:
        funds = {"mm": 2_000_000, "whale": 300_000, "lev1": 1_700, "lev2": 2_000, "lev3": 2_200,
                 "bear": 100_000, "optbuyer": 20_000, "optseller": 200_000, "hedger": 50_000}
        for who, usdc in funds.items():
            owner = self.name(who)
            self.svc.credit_deposit(owner, usdc * USDC, f"{self.run}.dep.{who}")
            with self.svc.command() as v:
                v.deposit(owner, usdc * USDC)
            self.report.deposits += usdc * USDC
        with self.svc.command() as v:
            v.seed_insurance(self.insurance)
        self.report.insurance_start = self.insurance

    def prices(self, btc: int, eth: int = 3_000 * USDC) -> None:
        """Let every source quote these prices from now on, and run the scheduler now."""
        self.feed.set("BTC", btc)
        self.feed.set("ETH", eth)
        self.scheduler.run_due()

    def wait(self, ms: int) -> None:
        """Move the clock and let the scheduler run (the sources keep quoting the same prices)."""
        self.now += ms
        self.scheduler.run_due()

    def order(self, who: str, symbol: str, side: str, qty: int, price: int | None,
              tif: str = "GTC") -> None:
        self._n += 1
        kind = "market" if price is None else "limit"
        cmd = NewOrder(id=f"{who}.{self._n}", account=self.name(who), side=side,  # type: ignore[arg-type]
                       qty=qty, type=kind, price=price, tif=tif, ts=self.now * 1_000_000)  # type: ignore[arg-type]
        with self.svc.command() as v:
            result = v.place(symbol, cmd)
        assert result.code == 0, f"{who} {symbol} {side} {qty}: {result.message}"

    def open_market(self) -> None:
        self.prices(BTC)
        # The market maker quotes the perp and the future from 0.1 % to 3 % around 60,000.
        for symbol, qty in ((PERP, 100), (FUTURE, 200)):
            for step in range(1, 31):
                self.order("mm", symbol, "buy", qty, BTC - step * 60 * USDC)
                self.order("mm", symbol, "sell", qty, BTC + step * 60 * USDC)

    def trade(self) -> None:
        self.wait(60_000)
        # Leveraged longs lift the offers (~40x); the whale and the bear take sides too.
        self.order("lev1", PERP, "buy", 1_000, None, "IOC")
        self.order("lev2", PERP, "buy", 900, None, "IOC")
        self.order("lev3", PERP, "buy", 800, None, "IOC")
        self.order("whale", PERP, "buy", 1_500, None, "IOC")
        self.order("bear", PERP, "sell", 2_000, None, "IOC")
        self.order("hedger", FUTURE, "sell", 500, None, "IOC")
        self.order("whale", FUTURE, "buy", 400, None, "IOC")
        # Options: the seller writes calls and puts at the model's mark; the buyer takes them.
        for symbol in (CALL, PUT):
            mark = self.v.clearing.marks[symbol]
            self.order("optseller", symbol, "sell", 20, mark)
            self.order("optbuyer", symbol, "buy", 20, mark)
        # The perp trades rich: the basis (and so funding) turns positive.
        self.order("mm", PERP, "buy", 100, BTC + 15 * USDC)
        self.prices(BTC)

    def funding(self) -> None:
        # Index updates every 20 minutes up to the 00:00 funding boundary, where the scheduler
        # (not the script) pays funding on the positions and mark of that moment.
        for _ in range(6):
            self.now += 20 * 60_000
            self.prices(BTC + 50 * USDC)
        self.wait(0)
        self.report.funding_rates = [e.rate_ppm for e in self.v.funding_history]

    def crash(self) -> None:
        # BTC slides 2 % (partial liquidations into the book), then gaps down 18 % more.
        for price in (58_900, 57_000, 54_000, 51_000, 48_000):
            self.now += 60_000
            self.prices(price * USDC)

    def expiry(self) -> None:
        # The index recovers a little and is sampled through the settlement window.
        price = 48_500 * USDC
        while self.now < EXPIRY_MS - 60_000:
            self.now = min(self.now + 15 * 60_000, EXPIRY_MS - 60_000)
            self.prices(price)
            price += 100 * USDC
        # 08:00: the scheduler expires and settles the dated instruments on its own.
        self.wait(EXPIRY_MS - self.now)
        for e in self.v.settlement_history:
            self.report.settlement_prices[e.symbol] = e.price

    # ------------------------------------------------------------------ checks

    def check(self) -> None:
        """Count events, and compare the ledger with the clearing house, account by account."""
        self.svc.flush()
        for e in self.svc.events:
            self.report.events[type(e).__name__] += 1
        ch = self.v.clearing
        ch.check_invariants()
        mismatches = []
        for acct in ch.accounts.values():
            if self.svc.ledger_balance(f"m:{acct.id}") != acct.cash:
                mismatches.append(f"m:{acct.id}")
            if self.svc.ledger_hold(acct.id) != acct.hold:
                mismatches.append(f"h:{acct.id}")
        for key, value in ((CLEARING, ch.clearing), (FEES, ch.fees), (INSURANCE, ch.insurance)):
            if self.svc.ledger_balance(key) != value:
                mismatches.append(key)
        self.report.mismatches = mismatches
        self.report.agrees = not mismatches
        self.report.insurance_end = ch.insurance
        self.report.fees = ch.fees
        ledger = self.svc.ledger
        totals: dict[str, int] = {}
        for account in ledger.list_accounts():
            b = account.balance
            totals[account.asset] = totals.get(account.asset, 0) + b.credits_posted - b.debits_posted
        self.report.balanced = all(t == 0 for t in totals.values())
        self.report.ledger_entries = ledger.head()[0]


def run_market_day(ledger: Ledger, run_id: str = "md") -> MarketDayReport:
    """Play the market day on ``ledger`` and return the report."""
    return MarketDay(ledger, run_id=run_id).run_all()
