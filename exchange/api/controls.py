"""Exchange kill switches over HTTP: market modes, circuit breakers, the dead man's switch.

Admins put a market in ``open`` / ``cancel_only`` / ``halted`` and configure its
max-move circuit breaker (admin key, MFA); each change is a journaled venue
command (it survives a restart and replays) and an event in the security log.
A trader arms their own dead man's switch: every live order of theirs is
cancelled ``timeout_ms`` after the last arm unless they re-arm it first
(``timeout_ms`` 0 disarms). See docs/operations.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar

from flask import Blueprint, Flask, current_app, jsonify
from flask.typing import ResponseReturnValue

from custody import security_log
from custody.api.auth import secured
from custody.api.errors import ApiError, error_body
from custody.api.request import field_int, field_str, json_object, reject_unknown
from custody.api.schema import INT, STR, accepts, answers, array, obj, path_parameters
from exchange.api import scaleout
from exchange.api.blueprint import _now_ms, current_principal, pending_or, runner, service
from exchange.api.runner import Build, ShardRunner, shard_code
from exchange.api.scaleout import refuse_unrouted
from exchange.commands import ArmDeadman, CancelAllOrders, SetBreaker, SetMarketStatus
from exchange.controls import (
    BREAKER_COOLDOWN_MAX_MS,
    BREAKER_MAX_BPS,
    BREAKER_WINDOW_MAX_MS,
    DEADMAN_MAX_MS,
    MODES,
    REASON_MAX_CHARS,
    ControlError,
    MarketClosed,
    check_breaker,
    check_deadman,
    check_status,
)
from exchange.risk.clearing import ISOLATED_SEP
from exchange.risk.codes import RiskCode
from exchange.venue import Venue
from policies.api_key import Scope
from policies.roles import Permission

T = TypeVar("T")
bp = Blueprint("exchange_controls", __name__, url_prefix="/api/v1/exchange")
# Scale-out mode: market modes, breakers and the dead man's switch go to the engines as control
# commands in each market's stream (exchange/stream/controls.py); anything else is refused.
bp.before_request(refuse_unrouted)

ADMIN = secured(admin_only=True, scope=Scope.TRADE, mfa=True)
READ_ADMIN = secured(admin_only=True, scope=Scope.READ, mfa=False)
TRADE = secured(Permission.TRADE, scope=Scope.TRADE, mfa=False)
CLOSED_STATUS: Final = 409
_SYMBOL: Final = {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,32}$"}
STATUS_SCHEMA: Final = obj({"mode": {"type": "string", "enum": list(MODES)}}, {
    "reason": {"type": "string", "maxLength": REASON_MAX_CHARS},
    "until_ms": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
}) | {"additionalProperties": False, "example": {"mode": "halted", "reason": "incident 42"}}
BREAKER_SCHEMA: Final = obj({"max_move_bps": {"type": "integer", "minimum": 0, "maximum": BREAKER_MAX_BPS}}, {
    "window_ms": {"type": "integer", "minimum": 0, "maximum": BREAKER_WINDOW_MAX_MS},
    "cooldown_ms": {"type": "integer", "minimum": 0, "maximum": BREAKER_COOLDOWN_MAX_MS},
}) | {"additionalProperties": False,
      "example": {"max_move_bps": 1000, "window_ms": 300_000, "cooldown_ms": 120_000}}
DEADMAN_SCHEMA: Final = obj({"timeout_ms": {"type": "integer", "minimum": 0, "maximum": DEADMAN_MAX_MS}}) | {
    "additionalProperties": False, "example": {"timeout_ms": 60_000}}
MARKET_VIEW: Final = obj({"symbol": STR, "mode": STR, "until_ms": INT, "reason": STR},
                         {"breaker": obj({"max_move_bps": INT, "window_ms": INT, "cooldown_ms": INT})})


def cancel_everywhere(svc: Any, user: str) -> int:
    """Cancel every live order of ``user`` (cross and isolated, every market); return how many books.

    Cancel-on-disconnect of a websocket session ends here. A halted market keeps its
    book frozen, so its orders stay (the halt's rule wins); everything else is journaled
    like a trader's own cancel-all.
    """
    books = 0
    prefix = user + ISOLATED_SEP
    with svc.command() as venue:
        for symbol, book in sorted(venue.books.items()):
            owners = {o.account for o in book.orders.values()} | {o.account for o in book.stops.values()}
            for owner in sorted(o for o in owners if o == user or o.startswith(prefix)):
                try:
                    venue.cancel_all(symbol, owner)
                    books += 1
                except MarketClosed:
                    pass
    return books


def cancel_everywhere_in_shards(run: ShardRunner, user: str) -> int:
    """Shard mode's `cancel_everywhere`: a cancel-all per book with ``user``'s orders, in each shard.

    Which books hold the user's orders is read from the replica; each cancel-all is
    decided in its shard's stream order (a halted market refuses it: its orders stay).
    """
    books = 0
    prefix = user + ISOLATED_SEP

    def live(venue: Venue) -> list[CancelAllOrders]:
        found = []
        for symbol, book in sorted(venue.books.items()):
            owners = {o.account for o in book.orders.values()} | {o.account for o in book.stops.values()}
            found += [CancelAllOrders(symbol, o) for o in sorted(owners) if o == user or o.startswith(prefix)]
        return found

    for pool in run.venues():
        for cmd in run.read(None, live, pool=pool):
            out = run.run(cmd.symbol, _constant(cmd))
            books += 0 if out.code else 1
    return books


def _constant(cmd: CancelAllOrders) -> Build:
    return lambda _: cmd


def init_app(app: Flask) -> None:
    """Register the blueprint and the 409 answer to a cancel on a halted market."""
    app.register_blueprint(bp)

    @app.errorhandler(MarketClosed)
    def _closed(exc: MarketClosed) -> ResponseReturnValue:
        return jsonify(error_body(exc.code, exc.message)), CLOSED_STATUS


def _market_view(symbol: str) -> dict[str, Any]:
    return runner().read(symbol, lambda venue: market_view_of(venue, symbol))


def market_view_of(venue: Venue, symbol: str) -> dict[str, Any]:
    """Return ``symbol``'s mode, until, reason and breaker on ``venue`` now."""
    controls = venue.controls
    now_ms = max(venue.now_ms, _now_ms())
    st = controls.status.get(symbol)
    mode = controls.mode(symbol, now_ms)
    view: dict[str, Any] = {"symbol": symbol, "mode": mode,
                            "until_ms": st.until_ms if st is not None and mode != "open" else 0,
                            "reason": st.reason if st is not None and mode != "open" else ""}
    breaker = controls.breakers.get(symbol)
    if breaker is not None:
        view["breaker"] = {"max_move_bps": breaker.max_move_bps, "window_ms": breaker.window_ms,
                           "cooldown_ms": breaker.cooldown_ms}
    return view


def _log(action: str, subject: str, details: dict[str, Any]) -> None:
    sessions = current_app.extensions["strongroom.sessions"]
    with sessions.begin() as session:
        security_log.append(session, at_ms=_now_ms(), actor=current_principal(), action=action,
                            subject=subject, details=details)


def _control(symbol: str, check: Callable[[], None], build: Build,
             audit: tuple[str, str, dict[str, Any]]) -> ResponseReturnValue:
    """Run one control command (journaled, or appended to the shard's stream) and answer the view.

    A ControlError (bad value; nothing changed, nothing journaled or appended) becomes a
    400 with its code. The view shows this command's effect (the shard replica applied
    it, or 202 with its sequence if not yet); `audit` (action, subject, details) goes to
    the security log once the command stands.
    """
    try:
        check()
    except ControlError as exc:
        raise ApiError(exc.code, exc.message) from None
    out = runner().run(symbol, build, now_ms=_now_ms())
    if out.code:
        raise ApiError(RiskCode(out.code) if out.code in RiskCode._value2member_map_
                       else shard_code(out.code), out.message)
    _log(*audit)
    return pending_or(out, lambda: jsonify(_market_view(symbol)))


def _scaleout_control(symbol: str, append: Callable[[int], int | None],
                      audit: tuple[str, str, dict[str, Any]]) -> ResponseReturnValue:
    """Append a control command to the market's stream (scale-out mode) and answer its view.

    The engine applies it in stream order; the answer shows the state the engine
    reported after it (or 202 with the command sequence if that did not come back in time).
    The security log records the change once the stream has it.
    """
    gw = scaleout.gateway()
    assert gw is not None
    try:
        pending = append(_now_ms())
    except ControlError as exc:
        raise ApiError(exc.code, exc.message) from None
    _log(*audit)
    if pending is not None:
        return scaleout.pending_response(pending)
    return jsonify(scaleout.market_view(gw, symbol, _now_ms()))


def _known(symbol: str) -> None:
    if symbol not in service().venue.specs:
        raise ApiError(RiskCode.UNKNOWN_INSTRUMENT, f"symbol was {symbol[:40]!r}, not listed", 404)


@bp.get("/admin/markets")
@READ_ADMIN
@answers({"200": obj({"markets": array(MARKET_VIEW)})})
def markets() -> ResponseReturnValue:
    """List every market's mode (open, cancel_only, halted) and circuit breaker."""
    gw = scaleout.gateway()
    if gw is not None:
        return jsonify({"markets": [scaleout.market_view(gw, s, _now_ms()) for s in sorted(gw.markets)]})
    views = runner().each(lambda v: [market_view_of(v, s) for s in sorted(v.specs)])
    return jsonify({"markets": sorted(views, key=lambda m: str(m["symbol"]))})


@bp.post("/admin/markets/<symbol>/status")
@ADMIN
@path_parameters(symbol=_SYMBOL)
@accepts(STATUS_SCHEMA)
@answers({"200": MARKET_VIEW})
def set_status(symbol: str) -> ResponseReturnValue:
    """Halt a market, make it cancel-only, or reopen it (journaled, security-logged)."""
    body = json_object()
    reject_unknown(body, {"mode", "reason", "until_ms"})
    mode = field_str(body, "mode") or ""
    reason = field_str(body, "reason", required=False, default="") or ""
    until_ms = field_int(body, "until_ms", required=False, default=0) or 0
    _known(symbol)
    audit = ("market.status", symbol, {"mode": mode, "until_ms": until_ms, "reason": reason})
    gw = scaleout.gateway()
    if gw is not None:
        return _scaleout_control(symbol, lambda now_ms: scaleout.set_status(
            gw, symbol, mode, until_ms, reason, now_ms), audit)
    return _control(symbol, lambda: check_status(mode, until_ms, reason),
                    lambda _: SetMarketStatus(symbol, mode, until_ms, reason), audit)


@bp.post("/admin/markets/<symbol>/breaker")
@ADMIN
@path_parameters(symbol=_SYMBOL)
@accepts(BREAKER_SCHEMA)
@answers({"200": MARKET_VIEW})
def set_breaker(symbol: str) -> ResponseReturnValue:
    """Configure (max_move_bps > 0) or remove (0) a market's max-move circuit breaker."""
    body = json_object()
    reject_unknown(body, {"max_move_bps", "window_ms", "cooldown_ms"})
    bps = field_int(body, "max_move_bps") or 0
    window_ms = field_int(body, "window_ms", required=False, default=0) or 0
    cooldown_ms = field_int(body, "cooldown_ms", required=False, default=0) or 0
    _known(symbol)
    gw = scaleout.gateway()
    if gw is not None:
        return _scaleout_control(symbol, lambda now_ms: scaleout.set_breaker(
            gw, symbol, bps, window_ms, cooldown_ms, now_ms),
            ("market.breaker", symbol,
             {"max_move_bps": bps, "window_ms": window_ms, "cooldown_ms": cooldown_ms}))
    return _control(symbol, lambda: check_breaker(bps, window_ms, cooldown_ms),
                    lambda _: SetBreaker(symbol, bps, window_ms, cooldown_ms),
                    ("market.breaker", symbol,
                     {"max_move_bps": bps, "window_ms": window_ms, "cooldown_ms": cooldown_ms}))


@bp.post("/deadman")
@TRADE
@accepts(DEADMAN_SCHEMA)
@answers({"200": obj({"timeout_ms": INT, "deadline_ms": INT})})
def deadman() -> ResponseReturnValue:
    """Arm or re-arm your dead man's switch: all your orders are cancelled after timeout_ms (0 disarms)."""
    body = json_object()
    reject_unknown(body, {"timeout_ms"})
    timeout_ms = field_int(body, "timeout_ms") or 0
    user = current_principal()
    gw = scaleout.gateway()
    if gw is not None:
        try:
            deadline = scaleout.arm_deadman(gw, user, timeout_ms, _now_ms())
        except ControlError as exc:
            raise ApiError(exc.code, exc.message) from None
        return jsonify({"timeout_ms": timeout_ms, "deadline_ms": deadline})
    try:
        check_deadman(timeout_ms)
    except ControlError as exc:
        raise ApiError(exc.code, exc.message) from None
    # Every clearing shard (one venue in the embedded mode) keeps its own switch, on its clock.
    run, deadline, pending = runner(), 0, None
    for pool in run.venues():
        out = run.run(None, lambda v: ArmDeadman(user, timeout_ms, max(v.now_ms, _now_ms())),
                      pool=None if len(run.venues()) == 1 else pool, now_ms=_now_ms())
        if out.code:
            raise ApiError(RiskCode(out.code) if out.code in RiskCode._value2member_map_
                           else shard_code(out.code), out.message)
        armed = out.commands[0]
        assert isinstance(armed, ArmDeadman)
        deadline = max(deadline, armed.now_ms + timeout_ms if timeout_ms else 0)
        pending = out if out.pending else pending
    if pending is not None:
        return pending_or(pending, dict)
    return jsonify({"timeout_ms": timeout_ms, "deadline_ms": deadline})
