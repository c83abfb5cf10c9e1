"""Market data over REST: public (``/api/v1/market``) and the trader's history (``/api/v1/exchange``).

Public endpoints need no signature; like every route they are rate-limited
per client IP (custody.api.ratelimit). Private ones need the exchange
``READ`` access and show only the caller's accounts (cross and isolated);
someone else's order id is 404, exactly like one that does not exist.

Everything is read from the market-data read model (exchange/marketdata.py)
under its own lock, never the exchange's (instrument specifications aside,
which take the exchange lock for a dictionary copy), so readers never hold
up order entry. Formats and units: docs/market-data.md. Prices are decimal
strings in the quote asset per unit of the underlying, quantities decimal
strings in units of the underlying (contracts / ``contracts_per_unit``),
money (fees, PnL, funding, balances) decimal strings in the quote asset;
every time is Unix milliseconds in a field named ``*_ms``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, TypeVar

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from custody.api.auth import principal, secured
from custody.api.errors import ApiError, RequestCode
from custody.api.request import query_int
from custody.api.schema import BOOL, INT, MAYBE_INT, MAYBE_STR, STR, answers, array, nullable, obj
from exchange.api.blueprint import (
    READ,
    _risk,
    client_order_id,
    current_principal,
    engine_order_id,
    order_scope,
    runner,
    service,
)
from exchange.api.runner import STREAM_STATUS
from exchange.api.shardmode import shard_gateway
from exchange.instruments import InstrumentSpec
from exchange.marketdata import INTERVALS_MS, MarketData, owner_of
from exchange.risk.codes import RiskCode
from exchange.stream.publisher import StreamRefused
from exchange.summary import position_views
from exchange.venue import Venue
from policies.api_key import Scope
from policies.roles import Permission

public = Blueprint("market", __name__, url_prefix="/api/v1/market")
private = Blueprint("exchange_history", __name__, url_prefix="/api/v1/exchange")

F = TypeVar("F", bound=Callable[..., Any])
QUOTE_DECIMALS: Final = 6  # USDC minor units
MAX_DEPTH: Final = 1_000
DEFAULT_DEPTH: Final = 20
MAX_LIMIT: Final = 1_000
DEFAULT_LIMIT: Final = 100
DEFAULT_CANDLES: Final = 500
MAX_MS: Final = 2**53  # any later time is a typo, not a query
INCOME_TYPES: Final = ("fee", "liquidation_fee", "realised_pnl", "funding", "adl_charge", "settlement")

DEC: Final = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"}
MAYBE_DEC: Final = nullable(DEC)
SYMBOL_Q: Final = ("symbol", {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,32}$"}, True)
OPT_SYMBOL_Q: Final = ("symbol", {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,32}$"}, False)
LIMIT_Q: Final = ("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}, False)
TIME_Q: Final = {"type": "integer", "minimum": 0, "maximum": MAX_MS}


def query_parameters(*params: tuple[str, dict[str, Any], bool]) -> Callable[[F], F]:
    """Attach the query parameters (name, schema, required) of a view for the OpenAPI document."""

    def decorate(view: F) -> F:
        view.query_schemas = [  # type: ignore[attr-defined]
            {"name": n, "in": "query", "required": r, "schema": s} for n, s, r in params]
        return view

    return decorate


# ------------------------------------------------------------------ units


def _scaled(value: int, digits: int, shown: int) -> str:
    """Return ``value / 10**digits`` with ``shown`` decimals (exact: callers pass multiples)."""
    text = str(Decimal(value).scaleb(-digits).quantize(Decimal(1).scaleb(-shown)))
    return "0" if text in ("-0", "0") and shown == 0 else text


def _zeros(n: int) -> int:
    count = 0
    while n and n % 10 == 0:
        n //= 10
        count += 1
    return count


def price_str(spec: InstrumentSpec, price: int | None) -> str | None:
    """Return a price (quote minor units per underlying unit) as a decimal string at tick precision."""
    if price is None:
        return None
    shown = max(0, QUOTE_DECIMALS - min(QUOTE_DECIMALS, _zeros(spec.tick_size)))
    if price % 10 ** (QUOTE_DECIMALS - shown):
        shown = QUOTE_DECIMALS
    return _scaled(price, QUOTE_DECIMALS, shown)


def qty_str(spec: InstrumentSpec, qty: int) -> str:
    """Return contracts as a decimal string of underlying units (``qty / contracts_per_unit``)."""
    cpu = spec.contracts_per_unit
    digits = _zeros(cpu)
    if 10**digits != cpu:  # not a power of ten: an exact fraction may not terminate
        return str((Decimal(qty) / Decimal(cpu)).normalize())
    shown = max(0, digits - _zeros(spec.lot_size))
    return _scaled(qty, digits, shown)


def money_str(amount: int | None) -> str | None:
    """Return quote minor units (USDC 10^-6) as a decimal string with six decimals."""
    return None if amount is None else _scaled(amount, QUOTE_DECIMALS, QUOTE_DECIMALS)


# ------------------------------------------------------------------ helpers


def market(symbol: str | None = None) -> MarketData:
    """Return the read model of ``symbol``, or refuse with 503 when it stopped (the engine goes on).

    Shard mode: the model of the symbol's shard, fed by this process's replica of it
    (docs/scale-out.md, "Market data in shard mode"); no symbol: the default shard's.
    """
    gw = shard_gateway()
    if gw is None:
        md = service().market
        md.catch_up()  # fold in what the engine recorded since the last read
    else:
        shard = gw.default_shard if symbol is None else gw.shard_of.get(symbol, gw.default_shard)
        try:
            md = gw.market(shard)  # caught up with what the replica applied
        except StreamRefused as exc:
            raise ApiError(exc.code, exc.message, STREAM_STATUS.get(exc.code, 400)) from None
    if md.broken is not None:
        raise ApiError(RequestCode.NOT_READY, "market data is unavailable; the exchange is trading, "
                       "the read model stopped and needs a restart", 503)
    return md


def _grouped(symbols: list[str]) -> list[tuple[MarketData, list[str]]]:
    """Return the read models serving ``symbols`` with theirs (one model unless in shard mode)."""
    groups: dict[int, tuple[MarketData, list[str]]] = {}
    for symbol in symbols:
        md = market(symbol)
        groups.setdefault(id(md), (md, []))[1].append(symbol)
    return list(groups.values())


def _statuses(symbols: list[str], now_ms: int) -> dict[str, tuple[bool, str]]:
    """Return each symbol's (trading, admin mode) from its venue, under the venue's lock."""
    run = runner()
    out: dict[str, tuple[bool, str]] = {}
    for symbol in symbols:
        def view(venue: Venue, symbol: str = symbol) -> tuple[bool, str]:
            return (bool(venue.clearing.trading.get(symbol, False)),
                    venue.controls.mode(symbol, max(venue.now_ms, now_ms)))
        out[symbol] = run.read(symbol, view)
    return out


def _spec(symbol: str | None) -> InstrumentSpec:
    if symbol is None:
        raise ApiError(RequestCode.INVALID_FIELD, "query parameter symbol is required")
    spec = service().venue.specs.get(symbol)
    if spec is None:
        raise _risk(RiskCode.UNKNOWN_INSTRUMENT, f"symbol was {symbol[:40]!r}, not listed")
    return spec


def _symbol_arg(required: bool = True) -> InstrumentSpec | None:
    symbol = request.args.get("symbol")
    if symbol is None and not required:
        return None
    return _spec(symbol)


@dataclass(frozen=True, slots=True)
class Paging:
    """The query of a list endpoint: the instrument (or None: all of them) and how many rows."""

    spec: InstrumentSpec | None
    limit: int

    @property
    def instrument(self) -> InstrumentSpec:
        assert self.spec is not None, "the endpoint requires symbol, so it is set"
        return self.spec


def _paging(*, symbol_required: bool = True, default: int = DEFAULT_LIMIT, high: int = MAX_LIMIT) -> Paging:
    """Parse ``symbol`` and ``limit`` the same way for every list endpoint (ApiError names the field)."""
    spec = _symbol_arg(required=symbol_required)
    return Paging(spec, query_int("limit", default, low=1, high=high))


def _choice(name: str, allowed: tuple[str, ...] | list[str]) -> str | None:
    """Parse an optional enumerated query parameter; ApiError says what it was and may be."""
    value = request.args.get(name)
    if value is not None and value not in allowed:
        raise ApiError(RequestCode.INVALID_FIELD, f"{name} was {value[:40]!r}, must be one of "
                       f"{', '.join(allowed)}")
    return value


def _now_ms(md: MarketData) -> int:
    clock = current_app.extensions.get("strongroom.clock")
    return int(clock()) if clock is not None else md.clock_ms


def _time_arg(name: str) -> int | None:
    if request.args.get(name) is None:
        return None
    return query_int(name, 0, low=0, high=MAX_MS)


def _specs() -> dict[str, InstrumentSpec]:
    svc = service()
    with svc.lock:
        return dict(svc.venue.specs)


def _spec_of(specs: dict[str, InstrumentSpec], symbol: str) -> InstrumentSpec | None:
    return specs.get(symbol)


# ------------------------------------------------------------------ public views

PUBLIC_TRADE: Final = obj({"symbol": STR, "trade_id": STR, "price": DEC, "qty": DEC,
                           "side": {"type": "string", "enum": ["buy", "sell"]}, "liquidation": BOOL,
                           "time_ms": INT})
MARK: Final = obj({"symbol": STR, "mark": DEC, "index": MAYBE_DEC, "funding_rate_ppm": MAYBE_INT,
                   "next_funding_ms": MAYBE_INT, "time_ms": INT})
INSTRUMENT: Final = obj({
    "symbol": STR, "kind": STR, "underlying": STR, "quote_asset": STR, "contracts_per_unit": INT,
    "tick_size": DEC, "lot_size": DEC, "trading": BOOL,
    "status": {"type": "string", "enum": ["open", "cancel_only", "halted"]},
    "mark": MAYBE_DEC, "index": MAYBE_DEC,
    "funding_rate_ppm": MAYBE_INT, "next_funding_ms": MAYBE_INT, "funding_interval_ms": MAYBE_INT,
    "expiry_ms": MAYBE_INT, "maker_fee_ppm": INT, "taker_fee_ppm": INT, "open_interest": DEC},
    {"option_type": MAYBE_STR, "strike": MAYBE_DEC})
LEVEL: Final = array(STR)
TICKER: Final = obj({"symbol": STR, "last_price": MAYBE_DEC, "open": MAYBE_DEC, "high": MAYBE_DEC,
                     "low": MAYBE_DEC, "volume": DEC, "quote_volume": DEC, "trades": INT,
                     "change": MAYBE_DEC, "change_ppm": MAYBE_INT, "open_ms": INT, "close_ms": INT,
                     "mark": MAYBE_DEC, "best_bid": MAYBE_DEC, "best_ask": MAYBE_DEC})


def _mark_view(spec: InstrumentSpec, view: dict[str, Any]) -> dict[str, Any]:
    return {**view, "mark": price_str(spec, view["mark"]), "index": price_str(spec, view["index"])}


def _trade_view(spec: InstrumentSpec, t: dict[str, Any]) -> dict[str, Any]:
    return {**t, "price": price_str(spec, t["price"]), "qty": qty_str(spec, t["qty"])}


@public.get("/instruments")
@answers({"200": obj({"instruments": array(INSTRUMENT), "time_ms": INT})})
def instruments() -> ResponseReturnValue:
    """List instruments with mark, index, funding rate, next funding time and open interest (public)."""
    specs = _specs()
    now_ms = _now_ms(market())
    statuses = _statuses(sorted(specs), now_ms)
    rows = []
    for md, symbols in _grouped(sorted(specs)):
        with md.lock:
            for symbol in symbols:
                spec = specs[symbol]
                mark = md.marks.get(symbol, {})
                perpetual = spec.kind == "perpetual"
                rows.append({
                    "symbol": symbol, "kind": spec.kind, "underlying": spec.underlying,
                    "quote_asset": spec.quote_asset, "contracts_per_unit": spec.contracts_per_unit,
                    "tick_size": price_str(spec, spec.tick_size), "lot_size": qty_str(spec, spec.lot_size),
                    "trading": statuses[symbol][0],
                    # The admin's market mode (docs/operations.md): open, cancel_only or halted.
                    "status": statuses[symbol][1],
                    "mark": price_str(spec, mark.get("mark")), "index": price_str(spec, mark.get("index")),
                    "funding_rate_ppm": mark.get("funding_rate_ppm") if perpetual else None,
                    "next_funding_ms": mark.get("next_funding_ms") if perpetual else None,
                    "funding_interval_ms": spec.funding_interval_ms if perpetual else None,
                    "expiry_ms": spec.expiry_ms, "maker_fee_ppm": spec.maker_fee_ppm,
                    "taker_fee_ppm": spec.taker_fee_ppm,
                    "open_interest": qty_str(spec, md.open_interest.get(symbol, 0)),
                    "option_type": spec.option_type, "strike": price_str(spec, spec.strike),
                })
    rows.sort(key=lambda r: str(r["symbol"]))
    return jsonify({"instruments": rows, "time_ms": now_ms})


@public.get("/depth")
@query_parameters(SYMBOL_Q, ("limit", {"type": "integer", "minimum": 1, "maximum": MAX_DEPTH}, False))
@answers({"200": obj({"symbol": STR, "seq": INT, "bids": array(LEVEL), "asks": array(LEVEL)})})
def depth() -> ResponseReturnValue:
    """Return the order book's top N price levels per side, best first, with its sequence (public)."""
    paging = _paging(default=DEFAULT_DEPTH, high=MAX_DEPTH)
    spec, limit = paging.instrument, paging.limit
    md = market(spec.symbol)
    with md.lock:
        view = md.depth_view(spec.symbol, limit)
    for side in ("bids", "asks"):
        view[side] = [[price_str(spec, p), qty_str(spec, q), str(c)] for p, q, c in view[side]]
    return jsonify(view)


