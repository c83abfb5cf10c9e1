"""The exchange REST API (``/api/v1/exchange``): instruments, prices, orders, positions, margin.

Who is acting comes from one function, :func:`current_principal`, which
returns the username authenticated by ``custody.api.auth.secured``: trading
needs the ``trade`` permission and a key with the ``trade`` scope; reads need
``trade`` or ``ledger.read_own`` with a ``read`` key. Traders only ever see
their own orders, fills, positions and margin. Operator endpoints (price
quotes, the clock) are admin-only.

Amounts and prices are JSON integers in minor units (documented in
docs/exchange-api.md); every refusal is ``{"code", "error", "message"}``.

Client order ids are scoped per user: the book sees
``<scope of the user>:<client id>`` (`engine_order_id`), so two users may use
the same id, and neither learns nor blocks the other's. Responses show a
trader only their own side of what happened (`_event_view`): never another
account's name or order id.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Final

import msgspec
from flask import Blueprint, Flask, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from custody.api.auth import principal, secured
from custody.api.errors import ApiError, RequestCode
from custody.api.request import field_bool, field_int, field_str, json_object, reject_unknown
from custody.api.schema import (
    BOOL,
    INT,
    MAYBE_INT,
    OBJECT,
    STR,
    accepts,
    answers,
    array,
    obj,
    path_parameters,
)
from exchange.api import scaleout, shardmode
from exchange.api.runner import EmbeddedRunner, Outcome, Runner, ShardCode, ShardRunner, shard_code
from exchange.commands import (
    AdjustIsolatedMargin,
    Advance,
    AmendOrder,
    CancelAllOrders,
    CancelOrder,
    Deposit,
    Place,
    Quote,
    SetLeverage,
    SetTpSl,
    Tick,
    Withdraw,
)
from exchange.engine.codes import ResultCode
from exchange.engine.journal import FsyncPolicy
from exchange.engine.messages import (
    Accepted,
    Amend,
    Amended,
    Cancelled,
    NewOrder,
    Rejected,
    Trade,
    Triggered,
)
from exchange.instruments import MARKET_CONFIG, load_instruments
from exchange.recovery import DEFAULT_SNAPSHOT_EVERY
from exchange.risk import entitlements
from exchange.risk.clearing import isolated_account
from exchange.risk.codes import RiskCode
from exchange.service import ExchangeService
from exchange.summary import account_summary, instrument_view, order_views, position_views
from exchange.venue import (
    MAX_ECHO_CHARS,
    ORDER_TYPES,
    PRICE_KINDS,
    SIDES,
    STP_MODES,
    TIMES_IN_FORCE,
    InvalidCommand,
    Venue,
    amend_problem,
    order_problem,
)
from policies.api_key import Scope
from policies.roles import Permission

bp = Blueprint("exchange", __name__, url_prefix="/api/v1/exchange")
bp.before_request(scaleout.refuse_unrouted)  # a no-op unless in scale-out mode
EXTENSION = "strongroom.exchange"
# The composition root's TradingLimitsProvider (strongroom.wiring): KYC tier and jurisdiction caps.
LIMITS_EXTENSION = "strongroom.trading_limits"

TRADE = secured(Permission.TRADE, scope=Scope.TRADE, mfa=False)
READ = secured(Permission.TRADE, Permission.LEDGER_READ_OWN, scope=Scope.READ, mfa=False)
OPERATE = secured(admin_only=True, scope=Scope.TRADE, mfa=False)

RISK_STATUS = {
    RiskCode.INSUFFICIENT_MARGIN: 422,
    RiskCode.INSUFFICIENT_FREE_COLLATERAL: 422,
    RiskCode.UNKNOWN_INSTRUMENT: 404,
    RiskCode.UNKNOWN_ACCOUNT: 404,
    RiskCode.INSTRUMENT_NOT_TRADING: 409,
    RiskCode.NO_MARK_PRICE: 409,
    RiskCode.DUPLICATE_ORDER_ID: 409,
    RiskCode.INDEX_STALE: 409,
    RiskCode.MARKET_HALTED: 409,
    RiskCode.MARKET_CANCEL_ONLY: 409,
    RiskCode.PRICE_OVERRIDE_DISABLED: 403,
    RiskCode.TRADING_NOT_PERMITTED: 403,
    RiskCode.PRODUCT_NOT_PERMITTED: 403,
    RiskCode.NOTIONAL_CAP_EXCEEDED: 422,
    RiskCode.LEVERAGE_CAP_EXCEEDED: 422,
}
# Client order ids: 1..40 of A-Z a-z 0-9 . _ -, starting with a letter or digit, so an id is
# always one safe URL path segment (never "..", never "a/b") and fits the book's 64 characters
# together with the per-user scope.
CLIENT_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")
CLIENT_ID_RULE: Final = "1-40 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"
SOURCE_PATTERN: Final = re.compile(r"[A-Za-z0-9._-]{1,32}")
SCOPE_HEX_CHARS: Final = 16
SCOPE_SEPARATOR: Final = ":"
_INT64: Final = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
_SYMBOL: Final = {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,32}$"}
ORDER_SCHEMA: Final = obj({
    "symbol": _SYMBOL, "id": {"type": "string", "pattern": f"^{CLIENT_ID_PATTERN.pattern}$"},
    "side": {"type": "string", "enum": sorted(SIDES)}, "qty": _INT64,
}, {
    "type": {"type": "string", "enum": sorted(ORDER_TYPES)}, "price": _INT64,
    "tif": {"type": "string", "enum": sorted(TIMES_IN_FORCE)},
    "stp": {"type": "string", "enum": sorted(STP_MODES)}, "reduce_only": BOOL,
    "trigger_price": _INT64, "trigger": {"type": "string", "enum": sorted(PRICE_KINDS)},
    "margin_mode": {"type": "string", "enum": ["cross", "isolated"]},
}) | {"additionalProperties": False,
      "example": {"symbol": "BTC-PERP", "id": "o-1", "side": "buy", "qty": 10, "price": 59_000_000_000}}
AMEND_SCHEMA: Final = obj({}, {"qty": _INT64, "price": _INT64}) | {"additionalProperties": False,
                                                                    "example": {"qty": 5}}
AMOUNT_SCHEMA: Final = obj({"amount": _INT64}) | {"additionalProperties": False,
                                                  "example": {"amount": 1_000_000_000}}
QUOTE_SCHEMA: Final = obj({
    "underlying": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,16}$"},
    "source": {"type": "string", "pattern": f"^{SOURCE_PATTERN.pattern}$"}, "price": _INT64,
}) | {"additionalProperties": False,
      "example": {"underlying": "BTC", "source": "coinbase", "price": 60_000_000_000}}
# What a trader sees of an engine event (`_event_view`): always a type and sequence number.
EVENT_VIEW: Final = obj({"type": {"type": "string", "enum": [
    "accepted", "trade", "cancelled", "rejected", "amended", "triggered", "priceset", "depthupdate",
    "bestbidoffer", "depthsnapshot"]}, "seq": INT}, {"id": STR, "side": STR, "qty": INT,
                                                    "price": MAYBE_INT, "liquidity": STR})
EVENTS_ANSWER: Final = obj({"events": array(EVENT_VIEW)})
SUMMARY_ANSWER: Final = obj({"account": STR, "isolated": array(OBJECT)}, {
    "collateral": INT, "equity": INT, "used_margin": INT, "free_margin": INT,
    "maintenance_margin": INT, "margin_ratio_ppm": MAYBE_INT, "margin_mode": STR})
INSTRUMENTS_ANSWER: Final = obj({"instruments": array(obj({
    "symbol": STR, "kind": STR, "underlying": STR, "tick_size": INT, "lot_size": INT, "trading": BOOL,
    "mark": MAYBE_INT, "best_bid": MAYBE_INT, "best_ask": MAYBE_INT}))})
ORDERS_ANSWER: Final = obj({"orders": array(obj({
    "symbol": STR, "id": STR, "side": STR, "price": MAYBE_INT, "open_qty": INT, "account": STR,
    "status": {"type": "string", "enum": ["resting", "untriggered"]}},
    {"reduce_only": BOOL, "trigger_price": INT}))})
FILLS_ANSWER: Final = obj({"fills": array(obj({
    "symbol": STR, "order_id": STR, "side": STR, "price": INT, "qty": INT, "seq": INT, "ts": INT,
    "liquidity": {"type": "string", "enum": ["maker", "taker"]}}))})
POSITIONS_ANSWER: Final = obj({"positions": array(obj({
    "symbol": STR, "margin_mode": STR, "size": INT, "entry_price": MAYBE_INT, "mark": INT,
    "unrealised_pnl": INT, "realised_pnl": INT, "initial_margin": INT, "maintenance_margin": INT,
    "liquidation_price": MAYBE_INT}))})
ORDER_FIELDS = {"symbol", "id", "side", "qty", "type", "price", "tif", "stp", "reduce_only",
                "trigger_price", "trigger", "margin_mode"}


def init_app(app: Flask) -> None:
    """Recover the exchange service on ``app`` from its journal and register the blueprint.

    The venue journal lives in ``EXCHANGE_DATA_DIR`` (default ``<data dir>/exchange``);
    ``EXCHANGE_FSYNC`` is always|interval|never (docs/exchange-durability.md).
    """
    config = load_instruments(app.config.get("EXCHANGE_INSTRUMENTS") or MARKET_CONFIG)
    namespace = app.config.get("EXCHANGE_NAMESPACE", "x")
    ledger = app.extensions["strongroom.ledger"]
    directory = app.config.get("EXCHANGE_DATA_DIR")
    settings = app.extensions.get("strongroom.settings")
    if directory is None and settings is not None:
        directory = settings.data_dir / "exchange"
    shards = shardmode.init_shards(app, config)
    if shards or scaleout.nats_urls(app):
        # Scale-out and shard mode: the streams are the truth; this process keeps an unjournaled
        # venue only for instrument listings, so any number of API workers can run.
        directory = None
    if directory is None:
        app.extensions[EXTENSION] = ExchangeService(ledger, Venue(config, namespace=namespace))
    else:
        app.extensions[EXTENSION] = ExchangeService.open(
            ledger, config, Path(directory), namespace=namespace,
            policy=FsyncPolicy(app.config.get("EXCHANGE_FSYNC", "always")),
            snapshot_every=int(app.config.get("EXCHANGE_SNAPSHOT_EVERY", DEFAULT_SNAPSHOT_EVERY)))
    clock = app.extensions.get("strongroom.clock")
    if clock is not None:
        # Funding and expiry due before a command run before it (exchange/schedule.py).
        app.extensions[EXTENSION].clock = clock
    if not shards:
        scaleout.init_scaleout(app, sorted(config.instruments))
    app.register_blueprint(bp)


def service() -> ExchangeService:
    """Return the app's exchange service."""
    found: ExchangeService = current_app.extensions[EXTENSION]
    return found


