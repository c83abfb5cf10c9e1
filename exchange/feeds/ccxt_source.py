"""Exchange REST tickers through ccxt: each index source is a ccxt exchange id (e.g. ``bitstamp``).

The index configuration names the sources (``[index.BTC] sources =
["coinbase", "kraken", "bitstamp"]``) and the market to read
(``pair = "BTC/USD"``); this feed asks each named exchange for that
market's ticker over its public REST API. The price is the mid of the best
bid and ask (the last trade when one side is missing), converted from the
ticker's decimal string to integer quote minor units, half to even; ccxt is
told to keep numbers as strings, so no float ever holds a price.

A source that fails (network error, unknown market, garbage) sends no quote
for that poll and is logged; its previous quote goes stale on its own, and
the index goes stale (halting new risk) when too few sources remain. The
quote's time is the exchange's own timestamp when that is older than the
poll, so a source serving an old ticker is not mistaken for a fresh one.
"""

from __future__ import annotations

import logging
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Final

from exchange.feeds import SourceQuote
from exchange.instruments import IndexConfig

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS: Final = 2_000
QUOTE_DECIMALS: Final = 6  # USDC minor units
MAX_SOURCES: Final = 16


class CcxtFeed:
    """Poll ccxt public tickers for every (underlying, source) of the configured indices."""

    def __init__(self, indices: dict[str, IndexConfig], *, timeout_ms: int = DEFAULT_TIMEOUT_MS,
                 api_urls: dict[str, str] | None = None) -> None:
        """Create one ccxt client per source name; ``api_urls`` overrides a source's REST base URL.

        The override exists for a local stand-in of an exchange (tests); production
        leaves it empty and talks to the exchange's documented endpoints.
        """
        import ccxt  # an optional heavy import: only a server configured for ccxt pays for it

        self.indices = indices
        self.clients: dict[str, Any] = {}
        names = sorted({s for cfg in indices.values() for s in cfg.sources})
        if len(names) > MAX_SOURCES:
            raise ValueError(f"{len(names)} ccxt sources configured, at most {MAX_SOURCES}")
        for name in names:
            factory = getattr(ccxt, name, None)
            if factory is None or not isinstance(factory, type):
                raise ValueError(f"source was {name!r}, not a ccxt exchange id")
            client = factory({"timeout": timeout_ms, "enableRateLimit": False})
            client.number = str  # keep decimals as strings: prices never pass through float
            base = (api_urls or {}).get(name)
            if base is not None:
                api = client.urls["api"]
                client.urls["api"] = ({k: base for k in api} if isinstance(api, dict) else base)
            self.clients[name] = client

    def poll(self, now_ms: int) -> list[SourceQuote]:
        """Fetch every source's ticker; unreadable sources are skipped (and logged)."""
        quotes = []
        for underlying, cfg in sorted(self.indices.items()):
            for source in cfg.sources:
                quote = self._fetch(underlying, cfg.pair, source, now_ms)
                if quote is not None:
                    quotes.append(quote)
        return quotes

    def _fetch(self, underlying: str, pair: str, source: str, now_ms: int) -> SourceQuote | None:
        try:
            ticker = self.clients[source].fetch_ticker(pair)
        except Exception as exc:  # ccxt raises many types; a broken source must not stop the others
            log.warning("price source %s %s unreadable: %s", source, pair, type(exc).__name__)
            return None
        price = ticker_price(ticker)
        if price is None:
            log.warning("price source %s %s sent no usable price", source, pair)
            return None
        ts = ticker.get("timestamp")
        ts_ms = min(now_ms, int(ts)) if isinstance(ts, int | str) and str(ts).isdigit() else now_ms
        return SourceQuote(underlying, source, price, ts_ms)


def ticker_price(ticker: dict[str, Any]) -> int | None:
    """Return the ticker's bid/ask mid (else last) in quote minor units, or None if unusable."""
    bid, ask = to_minor(ticker.get("bid")), to_minor(ticker.get("ask"))
    if bid is not None and ask is not None and 0 < bid <= ask:
        return (bid + ask) // 2
    last = to_minor(ticker.get("last"))
    return last if last is not None and last > 0 else None


def to_minor(value: object) -> int | None:
    """Convert a decimal string (or int) to integer minor units; None for anything else."""
    if value is None or isinstance(value, bool | float):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount <= 0:
        return None
    return int((amount * 10**QUOTE_DECIMALS).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