@public.get("/trades")
@query_parameters(SYMBOL_Q, LIMIT_Q)
@answers({"200": obj({"trades": array(PUBLIC_TRADE)})})
def trades() -> ResponseReturnValue:
    """Return the most recent public trades of an instrument, newest last (public)."""
    paging = _paging()
    spec, limit = paging.instrument, paging.limit
    md = market(spec.symbol)
    with md.lock:
        rows = list(md.trades.get(spec.symbol, ()))[-limit:]
    return jsonify({"trades": [_trade_view(spec, t) for t in rows]})


@public.get("/candles")
@query_parameters(SYMBOL_Q, ("interval", {"type": "string", "enum": list(INTERVALS_MS)}, True),
                  ("start_ms", TIME_Q, False), ("end_ms", TIME_Q, False), LIMIT_Q)
@answers({"200": obj({"symbol": STR, "interval": STR, "candles": array(obj({
    "open_ms": INT, "close_ms": INT, "open": DEC, "high": DEC, "low": DEC, "close": DEC, "volume": DEC,
    "quote_volume": DEC, "trades": INT}))})})
def candles() -> ResponseReturnValue:
    """Return OHLCV candles computed from trades (1m, 5m, 15m, 1h, 4h, 1d), oldest first (public)."""
    paging = _paging(default=DEFAULT_CANDLES)
    spec, limit = paging.instrument, paging.limit
    interval = _choice("interval", tuple(INTERVALS_MS))
    if interval is None:
        raise ApiError(RequestCode.INVALID_FIELD,
                       f"interval was None, must be one of {', '.join(INTERVALS_MS)}")
    start, end = _time_arg("start_ms"), _time_arg("end_ms")
    if start is not None and end is not None and start > end:
        raise ApiError(RequestCode.INVALID_FIELD, f"start_ms {start} is after end_ms {end}")
    md = market(spec.symbol)
    with md.lock:
        rows = md.candle_rows(spec.symbol, interval, start, end, limit)
    width = INTERVALS_MS[interval]
    return jsonify({"symbol": spec.symbol, "interval": interval, "candles": [{
        "open_ms": t, "close_ms": t + width - 1, "open": price_str(spec, o), "high": price_str(spec, h),
        "low": price_str(spec, lo), "close": price_str(spec, c), "volume": qty_str(spec, v),
        "quote_volume": money_str(qv), "trades": n} for t, o, h, lo, c, v, qv, n in rows]})