def runner() -> Runner:
    """Return where this app runs venue commands: the clearing shards (shard mode) or in process."""
    gw = shardmode.shard_gateway()
    return EmbeddedRunner(service()) if gw is None else ShardRunner(gw)


def pending_or(out: Outcome, answer: Any) -> ResponseReturnValue:
    """Answer 202 with the command's sequence if its replica has not applied it yet, else `answer()`."""
    if out.pending:
        return jsonify({"status": "pending", "seq": out.seq}), 202
    return answer()  # type: ignore[no-any-return]


def refusal(code: int, message: str) -> ApiError:
    """Return the API error of a venue refusal code (risk 2xxx, book 30xx, gateway/shard 31xx)."""
    if code in RiskCode._value2member_map_:
        return _risk(RiskCode(code), message)
    if code in ResultCode._value2member_map_:
        result = ResultCode(code)
        return ApiError(result, message, 404 if result is ResultCode.UNKNOWN_ORDER else 400)
    return ApiError(shard_code(code), message, 500 if code == ShardCode.INTERNAL_ERROR else 400)


def trading_limits(username: str) -> entitlements.TradingLimits | None:
    """Return the caller's trading limits from the app's provider (None: no provider, no limits)."""
    provider: entitlements.TradingLimitsProvider | None = current_app.extensions.get(LIMITS_EXTENSION)
    return None if provider is None else provider.trading_limits(username)


