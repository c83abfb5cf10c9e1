"""The exchange REST API (``/api/v1/exchange``): instruments, prices, orders, positions, margin.

Who is acting comes from one function, :func:`current_principal`, which
returns the username authenticated by ``custody.api.auth.secured``: trading
needs the ``trade`` permission and a key with the ``trade`` scope; reads need
``trade`` or ``ledger.read_own`` with a ``read`` key. Traders only ever see
their own orders, fills, positions and margin. Operator endpoints (price
quotes, the clock) are admin-only.

Amounts and prices are JSON integers in minor units (documented in
docs/exchange-api.md); every refusal is ``{"code", "error", "message"}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from flask import Blueprint, Flask, current_app, jsonify
from flask.typing import ResponseReturnValue

from custody.api.auth import principal, secured
from custody.api.errors import ApiError, RequestCode
from custody.api.request import field_bool, field_int, field_str, json_object, reject_unknown
from exchange.engine.codes import ResultCode
from exchange.engine.journal import FsyncPolicy
from exchange.engine.messages import Amend, NewOrder, Rejected
from exchange.instruments import load_instruments
from exchange.recovery import DEFAULT_SNAPSHOT_EVERY
from exchange.risk.clearing import isolated_account
from exchange.risk.codes import RiskCode
from exchange.service import ExchangeService
from exchange.summary import account_summary, instrument_view, order_views, position_views
from exchange.venue import Venue
from policies.api_key import Scope
from policies.roles import Permission

bp = Blueprint("exchange", __name__, url_prefix="/api/v1/exchange")
EXTENSION = "strongroom.exchange"

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
}
ORDER_FIELDS = {"symbol", "id", "side", "qty", "type", "price", "tif", "stp", "reduce_only",
                "trigger_price", "trigger", "margin_mode"}


def init_app(app: Flask) -> None:
    """Recover the exchange service on ``app`` from its journal and register the blueprint.

    The venue journal lives in ``EXCHANGE_DATA_DIR`` (default ``<data dir>/exchange``);
    ``EXCHANGE_FSYNC`` is always|interval|never (docs/exchange-durability.md).
    """
    config = load_instruments(app.config.get("EXCHANGE_INSTRUMENTS"))
    namespace = app.config.get("EXCHANGE_NAMESPACE", "x")
    ledger = app.extensions["strongroom.ledger"]
    directory = app.config.get("EXCHANGE_DATA_DIR")
    settings = app.extensions.get("strongroom.settings")
    if directory is None and settings is not None:
        directory = settings.data_dir / "exchange"
    if directory is None:
        app.extensions[EXTENSION] = ExchangeService(ledger, Venue(config, namespace=namespace))
    else:
        app.extensions[EXTENSION] = ExchangeService.open(
            ledger, config, Path(directory), namespace=namespace,
            policy=FsyncPolicy(app.config.get("EXCHANGE_FSYNC", "always")),
            snapshot_every=int(app.config.get("EXCHANGE_SNAPSHOT_EVERY", DEFAULT_SNAPSHOT_EVERY)))
    app.register_blueprint(bp)


def service() -> ExchangeService:
    """Return the app's exchange service."""
    found: ExchangeService = current_app.extensions[EXTENSION]
    return found


def current_principal() -> str:
    """Return the account the caller acts as (the authenticated username)."""
    return principal().username


def _now_ms() -> int:
    clock = current_app.extensions.get("strongroom.clock")
    return int(clock()) if clock is not None else 0


def _risk(code: RiskCode, message: str) -> ApiError:
    return ApiError(code, message, RISK_STATUS.get(code, 400))


# ------------------------------------------------------------------ public data


@bp.get("/instruments")
@READ
def instruments() -> ResponseReturnValue:
    """List instruments with their specification and trading state."""
    svc = service()
    with svc.lock:
        return jsonify({"instruments": [instrument_view(svc.venue, s) for s in sorted(svc.venue.specs)]})