@public.get("/ticker")
@query_parameters(OPT_SYMBOL_Q)
@answers({"200": obj({"tickers": array(TICKER)})})
def ticker() -> ResponseReturnValue:
    """Return rolling 24-hour statistics per instrument (one with ``symbol``, else all) (public)."""
    spec = _symbol_arg(required=False)
    specs = {spec.symbol: spec} if spec is not None else _specs()
    now = _now_ms(market())
    out = []
    for md, symbols in _grouped(sorted(specs)):
        with md.lock:
            for symbol in symbols:
                s = specs[symbol]
                t = md.ticker(symbol, now)
                bids, asks = md.depth.get(symbol, ({}, {}))
                best_bid = max(bids) if bids else None
                best_ask = min(asks) if asks else None
                mark = md.marks.get(symbol, {}).get("mark")
                out.append({**t, **{k: price_str(s, t[k]) for k in ("last_price", "open", "high", "low")},
                            "change": price_str(s, t["change"]) if t["change"] is not None else None,
                            "volume": qty_str(s, t["volume"]), "quote_volume": money_str(t["quote_volume"]),
                            "mark": price_str(s, mark), "best_bid": price_str(s, best_bid),
                            "best_ask": price_str(s, best_ask)})
    out.sort(key=lambda t: t["symbol"])
    return jsonify({"tickers": out})