def _check_static_entitlement(symbol: str, cmd: NewOrder, limits: entitlements.TradingLimits | None) -> None:
    """Scale-out mode: refuse what needs no venue state (no trading at all, a product not allowed).

    The caps on notional and leverage need the engines' positions, which this
    process does not hold (docs/compliance.md, "Trading limits").
    """
    if limits is None or cmd.reduce_only:
        return
    spec = service().venue.specs.get(symbol)
    if limits.refusal is not None:
        raise _risk(RiskCode.TRADING_NOT_PERMITTED, limits.refusal)
    product = None if spec is None else entitlements.PRODUCT_OF_KIND.get(spec.kind, spec.kind)
    if product is not None and limits.products is not None and product not in limits.products:
        why = dict(limits.product_refusals).get(product) or f"{limits.basis} may not trade {product} products"
        raise _risk(RiskCode.PRODUCT_NOT_PERMITTED, why)


def current_principal() -> str:
    """Return the account the caller acts as (the authenticated username)."""
    return principal().username


def _now_ms() -> int:
    clock = current_app.extensions.get("strongroom.clock")
    return int(clock()) if clock is not None else 0


def _risk(code: RiskCode, message: str) -> ApiError:
    return ApiError(code, message, RISK_STATUS.get(code, 400))


def _echo(value: object) -> str:
    return repr(value)[:MAX_ECHO_CHARS]


def order_scope(username: str) -> str:
    """Return the prefix of every book order id of ``username`` (``<16 hex>:``).

    A hash rather than the name itself: usernames have up to 64 characters and
    the book's ids too, and an id on the book never names its owner.
    """
    digest = hashlib.sha256(b"strongroom.exchange.order-scope\0" + username.encode()).hexdigest()
    return digest[:SCOPE_HEX_CHARS] + SCOPE_SEPARATOR


def check_client_id(value: object) -> str:
    """Return a client order id that follows `CLIENT_ID_PATTERN`, or refuse with 3012 bad_id."""
    if not isinstance(value, str) or not CLIENT_ID_PATTERN.fullmatch(value):
        raise ApiError(ResultCode.BAD_ID, f"order id was {_echo(value)}, must be {CLIENT_ID_RULE}")
    return value


def engine_order_id(username: str, client_id: str) -> str:
    """Return the book's id of ``username``'s order ``client_id``."""
    return order_scope(username) + client_id


def client_order_id(scope: str, engine_id: str) -> str:
    """Return the id a trader knows for one of their book ids (liquidation ids stay as they are)."""
    return engine_id[len(scope):] if engine_id.startswith(scope) else engine_id


# ------------------------------------------------------------------ public data


@bp.get("/instruments")
@READ
@answers({"200": INSTRUMENTS_ANSWER})
def instruments() -> ResponseReturnValue:
    """List instruments with their specification and trading state."""
    views = runner().each(lambda v: [instrument_view(v, s) for s in sorted(v.specs)])
    return jsonify({"instruments": sorted(views, key=lambda i: str(i["symbol"]))})


@bp.get("/prices")
@READ
@answers({"200": obj({"index": OBJECT, "mark": OBJECT, "now_ms": INT})})
def prices() -> ResponseReturnValue:
    """Return index prices with their staleness judged now, and marks."""
    now = _now_ms()

    def view(v: Venue) -> list[tuple[str, str, Any]]:
        out: list[tuple[str, str, Any]] = []
        for u, s in sorted(v.index_state.items()):
            # The last published index, and whether its sources are still fresh at this moment.
            fresh = v.indices[u].compute(now)
            out.append(("index", u, {"price": s.price, "stale": fresh.stale,
                                     "fresh_sources": fresh.fresh_sources, "ts_ms": s.ts_ms}))
        return out + [("mark", sym, m) for sym, m in v.clearing.marks.items()]

    # Shards that share an underlying each keep its index; the newest reading wins.
    rows = sorted(runner().each(view), key=lambda r: (r[0], r[1], r[2]["ts_ms"] if r[0] == "index" else 0))
    return jsonify({"index": {u: i for kind, u, i in rows if kind == "index"},
                    "mark": {s: m for kind, s, m in rows if kind == "mark"}, "now_ms": now})


