"""Price feeds: ccxt tickers from a local stand-in of an exchange's REST API, the simulated feed."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from exchange.feeds import ScriptedFeed
from exchange.feeds.ccxt_source import CcxtFeed, ticker_price, to_minor
from exchange.feeds.simulated import SimulatedFeed
from exchange.instruments import MARKET_CONFIG, IndexConfig, load_instruments
from exchange.venue import Venue

NOW = 1_796_140_800_000  # 2026-12-01T00:00Z
INDICES = load_instruments(MARKET_CONFIG).indices

# Bitstamp's documented public REST answers (GET /api/v2/markets/, GET /api/v2/ticker/{pair}/).
MARKETS = [
    {"name": "BTC/USD", "market_symbol": "btcusd", "base_currency": "BTC", "base_decimals": 8,
     "counter_currency": "USD", "counter_decimals": 0, "minimum_order_value": "10", "trading": "Enabled",
     "instant_order_counter_decimals": 2, "instant_and_market_orders": "Enabled",
     "description": "Bitcoin / U.S. dollar", "market_type": "SPOT"},
    {"name": "ETH/USD", "market_symbol": "ethusd", "base_currency": "ETH", "base_decimals": 8,
     "counter_currency": "USD", "counter_decimals": 1, "minimum_order_value": "10", "trading": "Enabled",
     "instant_order_counter_decimals": 2, "instant_and_market_orders": "Enabled",
     "description": "Ether / U.S. dollar", "market_type": "SPOT"},
]


def ticker(bid: str, ask: str, last: str, ts_s: int) -> dict[str, Any]:
    return {"timestamp": str(ts_s), "open": last, "high": ask, "low": bid, "last": last,
            "volume": "1234.56789012", "vwap": last, "bid": bid, "ask": ask, "side": "0",
            "open_24": last, "percent_change_24": "0.00", "market_type": "SPOT"}


class StandIn:
    """A local HTTP server answering like Bitstamp's public API; tickers are settable."""

    def __init__(self) -> None:
        self.tickers: dict[str, Any] = {}
        self.paths: list[str] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stand_in.paths.append(self.path)
                if self.path == "/v2/markets/":
                    self._send(200, MARKETS)
                elif self.path.startswith("/v2/ticker/"):
                    pair = self.path.split("/")[3]
                    body = stand_in.tickers.get(pair)
                    self._send(200, body) if body is not None else self._send(500, {"error": "down"})
                else:
                    self._send(404, {"error": "not found"})

            def _send(self, status: int, body: Any) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    server = StandIn()
    yield server
    server.server.shutdown()
    server.server.server_close()


def _bitstamp_only() -> dict[str, IndexConfig]:
    from dataclasses import replace

    return {u: replace(cfg, sources=("bitstamp",), min_sources=1) for u, cfg in INDICES.items()}