@bp.get("/prices")
@READ
def prices() -> ResponseReturnValue:
    """Return index prices (with staleness) and marks."""
    svc = service()
    with svc.lock:
        v = svc.venue
        return jsonify({
            "index": {u: {"price": s.price, "stale": s.stale, "fresh_sources": s.fresh_sources,
                          "ts_ms": s.ts_ms} for u, s in sorted(v.index_state.items())},
            "mark": dict(sorted(v.clearing.marks.items())),
        })


@bp.get("/funding")
@READ
def funding() -> ResponseReturnValue:
    """Return the funding history (newest last)."""
    with service().lock:
        return jsonify({"funding": [e.to_dict() for e in service().venue.funding_history[-1000:]]})


@bp.get("/settlements")
@READ
def settlements() -> ResponseReturnValue:
    """Return the settlement history of expired instruments."""
    with service().lock:
        return jsonify({"settlements": [e.to_dict() for e in service().venue.settlement_history]})


# ------------------------------------------------------------------ orders


@bp.post("/orders")
@TRADE
def place_order() -> ResponseReturnValue:
    """Place an order: pre-trade margin check, then the book; returns the engine events."""
    body = json_object()
    reject_unknown(body, ORDER_FIELDS)
    symbol = field_str(body, "symbol")
    assert symbol is not None
    account = current_principal()
    mode = field_str(body, "margin_mode", required=False, default="cross")
    if mode not in ("cross", "isolated"):
        raise _risk(RiskCode.INVALID_MARGIN_MODE, f"margin_mode was {mode!r}, must be cross or isolated")
    engine_account = isolated_account(account, symbol) if mode == "isolated" else account
    try:
        cmd = NewOrder(
            id=field_str(body, "id") or "", account=engine_account,
            side=field_str(body, "side"),  # type: ignore[arg-type]
            qty=field_int(body, "qty") or 0, type=field_str(body, "type", required=False,  # type: ignore[arg-type]
                                                            default="limit"),
            price=field_int(body, "price", required=False),
            tif=field_str(body, "tif", required=False, default="GTC"),  # type: ignore[arg-type]
            stp=field_str(body, "stp", required=False),  # type: ignore[arg-type]
            reduce_only=field_bool(body, "reduce_only"),
            trigger_price=field_int(body, "trigger_price", required=False),
            trigger=field_str(body, "trigger", required=False, default="last"),  # type: ignore[arg-type]
            ts=_now_ms() * 1_000_000)
    except TypeError as exc:
        raise ApiError(RequestCode.INVALID_FIELD, str(exc)) from None
    svc = service()
    with svc.command() as venue:
        if symbol not in venue.specs:
            raise _risk(RiskCode.UNKNOWN_INSTRUMENT, f"symbol was {symbol!r}, not listed")
        result = venue.place(symbol, cmd)
    if result.code:
        raise _risk(result.code, result.message)
    _raise_engine_rejection(result.events)
    return jsonify({"events": [_event(e) for e in result.events]}), 201


@bp.delete("/orders/<symbol>/<order_id>")
@TRADE
def cancel_order(symbol: str, order_id: str) -> ResponseReturnValue:
    """Cancel one of the caller's live orders."""
    svc = service()
    account = current_principal()
    with svc.command() as venue:
        _known(venue, symbol)
        res = venue.clearing.orders.get((symbol, order_id))
        owner = res.account if res is not None and res.payer == account else account
        events = venue.cancel(symbol, order_id, owner)
    _raise_engine_rejection(events)
    return jsonify({"events": [_event(e) for e in events]})


@bp.patch("/orders/<symbol>/<order_id>")
@TRADE
def amend_order(symbol: str, order_id: str) -> ResponseReturnValue:
    """Amend quantity and/or price of one of the caller's resting orders."""
    body = json_object()
    reject_unknown(body, {"qty", "price"})
    account = current_principal()
    svc = service()
    with svc.command() as venue:
        _known(venue, symbol)
        res = venue.clearing.orders.get((symbol, order_id))
        owner = res.account if res is not None and res.payer == account else account
        result = venue.amend(symbol, Amend(order_id, field_int(body, "qty", required=False),
                                           field_int(body, "price", required=False), owner))
    if result.code:
        raise _risk(result.code, result.message)
    _raise_engine_rejection(result.events)
    return jsonify({"events": [_event(e) for e in result.events]})