@bp.get("/funding")
@READ
@answers({"200": obj({"funding": array(OBJECT), "now_ms": INT, "next": array(obj({
    "symbol": STR, "next_funding_ms": INT, "countdown_ms": INT, "interval_ms": INT,
    "predicted_rate_ppm": INT}))})})
def funding() -> ResponseReturnValue:
    """Return the funding history (newest last) and each perpetual's next funding time and rate."""
    now = _now_ms()
    history = runner().each(lambda v: [e.to_dict() for e in v.funding_history[-1000:]])
    nxt = runner().each(lambda v: funding_countdown(v, now))
    return jsonify({"funding": sorted(history, key=lambda e: (e["ts_ms"], e["symbol"]))[-1000:],
                    "next": sorted(nxt, key=lambda n: n["symbol"]), "now_ms": now})


def funding_countdown(v: Venue, now_ms: int) -> list[dict[str, Any]]:
    """Return, per trading perpetual, the next funding time, the countdown and the predicted rate."""
    out = []
    for symbol in sorted(v.premium):
        spec = v.specs[symbol]
        if not v.clearing.trading[symbol]:
            continue
        interval = spec.funding_interval_ms
        at = v.next_funding_ms.get(symbol, (now_ms // interval + 1) * interval)
        out.append({"symbol": symbol, "next_funding_ms": at, "countdown_ms": max(0, at - now_ms),
                    "interval_ms": interval, "predicted_rate_ppm": v.funding_rate(symbol)})
    return out


@bp.get("/settlements")
@READ
@answers({"200": obj({"settlements": array(OBJECT)})})
def settlements() -> ResponseReturnValue:
    """Return the settlement history of expired instruments."""
    return jsonify({"settlements": runner().each(lambda v: [e.to_dict() for e in v.settlement_history])})


# ------------------------------------------------------------------ orders


@bp.post("/orders")
@TRADE
@accepts(ORDER_SCHEMA)
@answers({"201": EVENTS_ANSWER})
def place_order() -> ResponseReturnValue:
    """Place an order: pre-trade margin check, then the book; returns the caller's events."""
    body = json_object()
    reject_unknown(body, ORDER_FIELDS)
    symbol = field_str(body, "symbol")
    assert symbol is not None
    account = current_principal()
    client_id = check_client_id(body.get("id"))
    # A null optional field means absent (docs/api.md), so it takes the default.
    mode = field_str(body, "margin_mode", required=False) or "cross"
    if mode not in ("cross", "isolated"):
        raise _risk(RiskCode.INVALID_MARGIN_MODE, f"margin_mode was {_echo(mode)}, must be cross or isolated")
    engine_account = isolated_account(account, symbol) if mode == "isolated" else account
    cmd = NewOrder(
        id=engine_order_id(account, client_id), account=engine_account,
        side=field_str(body, "side"),  # type: ignore[arg-type]
        qty=field_int(body, "qty") or 0,
        type=field_str(body, "type", required=False) or "limit",  # type: ignore[arg-type]
        price=field_int(body, "price", required=False),
        tif=field_str(body, "tif", required=False) or "GTC",  # type: ignore[arg-type]
        stp=field_str(body, "stp", required=False),  # type: ignore[arg-type]
        reduce_only=field_bool(body, "reduce_only"),
        trigger_price=field_int(body, "trigger_price", required=False),
        trigger=field_str(body, "trigger", required=False) or "last",  # type: ignore[arg-type]
        ts=_now_ms() * 1_000_000)
    # Refused here, the order changes nothing and is never journaled (a journaled order that
    # the journal cannot decode again would stop the next start).
    problem = order_problem(cmd)
    if problem is not None:
        raise ApiError(problem[0], problem[1])
    limits = trading_limits(account)  # read before the lock: a database query
    gw = scaleout.gateway()
    if gw is not None:  # scale-out mode: margin reserved, then the market's command stream
        if mode != "cross":
            raise _risk(RiskCode.INVALID_MARGIN_MODE, "scale-out mode takes cross margin only")
        _check_static_entitlement(symbol, cmd, limits)
        seq, events = scaleout.place(gw, symbol, cmd, client_id)
        return scaleout.pending_response(seq) if events is None else _events_response(events, account)

    def build(venue: Venue) -> Place:
        _known(venue, symbol)
        return Place(symbol, cmd)

    out = runner().run(symbol, build, user=account, limits=limits, now_ms=_now_ms())
    if out.code == RiskCode.DUPLICATE_ORDER_ID:
        raise _risk(RiskCode.DUPLICATE_ORDER_ID,
                    f"order id {client_id!r} was already used for another order" if out.reused_id
                    else f"order id {client_id!r} is already live on {symbol}")
    if out.code:
        raise refusal(out.code, out.message.replace(cmd.id, client_id))
    return pending_or(out, lambda: _events_response(out.events, account))


@bp.delete("/orders/<symbol>/<order_id>")
@TRADE
@answers({"200": EVENTS_ANSWER})
def cancel_order(symbol: str, order_id: str) -> ResponseReturnValue:
    """Cancel one of the caller's live orders."""
    account = current_principal()
    client_id = check_client_id(order_id)
    gw = scaleout.gateway()
    if gw is not None:  # scale-out mode: the book checks the order is the caller's and live
        seq, cancelled = scaleout.cancel(gw, symbol, engine_order_id(account, client_id), account,
                                         client_id, _now_ms())
        if cancelled is None:
            return scaleout.pending_response(seq)
        return _events_response(cancelled, account, status=200)

    def build(venue: Venue) -> CancelOrder:
        _known(venue, symbol)
        engine_id, owner = _resolve(venue, symbol, account, client_id)
        return CancelOrder(symbol, engine_id, owner)

    out = runner().run(symbol, build, now_ms=_now_ms())
    if out.code:
        raise refusal(out.code, out.message)
    return pending_or(out, lambda: _events_response(out.events, account, status=200))


@bp.delete("/orders/<symbol>")
@TRADE
@answers({"200": EVENTS_ANSWER})
def cancel_all_orders(symbol: str) -> ResponseReturnValue:
    """Cancel every live order of the caller on one instrument (cross and isolated)."""
    account = current_principal()

    def build(venue: Venue) -> list[CancelAllOrders]:
        _known(venue, symbol)
        book = venue.books[symbol]
        live = []
        for engine_account in (account, isolated_account(account, symbol)):
            if any(o.account == engine_account for o in book.orders.values()) or any(
                    s.account == engine_account for s in book.stops.values()):
                live.append(CancelAllOrders(symbol, engine_account))
        return live

    out = runner().run(symbol, build, now_ms=_now_ms())
    if out.code:
        raise refusal(out.code, out.message)
    return pending_or(out, lambda: _events_response(out.events, account, status=200))


@bp.patch("/orders/<symbol>/<order_id>")
@TRADE
@accepts(AMEND_SCHEMA)
@answers({"200": EVENTS_ANSWER})
def amend_order(symbol: str, order_id: str) -> ResponseReturnValue:
    """Amend quantity and/or price of one of the caller's resting orders."""
    body = json_object()
    reject_unknown(body, {"qty", "price"})
    account = current_principal()
    client_id = check_client_id(order_id)
    qty, price = field_int(body, "qty", required=False), field_int(body, "price", required=False)
    limits = trading_limits(account)
    now_ms = _now_ms()

    def build(venue: Venue) -> AmendOrder:
        _known(venue, symbol)
        engine_id, owner = _resolve(venue, symbol, account, client_id)
        # The edge's time in ns, like a new order's: a crossing amend's trades carry it.
        amend = Amend(engine_id, qty, price, owner, now_ms * 1_000_000)
        problem = amend_problem(amend)
        if problem is not None:
            raise ApiError(*problem)
        return AmendOrder(symbol, amend)

    out = runner().run(symbol, build, user=account, limits=limits, now_ms=now_ms)
    if out.code:
        engine_id = out.commands[0].amend.id  # type: ignore[union-attr]
        raise refusal(out.code, out.message.replace(engine_id, client_id))
    return pending_or(out, lambda: _events_response(out.events, account, status=200))


def _resolve(venue: Venue, symbol: str, account: str, client_id: str) -> tuple[str, str]:
    """Return (book id, owning engine account) of the caller's order ``client_id`` on ``symbol``.

    The owner is the isolated sub-account when the order was placed isolated; an
    order that is not the caller's resolves to the caller, so the book answers 3001.
    Orders placed before ids were scoped (raw book ids) still resolve when the caller
    owns them.
    """
    orders = venue.clearing.orders
    for engine_id in (engine_order_id(account, client_id), client_id):
        res = orders.get((symbol, engine_id))
        if res is not None and res.payer == account:
            return engine_id, res.account
    return engine_order_id(account, client_id), account


@bp.get("/orders")
@READ
@answers({"200": ORDERS_ANSWER})
def open_orders() -> ResponseReturnValue:
    """List the caller's live orders (resting and untriggered stops)."""
    account = current_principal()
    scope = order_scope(account)
    gw = scaleout.gateway()
    if gw is not None:  # scale-out mode: the gateway's event-fed state
        return jsonify({"orders": [dict(o, id=client_order_id(scope, str(o["id"])), account=account,
                                        status="resting") for o in gw.open_orders(account)]})
    views = runner().each(lambda v: order_views(v, account))
    for view in views:
        view["id"] = client_order_id(scope, view["id"])
    return jsonify({"orders": views})


@bp.get("/fills")
@READ
@answers({"200": FILLS_ANSWER})
def fills() -> ResponseReturnValue:
    """List the caller's most recent fills (cross and isolated), oldest first."""
    account = current_principal()
    scope = order_scope(account)
    rows = runner().each(lambda v: [dict(f, order_id=client_order_id(scope, f["order_id"]))
                                    for a, kept in v.fills.items()
                                    if a == account or a.startswith(account + ":iso:") for f in kept])
    return jsonify({"fills": sorted(rows, key=lambda f: (f["ts"], f["seq"]))})


@bp.get("/positions")
@READ
@answers({"200": POSITIONS_ANSWER})
def positions() -> ResponseReturnValue:
    """List the caller's positions with entry, mark, PnL and liquidation price.

    In scale-out mode: size, entry cost and entry price from the event-fed state.
    """
    gw = scaleout.gateway()
    if gw is not None:
        return jsonify({"positions": scaleout.position_views(gw, current_principal())})
    account = current_principal()
    return jsonify({"positions": runner().each(lambda v: position_views(v, account))})


@bp.get("/depth/<symbol>")
@READ
@answers({"200": obj({"symbol": STR, "seq": INT, "bids": array(array(INT)),
                      "asks": array(array(INT))})})
def depth(symbol: str) -> ResponseReturnValue:
    """Return book levels [price, size] from memory (scale-out and shard modes only)."""
    if shardmode.holder() is not None:
        return jsonify(runner().read(symbol, lambda v: _depth_of(v, symbol, 10)))
    gw = scaleout.gateway()
    if gw is None:
        raise ApiError(RequestCode.NOT_FOUND, "book depth here is served in scale-out mode only; "
                       "see /api/v1/market", 404)
    return jsonify(scaleout.depth_view(gw, symbol, 10))


def _depth_of(venue: Venue, symbol: str, depth: int) -> dict[str, Any]:
    """Return a shard replica's book levels of `symbol` and the clearing sequence they reflect."""
    _known(venue, symbol)
    snap = venue.books[symbol].depth_snapshot(depth)
    return {"symbol": symbol, "seq": venue.clearing.seq,
            "bids": [[p, q] for p, q, _ in snap.bids], "asks": [[p, q] for p, q, _ in snap.asks]}


@bp.get("/account")
@READ
@answers({"200": SUMMARY_ANSWER})
def account() -> ResponseReturnValue:
    """Return the margin summary: equity, used and free margin, margin ratio.

    Shard mode: of one clearing shard's pool (``?shard=NAME``, default the default shard).
    """
    account = current_principal()
    return jsonify(runner().read(None, lambda v: account_summary(v, account), pool=request.args.get("shard")))


@bp.post("/collateral/<direction>")
@TRADE
@accepts(AMOUNT_SCHEMA)
@path_parameters(direction={"type": "string", "enum": ["deposit", "withdraw"]})
@answers({"200": SUMMARY_ANSWER})
def collateral(direction: str) -> ResponseReturnValue:
    """Move USDC between the caller's spot balance and exchange collateral.

    Shard mode: the collateral of one clearing shard's pool (``?shard=NAME``, default
    the default shard).
    """
    body = json_object()
    reject_unknown(body, {"amount"})
    amount = field_int(body, "amount") or 0
    account = current_principal()
    if direction not in ("deposit", "withdraw"):
        raise ApiError(RequestCode.NOT_FOUND, f"direction was {direction!r}, must be deposit|withdraw", 404)
    pool = request.args.get("shard")
    run = runner()
    if direction == "deposit":
        out = _deposit(run, pool, account, amount)
    else:
        out = run.run(None, lambda _: Withdraw(account, amount), pool=pool, now_ms=_now_ms())
    if out.code:
        code = RiskCode(out.code) if out.code in RiskCode._value2member_map_ else None
        raise refusal(out.code, f"withdrawal of {amount} refused: {code.reason}" if code is not None
                      else out.message)
    return pending_or(out, lambda: jsonify(run.read(None, lambda v: account_summary(v, account), pool=pool)))


def _deposit(run: Runner, pool: str | None, account: str, amount: int) -> Outcome:
    """Move spot balance into collateral: checked against the ledger's spot balance first.

    Embedded: the spot balance is read, then the venue credits. Shard mode: the ledger
    reserves the amount (a pending transfer, refused atomically if the spot balance
    does not cover it), then the shard credits it in stream order (FundedDeposit,
    docs/scale-out.md "Clearing shards").
    """
    if isinstance(run, ShardRunner):
        return _shard_deposit(run, pool, account, amount)
    svc = service()
    available = svc.ledger.balance(svc.ledger_account(f"a:{account}")).credit_balance_available
    if not 0 < amount <= available:
        raise _risk(RiskCode.INSUFFICIENT_FREE_COLLATERAL,
                    f"amount was {amount}, spot balance has {available} available")
    return run.run(None, lambda _: Deposit(account, amount), pool=pool, now_ms=_now_ms())


def _shard_deposit(run: ShardRunner, pool: str | None, account: str, amount: int) -> Outcome:
    from exchange.stream.shard.settle import DepositRefused, reserve_deposit
    from exchange.stream.shard.wire import FundedDeposit

    shard = run.shard(None, pool)
    try:
        ref = reserve_deposit(service().ledger, account, amount, shard)
    except DepositRefused as exc:  # nothing reserved; the ledger's message names internal ids
        if exc.code == "insufficient_funds":
            raise _risk(RiskCode.INSUFFICIENT_FREE_COLLATERAL,
                        f"amount was {amount}, more than the spot balance available") from None
        raise _risk(RiskCode.INVALID_AMOUNT, f"amount was {amount}: {exc.code}") from None
    # A failed append leaves the reservation pending: the reconciler voids it (VoidDeposit).
    return run.run(None, lambda _: FundedDeposit(account, amount, ref),  # type: ignore[arg-type,return-value]
                   pool=shard, now_ms=_now_ms())


# ------------------------------------------------------------------ position margin (issue 14)

_MODE: Final = {"type": "string", "enum": ["cross", "isolated"]}
LEVERAGE_SCHEMA: Final = obj({"leverage": {"type": "integer", "minimum": 1, "maximum": 1_000}},
                             {"margin_mode": _MODE}) | {"additionalProperties": False}
TPSL_SCHEMA: Final = obj({}, {"take_profit": _INT64, "stop_loss": _INT64,
                              "margin_mode": _MODE}) | {"additionalProperties": False}
POSITION_RISK_STATUS: Final = {
    RiskCode.INVALID_LEVERAGE: 400, RiskCode.POSITION_MARGIN_LOCKED: 422, RiskCode.INVALID_AMOUNT: 400,
}


def _position_account(body: dict[str, Any], symbol: str) -> str:
    """Return the margin account a position request acts on (the cross account or its isolated one)."""
    mode = field_str(body, "margin_mode", required=False, default="cross")
    if mode not in ("cross", "isolated"):
        raise _risk(RiskCode.INVALID_MARGIN_MODE, f"margin_mode was {mode!r}, must be cross or isolated")
    account = current_principal()
    return isolated_account(account, symbol) if mode == "isolated" else account


def _position_refusal(code: int, message: str) -> ApiError:
    if code not in RiskCode._value2member_map_:
        return refusal(code, message)
    risk = RiskCode(code)
    return ApiError(risk, message, POSITION_RISK_STATUS.get(risk, RISK_STATUS.get(risk, 400)))


@bp.post("/positions/<symbol>/isolated-margin/<direction>")
@TRADE
@accepts(AMOUNT_SCHEMA)
@answers({"200": SUMMARY_ANSWER})
def isolated_margin(symbol: str, direction: str) -> ResponseReturnValue:
    """Add margin to (``add``) or take it from (``remove``) the caller's isolated position."""
    body = json_object()
    reject_unknown(body, {"amount"})
    amount = field_int(body, "amount") or 0
    if direction not in ("add", "remove"):
        raise ApiError(RequestCode.NOT_FOUND, f"direction was {direction!r}, must be add|remove", 404)
    account = current_principal()
    signed = amount if direction == "add" else -amount

    def build(venue: Venue) -> AdjustIsolatedMargin:
        _known(venue, symbol)
        return AdjustIsolatedMargin(account, symbol, signed)

    run = runner()
    out = run.run(symbol, build, now_ms=_now_ms())
    if out.code:
        raise _position_refusal(out.code, out.message)
    return pending_or(out, lambda: jsonify(run.read(symbol, lambda v: account_summary(v, account))))


@bp.post("/positions/<symbol>/leverage")
@TRADE
@accepts(LEVERAGE_SCHEMA)
@answers({"200": obj({"symbol": STR, "leverage": INT, "margin_mode": STR})})
def leverage(symbol: str) -> ResponseReturnValue:
    """Choose the caller's leverage on a linear instrument (it selects the initial-margin rate)."""
    body = json_object()
    reject_unknown(body, {"leverage", "margin_mode"})
    chosen = field_int(body, "leverage") or 0

    def build(venue: Venue) -> SetLeverage:
        _known(venue, symbol)
        return SetLeverage(_position_account(body, symbol), symbol, chosen)

    out = runner().run(symbol, build, now_ms=_now_ms())
    if out.code:
        raise _position_refusal(out.code, out.message)
    mode = "isolated" if out.commands[0].account != current_principal() else "cross"  # type: ignore[union-attr]
    return pending_or(out, lambda: jsonify({"symbol": symbol, "leverage": chosen, "margin_mode": mode}))


@bp.post("/positions/<symbol>/tpsl")
@TRADE
@accepts(TPSL_SCHEMA)
@answers({"200": obj({"symbol": STR, "take_profit": MAYBE_INT, "stop_loss": MAYBE_INT})})
def take_profit_stop_loss(symbol: str) -> ResponseReturnValue:
    """Attach take-profit/stop-loss mark prices to the caller's position (neither: detach)."""
    body = json_object()
    reject_unknown(body, {"take_profit", "stop_loss", "margin_mode"})
    take_profit = field_int(body, "take_profit", required=False)
    stop_loss = field_int(body, "stop_loss", required=False)

    def build(venue: Venue) -> SetTpSl:
        _known(venue, symbol)
        return SetTpSl(_position_account(body, symbol), symbol, take_profit, stop_loss)

    out = runner().run(symbol, build, now_ms=_now_ms())
    if out.code:
        raise _position_refusal(out.code, out.message)
    return pending_or(out, lambda: jsonify({"symbol": symbol, "take_profit": take_profit,
                                            "stop_loss": stop_loss}))


# ------------------------------------------------------------------ operator


@bp.post("/operator/quotes")
@OPERATE
@accepts(QUOTE_SCHEMA)
@answers({"200": obj({"underlying": STR, "index": MAYBE_INT, "stale": BOOL})})
def quote() -> ResponseReturnValue:
    """Hand-set one price-source quote (dev/demo mode only) and recompute the index and marks."""
    if not _dev_mode():
        raise _risk(RiskCode.PRICE_OVERRIDE_DISABLED,
                    "hand-set index prices are refused outside dev mode; prices come from the "
                    "configured feed (STRONGROOM_EXCHANGE_FEED), dev mode is STRONGROOM_EXCHANGE_DEV_MODE=1")
    body = json_object()
    reject_unknown(body, {"underlying", "source", "price"})
    underlying = field_str(body, "underlying") or ""
    source = field_str(body, "source") or ""
    if not SOURCE_PATTERN.fullmatch(source):
        raise ApiError(RequestCode.INVALID_FIELD, f"source was {_echo(source)}, must match "
                       f"{SOURCE_PATTERN.pattern}")
    price = field_int(body, "price") or 0
    now = _now_ms()
    run = runner()
    if isinstance(run, ShardRunner):
        return _shard_quote(run, underlying, source, price, now)
    svc = service()
    with svc.command() as venue:
        if underlying not in venue.indices:
            raise ApiError(RequestCode.INVALID_FIELD, f"underlying was {_echo(underlying)}, not indexed")
        try:
            venue.quote(underlying, source, price, now)
        except ValueError as exc:  # InvalidCommand included: nothing changed, nothing journaled
            raise ApiError(RequestCode.INVALID_FIELD, str(exc)[:200]) from None
        state = venue.tick(underlying, now)
    return jsonify({"underlying": underlying, "index": state.price, "stale": state.stale})


@bp.post("/operator/advance")
@OPERATE
@answers({"200": obj({"funding": INT, "settlements": INT})})
def advance() -> ResponseReturnValue:
    """Run funding and expiries due at the current time."""
    run = runner()
    if isinstance(run, ShardRunner):  # every shard, in its stream order
        for pool in run.venues():
            run.run(None, lambda _: Advance(_now_ms()), pool=pool, now_ms=_now_ms())
        return jsonify({"funding": len(run.each(lambda v: list(v.funding_history))),
                        "settlements": len(run.each(lambda v: list(v.settlement_history)))})
    svc = service()
    with svc.command() as venue:
        venue.advance(_now_ms())
    return jsonify({"funding": len(svc.venue.funding_history),
                    "settlements": len(svc.venue.settlement_history)})


def _shard_quote(run: ShardRunner, underlying: str, source: str, price: int,
                 now: int) -> ResponseReturnValue:
    """Append the quote and an index tick to every shard with instruments on `underlying`."""
    pools = [p for p in run.venues()
             if run.read(None, lambda v: any(s.underlying == underlying for s in v.specs.values()), pool=p)]
    if not pools:
        raise ApiError(RequestCode.INVALID_FIELD, f"underlying was {_echo(underlying)}, not indexed")
    for pool in pools:
        out = run.run(None, lambda _: [Quote(underlying, source, price, now), Tick(underlying, now)],
                      pool=pool, now_ms=now)
        if out.code:
            raise ApiError(RequestCode.INVALID_FIELD, out.message[:200])
        if out.pending:
            return pending_or(out, dict)
    state = run.read(None, lambda v: v.index_state.get(underlying), pool=pools[0])
    return jsonify({"underlying": underlying, "index": None if state is None else state.price,
                    "stale": True if state is None else state.stale})


def _dev_mode() -> bool:
    settings = current_app.extensions.get("strongroom.settings")
    default = bool(settings is not None and settings.exchange_dev_mode)
    return bool(current_app.config.get("EXCHANGE_DEV_MODE", default))


def _known(venue: Venue, symbol: str) -> None:
    if symbol not in venue.specs:
        raise _risk(RiskCode.UNKNOWN_INSTRUMENT, f"symbol was {_echo(symbol)}, not listed")


def _invalid_to_400(call: Any) -> Any:
    """Run a venue call; its `InvalidCommand` (nothing changed, nothing journaled) becomes a 400."""
    try:
        return call()
    except InvalidCommand as exc:
        raise ApiError(exc.code, exc.message) from None


def _events_response(events: list[Any], account: str, status: int = 201) -> ResponseReturnValue:
    """Refuse with the caller's own engine rejection, or answer with the caller's view of events."""
    scope = order_scope(account)
    views = [v for v in (_event_view(e, scope) for e in events) if v is not None]
    for e in events:
        if type(e) is Rejected and e.id is not None and e.id.startswith(scope):
            message = e.message.replace(e.id, client_order_id(scope, e.id))
            if e.code in RISK_STATUS:  # a kill switch refused it (scale-out engines: 2021, 2022)
                raise _risk(RiskCode(e.code), message)
            code = ResultCode(e.code)
            raise ApiError(code, message, 404 if code is ResultCode.UNKNOWN_ORDER else 400)
    return jsonify({"events": views}), status


def _event_view(e: Any, scope: str) -> dict[str, Any] | None:
    """Return what the owner of ``scope`` may see of one engine event, or None.

    A trade shows only the caller's side (their order id, side, liquidity):
    never the counterparty's account or order id, which internal settlement
    keeps. Events about other accounts' orders (a stop the caller's trade
    triggered, say) are left out; market data is public and passes through.
    """
    t = type(e)
    if t is Trade:
        if e.taker.startswith(scope):
            own, side, liquidity = e.taker, e.taker_side, "taker"
        elif e.maker.startswith(scope):
            own, side, liquidity = e.maker, "sell" if e.taker_side == "buy" else "buy", "maker"
        else:
            return None
        return {"type": "trade", "seq": e.seq, "id": client_order_id(scope, own), "side": side,
                "price": e.price, "qty": e.qty, "liquidity": liquidity, "ts": e.ts}
    if t in (Accepted, Cancelled, Amended, Triggered, Rejected):
        if e.id is None or not e.id.startswith(scope):
            return None
        data: dict[str, Any] = msgspec.to_builtins(e)
        data["id"] = client_order_id(scope, e.id)
        data.pop("account", None)
        data.pop("oid", None)
        if t is Rejected:
            data["message"] = e.message.replace(e.id, data["id"])
    else:
        data = msgspec.to_builtins(e)
    data["type"] = t.__name__.lower()
    return data