def test_ccxt_feed_reads_the_mid_of_a_bitstamp_ticker_in_integer_minor_units(stand_in: StandIn) -> None:
    stand_in.tickers["btcusd"] = ticker("60000.12", "60001.13", "60000.50", NOW // 1000)
    stand_in.tickers["ethusd"] = ticker("3000.1", "3000.3", "3000.2", NOW // 1000)
    feed = CcxtFeed(_bitstamp_only(), api_urls={"bitstamp": stand_in.url})
    quotes = {q.underlying: q for q in feed.poll(NOW + 500)}
    assert quotes["BTC"].price == (60_000_120_000 + 60_001_130_000) // 2
    assert quotes["BTC"].source == "bitstamp" and quotes["BTC"].ts_ms == NOW
    assert quotes["ETH"].price == 3_000_200_000
    assert "/v2/ticker/btcusd/" in stand_in.paths


def test_ccxt_feed_skips_a_failing_source_and_keeps_the_others(stand_in: StandIn) -> None:
    stand_in.tickers["btcusd"] = ticker("60000", "60002", "60001", NOW // 1000)
    feed = CcxtFeed(_bitstamp_only(), api_urls={"bitstamp": stand_in.url})
    quotes = feed.poll(NOW)
    assert [(q.underlying, q.price) for q in quotes] == [("BTC", 60_001_000_000)]  # ETH answered 500


def test_ccxt_feed_dates_an_old_ticker_at_its_own_time_so_the_index_goes_stale(stand_in: StandIn) -> None:
    stand_in.tickers["btcusd"] = ticker("60000", "60002", "60001", NOW // 1000 - 60)
    stand_in.tickers["ethusd"] = ticker("3000", "3000", "3000", NOW // 1000)
    feed = CcxtFeed(_bitstamp_only(), api_urls={"bitstamp": stand_in.url})
    venue = Venue(load_instruments(MARKET_CONFIG))
    venue.indices = {u: type(i)(cfg) for (u, i), cfg in zip(venue.indices.items(), _bitstamp_only().values(),
                                                              strict=True)}
    for q in feed.poll(NOW):
        venue.quote(q.underlying, q.source, q.price, q.ts_ms)
    assert venue.tick("BTC", NOW).stale
    assert not venue.tick("ETH", NOW).stale


def test_ccxt_feed_refuses_an_unknown_exchange_name() -> None:
    from dataclasses import replace

    bad = {"BTC": replace(INDICES["BTC"], sources=("no-such-exchange",))}
    with pytest.raises(ValueError, match="not a ccxt exchange id"):
        CcxtFeed(bad)


@pytest.mark.parametrize(("value", "minor"), [("60000.1234565", 60_000_123_456), ("0.0000015", 2),
                                              ("1e3", 1_000_000_000), (7, 7_000_000)])
def test_ticker_decimal_strings_convert_exactly_half_to_even(value: object, minor: int) -> None:
    assert to_minor(value) == minor


@pytest.mark.parametrize("value", [None, "", "abc", "-1", "0", "NaN", "Infinity", 1.5, True])
def test_ticker_garbage_or_floats_give_no_price(value: object) -> None:
    assert to_minor(value) is None


def test_ticker_with_crossed_book_falls_back_to_last() -> None:
    assert ticker_price({"bid": "101", "ask": "100", "last": "100.5"}) == 100_500_000
    assert ticker_price({"bid": None, "ask": None, "last": None}) is None


def test_simulated_feed_is_a_function_of_the_seed_and_time() -> None:
    a, b, c = (SimulatedFeed(INDICES, seed) for seed in (42, 42, 43))
    times = [NOW + i * 1_000 for i in range(0, 600, 7)]
    run_a = [a.poll(t) for t in times]
    assert run_a == [b.poll(t) for t in times]
    assert run_a != [c.poll(t) for t in times]
    # The poll schedule does not matter: one poll at the end sees the same walk.
    d = SimulatedFeed(INDICES, 42)
    d.poll(times[0])
    assert d.poll(times[-1]) == run_a[-1]


def test_simulated_feed_moves_and_jumps_but_stays_positive_and_integer() -> None:
    feed = SimulatedFeed(INDICES, seed=5)
    prices = [q.price for t in range(0, 3_600_000, 1_000) for q in feed.poll(NOW + t)
              if q.underlying == "BTC"]
    assert all(isinstance(p, int) and p > 0 for p in prices)
    assert len(set(prices)) > 1_000
    steps = [abs(b - a) * 1_000_000 // a for a, b in zip(prices[::3], prices[3::3], strict=False)]
    assert max(steps) >= INDICES["BTC"].jump_ppm // 2  # at least one jump in an hour
    assert 50_000 * 10**6 < prices[-1] < 70_000 * 10**6


def test_simulated_feed_quotes_every_source_close_to_each_other() -> None:
    quotes = SimulatedFeed(INDICES, seed=1).poll(NOW)
    btc = [q for q in quotes if q.underlying == "BTC"]
    assert [q.source for q in btc] == list(INDICES["BTC"].sources)
    spread = max(q.price for q in btc) - min(q.price for q in btc)
    assert spread <= 2 * btc[0].price * INDICES["BTC"].source_spread_ppm // 1_000_000 + 2


def test_scripted_feed_refuses_unknown_underlyings_and_bad_prices() -> None:
    feed = ScriptedFeed(INDICES)
    with pytest.raises(KeyError):
        feed.set("DOGE", 1)
    with pytest.raises(ValueError, match="must be positive"):
        feed.set("BTC", 0)