@public.get("/mark")
@query_parameters(OPT_SYMBOL_Q)
@answers({"200": obj({"marks": array(MARK)})})
def marks() -> ResponseReturnValue:
    """Return mark and index prices with the funding rate and next funding time (public)."""
    spec = _symbol_arg(required=False)
    specs = {spec.symbol: spec} if spec is not None else _specs()
    rows = []
    for md, symbols in _grouped(sorted(specs)):
        with md.lock:
            rows += [_mark_view(specs[s], md.marks[s]) for s in symbols if s in md.marks]
    rows.sort(key=lambda r: r["symbol"])
    return jsonify({"marks": rows})


@public.get("/open-interest")
@query_parameters(SYMBOL_Q)
@answers({"200": obj({"symbol": STR, "open_interest": DEC, "open_interest_contracts": INT,
                      "time_ms": INT})})
def open_interest() -> ResponseReturnValue:
    """Return an instrument's open interest: the total size of all long positions (public)."""
    spec = _symbol_arg()
    assert spec is not None
    md = market(spec.symbol)
    with md.lock:
        oi = md.open_interest.get(spec.symbol, 0)
        now = _now_ms(md)
    return jsonify({"symbol": spec.symbol, "open_interest": qty_str(spec, oi),
                    "open_interest_contracts": oi, "time_ms": now})