@bp.get("/orders")
@READ
def open_orders() -> ResponseReturnValue:
    """List the caller's live orders (resting and untriggered stops)."""
    svc = service()
    with svc.lock:
        return jsonify({"orders": order_views(svc.venue, current_principal())})


@bp.get("/fills")
@READ
def fills() -> ResponseReturnValue:
    """List the caller's most recent fills (cross and isolated), oldest first."""
    svc = service()
    account = current_principal()
    with svc.lock:
        rows = [f for a, kept in svc.venue.fills.items() if a == account or a.startswith(account + ":iso:")
                for f in kept]
    return jsonify({"fills": sorted(rows, key=lambda f: (f["ts"], f["seq"]))})


@bp.get("/positions")
@READ
def positions() -> ResponseReturnValue:
    """List the caller's positions with entry, mark, PnL and liquidation price."""
    svc = service()
    with svc.lock:
        return jsonify({"positions": position_views(svc.venue, current_principal())})


@bp.get("/account")
@READ
def account() -> ResponseReturnValue:
    """Return the margin summary: equity, used and free margin, margin ratio."""
    svc = service()
    with svc.lock:
        return jsonify(account_summary(svc.venue, current_principal()))


@bp.post("/collateral/<direction>")
@TRADE
def collateral(direction: str) -> ResponseReturnValue:
    """Move USDC between the caller's spot balance and exchange collateral."""
    body = json_object()
    reject_unknown(body, {"amount"})
    amount = field_int(body, "amount") or 0
    account = current_principal()
    svc = service()
    if direction not in ("deposit", "withdraw"):
        raise ApiError(RequestCode.NOT_FOUND, f"direction was {direction!r}, must be deposit|withdraw", 404)
    if direction == "deposit":
        available = svc.ledger.balance(svc.ledger_account(f"a:{account}")).credit_balance_available
        if not 0 < amount <= available:
            raise _risk(RiskCode.INSUFFICIENT_FREE_COLLATERAL,
                        f"amount was {amount}, spot balance has {available} available")
    with svc.command() as venue:
        if direction == "deposit":
            venue.deposit(account, amount)
            code = RiskCode.OK
        else:
            code = venue.withdraw(account, amount)
    if code:
        raise _risk(code, f"withdrawal of {amount} refused: {code.reason}")
    with svc.lock:
        return jsonify(account_summary(svc.venue, account))


# ------------------------------------------------------------------ operator


@bp.post("/operator/quotes")
@OPERATE
def quote() -> ResponseReturnValue:
    """Feed one price-source quote and recompute that underlying's index and marks."""
    body = json_object()
    reject_unknown(body, {"underlying", "source", "price"})
    underlying = field_str(body, "underlying") or ""
    svc = service()
    now = _now_ms()
    with svc.command() as venue:
        if underlying not in venue.indices:
            raise ApiError(RequestCode.INVALID_FIELD, f"underlying was {underlying!r}, not indexed")
        try:
            venue.quote(underlying, field_str(body, "source") or "", field_int(body, "price") or 0, now)
        except ValueError as exc:
            raise ApiError(RequestCode.INVALID_FIELD, str(exc)) from None
        state = venue.tick(underlying, now)
    return jsonify({"underlying": underlying, "index": state.price, "stale": state.stale})


@bp.post("/operator/advance")
@OPERATE
def advance() -> ResponseReturnValue:
    """Run funding and expiries due at the current time."""
    svc = service()
    with svc.command() as venue:
        venue.advance(_now_ms())
    return jsonify({"funding": len(svc.venue.funding_history),
                    "settlements": len(svc.venue.settlement_history)})


def _known(venue: Venue, symbol: str) -> None:
    if symbol not in venue.specs:
        raise _risk(RiskCode.UNKNOWN_INSTRUMENT, f"symbol was {symbol!r}, not listed")


def _raise_engine_rejection(events: list[Any]) -> None:
    for e in events:
        if type(e) is Rejected:
            code = ResultCode(e.code)
            status = 404 if code is ResultCode.UNKNOWN_ORDER else 400
            raise ApiError(code, e.message, status)


def _event(e: Any) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(e)
    data["type"] = type(e).__name__.lower()
    return data

