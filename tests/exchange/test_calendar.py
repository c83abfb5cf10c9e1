"""The listing calendar: instruments relative to a date, listed, settled and delisted on schedule."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from exchange.calendar import due_listings, expiry_code, strikes, upcoming
from exchange.feeds.simulated import SimulatedFeed
from exchange.instruments import MARKET_CONFIG, load_instruments
from exchange.risk.codes import RiskCode
from tests.exchange.market_helpers import BTC, ETH, USDC, Market

HOUR_MS = 3_600_000


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) * 1000


def test_calendar_on_1_december_2026_lists_weekly_monthly_and_quarterly_fridays() -> None:
    now = ms("2026-12-01T12:00")  # a Tuesday
    assert [expiry_code(e) for e in upcoming("weekly", 2, now)] == ["4DEC26", "11DEC26"]
    assert [expiry_code(e) for e in upcoming("monthly", 2, now)] == ["25DEC26", "29JAN27"]
    assert [expiry_code(e) for e in upcoming("quarterly", 2, now)] == ["25DEC26", "26MAR27"]
    assert upcoming("weekly", 1, now) == [ms("2026-12-04T08:00")]


def test_calendar_skips_an_expiry_less_than_a_day_away() -> None:
    friday_morning = ms("2026-12-04T07:30")
    assert [expiry_code(e) for e in upcoming("weekly", 1, friday_morning)] == ["11DEC26"]


def test_calendar_market_file_generates_live_instruments_for_a_fresh_install_in_december_2026() -> None:
    config = load_instruments(MARKET_CONFIG)
    now = ms("2026-12-01T12:00")
    specs = due_listings(config, now, {"BTC": BTC, "ETH": ETH}, set(config.instruments))
    symbols = {s.symbol for s in specs}
    assert {"BTC-4DEC26", "BTC-25DEC26", "BTC-26MAR27", "ETH-25DEC26"} <= symbols
    assert {"BTC-4DEC26-60000-C", "BTC-4DEC26-60000-P", "ETH-25DEC26-3000-C"} <= symbols
    assert all(s.expiry_ms is not None and s.expiry_ms > now for s in specs)
    assert not any(s.symbol in config.instruments for s in specs)


def test_calendar_options_are_strikes_around_the_index() -> None:
    cal = load_instruments(MARKET_CONFIG).calendar["BTC"]
    assert strikes(cal, 60_900 * USDC) == [k * 1_000 * USDC for k in (54, 56, 58, 60, 62, 64, 66)]
    assert strikes(cal, 61_100 * USDC)[3] == 62_000 * USDC


def test_calendar_reproduces_the_reference_expiry_from_its_date() -> None:
    config = load_instruments(MARKET_CONFIG)
    specs = {s.symbol: s for s in due_listings(config, ms("2026-03-20T12:00"), {"BTC": BTC}, set())}
    future = specs["BTC-27MAR26"]
    reference = load_instruments().instruments["BTC-27MAR26"]
    assert future.expiry_ms == reference.expiry_ms == ms("2026-03-27T08:00")
    assert specs["BTC-27MAR26-60000-C"].implied_vol_ppm == 600_000


def test_scheduler_lists_settles_and_delists_and_never_trades_an_expired_instrument(sqlite_url: str) -> None:
    start = ms("2026-11-30T12:00")  # Monday; the weekly expires Friday 4 December 08:00
    m = Market(sqlite_url, start, load_instruments(MARKET_CONFIG), calendar=True)
    m.at(start)
    weekly = "BTC-4DEC26"
    call = "BTC-4DEC26-60000-C"
    assert {weekly, call} <= set(m.v.specs)
    for who in ("maker", "long"):
        m.fund(who, 1_000_000 * USDC)
    m.at(start + 1_000)
    assert m.order("maker", weekly, "sell", 10, BTC + 100 * USDC).code == 0
    assert m.order("long", weekly, "buy", 10, BTC + 100 * USDC).code == 0
    expiry = ms("2026-12-04T08:00")
    for t in range(expiry - 35 * 60_000, expiry, 60_000):
        m.at(t)
    m.at(expiry + 1_000)
    settled = {e.symbol for e in m.v.settlement_history}
    assert {weekly, call} <= settled
    assert m.size("long", weekly) == 0
    assert m.order("long", weekly, "buy", 1, BTC).code in (RiskCode.INSTRUMENT_NOT_TRADING,
                                                           RiskCode.UNKNOWN_INSTRUMENT)
    m.at(expiry + 61_000)  # the next listing run delists what settled and lists the next weekly
    assert weekly not in m.v.specs and call not in m.v.specs
    assert "BTC-11DEC26" in m.v.specs or "BTC-18DEC26" in m.v.specs
    assert all(s.expiry_ms is None or s.expiry_ms > expiry for s in m.v.specs.values())


def test_listed_instruments_survive_a_restart_from_snapshot_and_journal(sqlite_url: str,
                                                                        tmp_path: Path) -> None:
    from custody.db import make_engine, make_session_factory
    from custody.ledger.service import Ledger
    from exchange.schedule import MarketScheduler
    from exchange.service import ExchangeService

    config = load_instruments(MARKET_CONFIG)
    ledger = Ledger(make_session_factory(make_engine(sqlite_url)))
    now = [ms("2026-12-01T12:00")]
    svc = ExchangeService.open(ledger, config, tmp_path / "x", snapshot_every=40)
    feed = SimulatedFeed(config.indices, seed=3)
    for _ in range(30):
        MarketScheduler(svc, lambda: now[0], feed).run_due()
        now[0] += 1_000
    expected, listed = svc.venue.state_hash(), sorted(svc.venue.listed)
    assert "BTC-4DEC26" in listed
    assert svc.durable is not None
    svc.durable.close()
    again = ExchangeService.open(ledger, config, tmp_path / "x")
    assert again.venue.state_hash() == expected and sorted(again.venue.listed) == listed
    again.close()


def test_calendar_example_in_docs_parses_and_lists_around_the_index() -> None:
    import re
    import tomllib

    from exchange.instruments import parse_config

    text = (Path(__file__).parents[2] / "docs" / "market.md").read_text()
    example = re.search(r"```toml\n(.*?)```", text, re.S)
    assert example is not None
    base = tomllib.loads(MARKET_CONFIG.read_text())
    data = {**base, "calendar": tomllib.loads(example.group(1))["calendar"]}
    config = parse_config(data)
    specs = {s.symbol: s for s in due_listings(config, ms("2026-12-01T12:00"), {"BTC": BTC}, set())}
    assert {"BTC-4DEC26", "BTC-25DEC26", "BTC-26MAR27"} <= set(specs)
    assert {"BTC-4DEC26-66000-C", "BTC-4DEC26-54000-P"} <= set(specs)
    assert specs["BTC-4DEC26-54000-P"].implied_vol_ppm == 650_000
    assert not any(s.startswith("ETH") for s in specs)