@public.get("/liquidations")
@query_parameters(SYMBOL_Q, LIMIT_Q)
@answers({"200": obj({"liquidations": array(obj({"symbol": STR, "side": STR, "qty": DEC, "price": DEC,
                                                 "time_ms": INT}))})})
def liquidations() -> ResponseReturnValue:
    """Return recent liquidation orders of an instrument (no account named) (public)."""
    paging = _paging()
    spec, limit = paging.instrument, paging.limit
    md = market(spec.symbol)
    with md.lock:
        rows = list(md.liquidations.get(spec.symbol, ()))[-limit:]
    return jsonify({"liquidations": [
        {**r, "qty": qty_str(spec, r["qty"]), "price": price_str(spec, r["price"])} for r in rows]})


@public.get("/insurance")
@answers({"200": obj({"asset": STR, "balance": DEC, "time_ms": INT})})
def insurance() -> ResponseReturnValue:
    """Return the insurance fund balance (public)."""
    md = market()
    balance = runner().read(None, lambda venue: venue.clearing.insurance)  # shard mode: the default pool
    return jsonify({"asset": service().asset, "balance": money_str(balance), "time_ms": _now_ms(md)})


# ------------------------------------------------------------------ private views

ORDER: Final = obj({
    "symbol": STR, "order_id": STR, "side": STR, "type": STR, "tif": STR, "price": MAYBE_DEC,
    "qty": DEC, "filled_qty": DEC, "avg_price": MAYBE_DEC, "trigger_price": MAYBE_DEC,
    "reduce_only": BOOL, "margin_mode": STR,
    "status": {"type": "string", "enum": ["new", "partially_filled", "untriggered", "filled", "cancelled",
                                          "rejected"]},
    "reason": MAYBE_STR, "liquidation": BOOL, "created_ms": INT, "updated_ms": INT})
FILL: Final = obj({
    "trade_id": STR, "symbol": STR, "order_id": MAYBE_STR, "side": STR, "price": DEC, "qty": DEC,
    "fee": DEC, "fee_asset": STR, "liquidity": {"type": "string", "enum": ["maker", "taker", "adl"]},
    "realised_pnl": DEC, "liquidation": BOOL, "adl": BOOL, "margin_mode": STR, "time_ms": INT})
INCOME: Final = obj({"type": {"type": "string", "enum": list(INCOME_TYPES)}, "amount": DEC, "asset": STR,
                     "symbol": STR, "ref": MAYBE_STR, "time_ms": INT})
POSITION_ROW: Final = obj({"symbol": STR, "margin_mode": STR, "status": STR, "realised_pnl": DEC,
                           "funding": DEC, "fees": DEC, "opened_ms": INT},
                          {"side": STR, "size": DEC, "entry_price": MAYBE_DEC, "closed_ms": INT})


def _mode(account: str) -> str:
    return "cross" if owner_of(account) == account else "isolated"


def order_api_view(md: MarketData, spec: InstrumentSpec | None, rec: dict[str, Any],
                   scope: str) -> dict[str, Any]:
    """Return an order record as the trader sees it (client id, decimal strings)."""
    v = md.order_view(rec)
    s = spec
    assert s is not None
    return {"symbol": v["symbol"], "order_id": client_order_id(scope, v["order_id"]), "side": v["side"],
            "type": v["type"], "tif": v["tif"], "price": price_str(s, v["price"]),
            "qty": qty_str(s, v["qty"]), "filled_qty": qty_str(s, v["filled_qty"]),
            "avg_price": price_str(s, v["avg_price"]), "trigger_price": price_str(s, v["trigger_price"]),
            "reduce_only": v["reduce_only"], "margin_mode": _mode(v["account"]), "status": v["status"],
            "reason": v["reason"], "liquidation": v["liquidation"], "created_ms": v["created_ms"],
            "updated_ms": v["updated_ms"]}


def _owned_orders(md: MarketData, owner: str) -> list[dict[str, Any]]:
    return [rec for a in md.accounts_of(owner, md.orders) for rec in md.orders[a].values()]


@private.get("/orders/<symbol>/<order_id>")
@READ
@answers({"200": ORDER})
def order_by_id(symbol: str, order_id: str) -> ResponseReturnValue:
    """Return one of the caller's orders, live or closed, by client order id."""
    spec = _spec(symbol)
    owner = current_principal()
    scope = order_scope(owner)
    md = market(spec.symbol)
    wanted = {engine_order_id(owner, order_id), order_id}
    with md.lock:
        found = [r for r in _owned_orders(md, owner) if r["order_id"] in wanted and r["symbol"] == symbol]
        found.sort(key=lambda r: (r["created_ms"], r["status"] in ("new", "partially_filled", "untriggered")))
        if not found:
            raise ApiError(RequestCode.NOT_FOUND, f"no order {order_id[:40]!r} of yours on {symbol}", 404)
        return jsonify(order_api_view(md, spec, found[-1], scope))


@private.get("/order-history")
@READ
@query_parameters(OPT_SYMBOL_Q, LIMIT_Q, ("status", {"type": "string", "enum": ["open", "closed"]}, False))
@answers({"200": obj({"orders": array(ORDER)})})
def order_history() -> ResponseReturnValue:
    """List the caller's orders, live and closed (the last 1,000 closed per account), newest last."""
    paging = _paging(symbol_required=False)
    spec, limit = paging.spec, paging.limit
    status = _choice("status", ("open", "closed"))
    owner = current_principal()
    scope = order_scope(owner)
    specs = _specs()
    md = market(None if spec is None else spec.symbol)
    with md.lock:
        rows = [r for r in _owned_orders(md, owner) if spec is None or r["symbol"] == spec.symbol]
        if status is not None:
            rows = [r for r in rows if (r["status"] in ("new", "partially_filled", "untriggered"))
                    == (status == "open")]
        rows.sort(key=lambda r: (r["created_ms"], r["order_id"]))
        out = [order_api_view(md, specs.get(r["symbol"]), r, scope) for r in rows[-limit:]
               if r["symbol"] in specs]
    return jsonify({"orders": out})


@private.get("/trade-history")
@READ
@query_parameters(OPT_SYMBOL_Q, LIMIT_Q)
@answers({"200": obj({"trades": array(FILL)})})
def trade_history() -> ResponseReturnValue:
    """List the caller's fills with trade id, fee, realised PnL and liquidation/ADL flags, newest last."""
    paging = _paging(symbol_required=False)
    spec, limit = paging.spec, paging.limit
    owner = current_principal()
    scope = order_scope(owner)
    specs = _specs()
    md = market(None if spec is None else spec.symbol)
    with md.lock:
        rows = [(a, f) for a in md.accounts_of(owner, md.fills) for f in md.fills[a]
                if spec is None or f["symbol"] == spec.symbol]
    rows.sort(key=lambda af: af[1]["time_ms"])
    out = []
    for account, f in rows[-limit:]:
        s = specs.get(f["symbol"])
        if s is None:
            continue
        out.append({**f, "order_id": None if f["order_id"] is None else client_order_id(scope, f["order_id"]),
                    "price": price_str(s, f["price"]), "qty": qty_str(s, f["qty"]),
                    "fee": money_str(f["fee"]), "fee_asset": s.quote_asset,
                    "realised_pnl": money_str(f["realised_pnl"]), "margin_mode": _mode(account)})
    return jsonify({"trades": out})


@private.get("/income")
@READ
@query_parameters(OPT_SYMBOL_Q, LIMIT_Q, ("type", {"type": "string", "enum": list(INCOME_TYPES)}, False))
@answers({"200": obj({"income": array(INCOME)})})
def income() -> ResponseReturnValue:
    """List the caller's income: funding, realised PnL, fees, ADL charges, settlements; newest last."""
    paging = _paging(symbol_required=False)
    spec, limit = paging.spec, paging.limit
    kind = _choice("type", tuple(INCOME_TYPES))
    owner = current_principal()
    md = market(None if spec is None else spec.symbol)
    asset = service().asset
    with md.lock:
        rows = [r for a in md.accounts_of(owner, md.income) for r in md.income[a]
                if (spec is None or r["symbol"] == spec.symbol) and (kind is None or r["type"] == kind)]
    rows.sort(key=lambda r: r["time_ms"])
    return jsonify({"income": [{**r, "amount": money_str(r["amount"]), "asset": asset}
                               for r in rows[-limit:]]})


@private.get("/position-history")
@READ
@query_parameters(OPT_SYMBOL_Q, LIMIT_Q)
@answers({"200": obj({"open": array(obj({"symbol": STR}, {})), "closed": array(POSITION_ROW)})})
def position_history() -> ResponseReturnValue:
    """List the caller's open positions (live view) and closed ones with their realised PnL."""
    paging = _paging(symbol_required=False)
    spec, limit = paging.spec, paging.limit
    owner = current_principal()
    specs = _specs()
    # The live view needs the clearing house (valuations); it is one account's.
    live = runner().read(None if spec is None else spec.symbol, lambda venue: position_views(venue, owner))
    md = market(None if spec is None else spec.symbol)
    with md.lock:
        closed = [(a, r) for a in md.accounts_of(owner, md.closed_positions) for r in md.closed_positions[a]
                  if spec is None or r["symbol"] == spec.symbol]
    closed.sort(key=lambda ar: ar[1]["closed_ms"])
    open_rows = []
    for p in live:
        s = specs[p["symbol"]]
        if spec is not None and p["symbol"] != spec.symbol:
            continue
        open_rows.append({**p, "size": qty_str(s, p["size"]), "entry_price": price_str(s, p["entry_price"]),
                          "mark": price_str(s, p["mark"]), "unrealised_pnl": money_str(p["unrealised_pnl"]),
                          "realised_pnl": money_str(p["realised_pnl"]),
                          "initial_margin": money_str(p["initial_margin"]),
                          "maintenance_margin": money_str(p["maintenance_margin"]),
                          "liquidation_price": price_str(s, p["liquidation_price"]), "status": "open"})
    closed_rows = [{**r, "realised_pnl": money_str(r["realised_pnl"]), "funding": money_str(r["funding"]),
                    "fees": money_str(r["fees"]), "status": "closed"} for _, r in closed[-limit:]]
    return jsonify({"open": open_rows, "closed": closed_rows})


# ------------------------------------------------------------------ streams

FEED_EXTENSION: Final = "strongroom.stream_feed"
STREAM_PERMISSIONS: Final = (Permission.TRADE, Permission.LEDGER_READ_OWN, Permission.WITHDRAW_APPROVE)
STREAM = secured(*STREAM_PERMISSIONS, scope=Scope.READ, mfa=False)


@private.post("/stream-token")
@STREAM
@answers({"201": obj({"token": STR, "expires_ms": INT})})
def stream_token() -> ResponseReturnValue:
    """Issue a short-lived, single-use listen token for the websocket streams' private channels."""
    feed = current_app.extensions.get(FEED_EXTENSION)
    if feed is None:
        raise ApiError(RequestCode.NOT_READY, "the websocket streams are not running on this server", 503)
    caller = principal()
    clock = current_app.extensions.get("strongroom.clock")
    now = int(clock()) if clock is not None else 0
    try:
        token, expires = feed.issue_token(caller.username, [str(r) for r in caller.user.roles], now)
    except OverflowError:
        raise ApiError(RequestCode.RATE_LIMITED, "too many live listen tokens; try again shortly",
                       429) from None
    return jsonify({"token": token, "expires_ms": expires}), 201


SUBSCRIBE_METHOD: Final = "POST"
SUBSCRIBE_PATH: Final = "/stream/subscribe"


def subscribe_body(channels: list[str]) -> bytes:
    """Return the bytes a signed subscribe signs as its body: the channels joined by commas."""
    return ",".join(channels).encode()


def verify_signed_subscribe(app: Any, msg: dict[str, Any]) -> dict[str, Any]:
    """Check a websocket subscribe signed with an API key, exactly as a REST request is checked.

    The canonical request is docs/request-signing.md's with method ``POST``, path
    ``/stream/subscribe``, no query and the channels joined by commas as the body; the same
    receive window, constant-time compare, key state, IP allowlist and replay cache (each
    signature once). Private channels need the stream-token endpoint's permissions.
    Answer ``{"user", "roles"}`` or a refusal ``{"code", "error", "message"}``.
    """
    from custody.api.services import AccessServices
    from policies.request_signing import SignedRequest, verify_signed_request
    from policies.results import PolicyError, ResultCode
    from policies.roles import has_permission

    svc: AccessServices = app.extensions["strongroom.access"]
    channels = msg.get("channels")
    if not isinstance(channels, list) or not all(isinstance(c, str) and "," not in c for c in channels):
        return {"code": int(ResultCode.AUTH_HEADERS_MALFORMED), "error": "auth_headers_malformed",
                "message": "channels must be a list of names without commas"}
    try:
        signed = SignedRequest.parse(key_id=msg.get("key"), timestamp=str(msg.get("timestamp")),
                                     signature=msg.get("signature"), method=SUBSCRIBE_METHOD,
                                     path=SUBSCRIBE_PATH, query="", body=subscribe_body(channels),
                                     client_ip=str(msg.get("ip") or ""))
    except PolicyError as exc:
        return {"code": int(exc.code), "error": exc.code.error, "message": exc.message}
    found = svc.users.verified_key(signed.key_id)
    refusal = verify_signed_request(signed, None if found is None else found[0], required_scope=Scope.READ,
                                    now_ms=svc.clock(), replay_cache=svc.replay_cache,
                                    recv_window_ms=svc.recv_window_ms)
    if refusal is not None:
        svc.log_refusal(signed.key_id, None if found is None else found[1].username, refusal,
                        SUBSCRIBE_METHOD, SUBSCRIBE_PATH)
        return refusal.to_json()
    assert found is not None
    user = found[1]
    if user.disabled_ms is not None:
        return {"code": 1103, "error": "user_disabled", "message": f"user {user.username} is disabled"}
    private = [c for c in channels if ":" not in c]
    if private and not any(has_permission(user.roles, p) for p in STREAM_PERMISSIONS):
        return {"code": int(ResultCode.PERMISSION_DENIED), "error": "permission_denied",
                "message": f"{user.username} may not read private channels"}
    return {"user": user.username, "roles": sorted(str(r) for r in user.roles)}


def start_stream_feed(app: Any, path: Any) -> Any:
    """Start the feed of the websocket stream server(s) on Unix socket ``path``; return it."""
    from exchange.api.streamfeed import StreamFeed, withdrawal_poller

    svc = app.extensions["strongroom.exchange"]

    def specs() -> dict[str, InstrumentSpec]:
        with svc.lock:
            return dict(svc.venue.specs)

    from exchange.api.controls import cancel_everywhere, cancel_everywhere_in_shards
    from exchange.api.runner import ShardRunner
    from exchange.api.shardmode import EXTENSION as SHARDS

    shards = app.extensions.get(SHARDS)
    # Shard mode: the market data comes from each shard's replica in this process's gateway
    # (started here on the feed's first round if no request started it yet).
    feed = StreamFeed(svc.market, specs, order_scope, path, poll=withdrawal_poller(app),
                      markets=None if shards is None else lambda: shards.get().markets())
    if shards is not None:  # shard mode: the cancels go to the shards' streams
        shards.market_listeners.append(feed.publish)
        feed.on_disconnect = lambda user: cancel_everywhere_in_shards(ShardRunner(shards.get()), user)
    else:
        feed.on_disconnect = lambda user: cancel_everywhere(svc, user)
    feed.on_verify = lambda msg: verify_signed_subscribe(app, msg)
    feed.start()
    app.extensions[FEED_EXTENSION] = feed
    return feed


def init_app(app: Any) -> None:
    """Register the public and private market-data blueprints."""
    app.register_blueprint(public)
    app.register_blueprint(private)
