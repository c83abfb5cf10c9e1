"""REST order entry and hot reads in scale-out mode (docs/scale-out.md, "Order entry").

When ``EXCHANGE_NATS_URLS`` (or ``STRONGROOM_EXCHANGE_NATS_URLS``) names NATS
servers, ``POST /api/v1/exchange/orders`` goes through the order gateway
(exchange/stream/gateway.py) instead of the in-process venue: initial margin
is reserved in the ledger, the order is appended to its market's command
stream under its (per-user scoped) id, and the answer carries the caller's
view of the engine's events (201), or only the command sequence (202) when
the events did not come back within the wait. Positions, open orders and
book depth are read from the gateway's event-fed state.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any, Final

from flask import Flask, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from custody.api.errors import ApiError
from exchange.controls import check_breaker, check_deadman, check_status
from exchange.engine.messages import NewOrder
from exchange.risk.codes import RiskCode
from exchange.stream.controls import NS_PER_MS, ArmDeadman, Control, SetBreaker, SetStatus
from exchange.stream.gateway import Gateway
from exchange.stream.margin import DuplicateOrder, MarginLedger, MarginRefused
from exchange.stream.publisher import StreamCode, StreamRefused
from exchange.stream.topology import SYMBOL_PATTERN

EXTENSION: Final = "strongroom.exchange.gateway"
DEFAULT_IM_PPM: Final = 100_000
DEPTH_MAX: Final = 50
STREAM_STATUS: Final = {StreamCode.UNKNOWN_MARKET: 404, StreamCode.STREAM_UNAVAILABLE: 503}


class GatewayHolder:
    """Create the gateway lazily, once per process (gunicorn forks after the app is built)."""

    def __init__(self, app: Flask, urls: list[str], markets: set[str], im_ppm: int,
                 wait_s: float) -> None:
        self.app, self.urls, self.markets = app, urls, markets
        self.im_ppm, self.wait_s = im_ppm, wait_s
        self._lock = threading.Lock()
        self._gateway: Gateway | None = None
        self._pid = 0

    def get(self) -> Gateway:
        """Return this process's gateway, connecting it on first use."""
        with self._lock:
            if self._gateway is None or self._pid != os.getpid():
                ext = self.app.extensions
                margin = MarginLedger(ext["strongroom.ledger"], ext["strongroom.sessions"])
                self._gateway = Gateway(self.urls, self.markets, margin, im_ppm=self.im_ppm,
                                        wait_s=self.wait_s).start()
                self._pid = os.getpid()
            return self._gateway

    def close(self) -> None:
        """Disconnect this process's gateway, if any."""
        with self._lock:
            if self._gateway is not None and self._pid == os.getpid():
                self._gateway.close()
            self._gateway = None


def nats_urls(app: Flask) -> list[str]:
    """Return the configured NATS servers of the engines (empty: the embedded mode)."""
    urls = app.config.get("EXCHANGE_NATS_URLS")
    settings = app.extensions.get("strongroom.settings")
    if urls is None and settings is not None:
        urls = list(settings.exchange_nats_urls)
    return list(urls or [])


def init_scaleout(app: Flask, symbols: list[str]) -> None:
    """Switch order entry to the NATS gateway if NATS servers are configured."""
    urls = nats_urls(app)
    if not urls:
        return
    # The markets that have engines (default: every listed one); the dead man's switch is armed
    # on each of them, so a listed market without a stream would refuse it (503).
    routed = app.config.get("EXCHANGE_SCALEOUT_MARKETS")
    markets = {s for s in (routed if routed is not None else symbols) if SYMBOL_PATTERN.fullmatch(s)}
    app.extensions[EXTENSION] = GatewayHolder(
        app, list(urls), markets, int(app.config.get("EXCHANGE_SCALEOUT_IM_PPM", DEFAULT_IM_PPM)),
        float(app.config.get("EXCHANGE_SCALEOUT_WAIT_S", 5.0)))


# What scale-out mode routes to the engines; every other state change would act on this
# process's own (unjournaled, unshared) venue and is refused instead of pretending.
ROUTED_WRITES: Final = frozenset({"exchange.place_order", "exchange.cancel_order",
                                  "exchange_controls.set_status", "exchange_controls.set_breaker",
                                  "exchange_controls.deadman"})


def refuse_unrouted() -> None:
    """Refuse (501) a state-changing exchange endpoint that scale-out mode does not route."""
    if EXTENSION not in current_app.extensions or request.method in ("GET", "HEAD", "OPTIONS"):
        return
    if request.endpoint not in ROUTED_WRITES:
        raise ApiError(StreamCode.NOT_ROUTED, f"{request.method} {request.path[:80]} is not "
                       "available in scale-out mode (docs/scale-out.md)", 501)


def gateway() -> Gateway | None:
    """Return the gateway in scale-out mode, None in the embedded mode."""
    holder: GatewayHolder | None = current_app.extensions.get(EXTENSION)
    return holder.get() if holder is not None else None


def place(gw: Gateway, symbol: str, cmd: NewOrder, client_id: str) -> tuple[int, list[Any] | None]:
    """Send `cmd` through the gateway; return (command seq, events or None if still pending)."""
    if cmd.trigger_price is not None or cmd.reduce_only or cmd.type != "limit" or cmd.price is None:
        raise ApiError(StreamCode.BAD_COMMAND, "scale-out mode takes plain limit orders "
                       "(no market, stop or reduce-only orders)")
    try:
        placed = gw.place(symbol, cmd)
    except MarginRefused as exc:
        raise ApiError(RiskCode.INSUFFICIENT_MARGIN, str(exc), 422) from None
    except DuplicateOrder:
        raise ApiError(RiskCode.DUPLICATE_ORDER_ID,
                       f"order id {client_id!r} was already used for another order", 409) from None
    except StreamRefused as exc:
        raise ApiError(exc.code, exc.message.replace(cmd.id, client_id),
                       STREAM_STATUS.get(exc.code, 400)) from None
    return placed.seq, placed.events


def cancel(gw: Gateway, symbol: str, engine_id: str, account: str,
           client_id: str, now_ms: int) -> tuple[int, list[Any] | None]:
    """Send a cancel of the caller's order through the gateway; return (seq, events or None)."""
    try:
        placed = gw.cancel(symbol, engine_id, account, now_ms * NS_PER_MS)
    except StreamRefused as exc:
        raise ApiError(exc.code, exc.message.replace(engine_id, client_id),
                       STREAM_STATUS.get(exc.code, 400)) from None
    return placed.seq, placed.events


def pending_response(seq: int) -> ResponseReturnValue:
    """Answer 202: the order is in the stream, its events did not come back in time."""
    return jsonify({"status": "pending", "seq": seq}), 202


def position_views(gw: Gateway, account: str) -> list[dict[str, Any]]:
    """Return the caller's event-fed positions (size and entry cost, no marks or PnL)."""
    return [{"symbol": m, "size": p.size, "entry_cost": p.cost,
             "entry_price": p.cost // abs(p.size) if p.size else None}
            for m, p in sorted(gw.positions(account).items())]


def depth_view(gw: Gateway, symbol: str, depth: int) -> dict[str, Any]:
    """Return the event-fed book levels of `symbol`."""
    if symbol not in gw.markets:
        raise ApiError(RiskCode.UNKNOWN_INSTRUMENT, f"symbol was {symbol[:40]!r}, not listed", 404)
    return gw.depth(symbol, max(1, min(depth, DEPTH_MAX)))


# ------------------------------------------------------------------ kill switches


def _control(gw: Gateway, symbol: str, control: Control) -> int | None:
    """Append a control command to `symbol`'s stream; return its seq if still pending, else None."""
    try:
        placed = gw.control(symbol, "ctl." + uuid.uuid4().hex, control)
    except StreamRefused as exc:
        raise ApiError(exc.code, exc.message, STREAM_STATUS.get(exc.code, 400)) from None
    return placed.seq if placed.events is None else None


def set_status(gw: Gateway, symbol: str, mode: str, until_ms: int, reason: str,
               now_ms: int) -> int | None:
    """Halt / cancel-only / reopen `symbol` in stream order (ControlError: nothing appended)."""
    check_status(mode, until_ms, reason)
    return _control(gw, symbol, SetStatus(mode, until_ms, reason, now_ms * NS_PER_MS))


def set_breaker(gw: Gateway, symbol: str, bps: int, window_ms: int, cooldown_ms: int,
                now_ms: int) -> int | None:
    """Configure or remove `symbol`'s circuit breaker in stream order."""
    check_breaker(bps, window_ms, cooldown_ms)
    return _control(gw, symbol, SetBreaker(bps, window_ms, cooldown_ms, now_ms * NS_PER_MS))


def arm_deadman(gw: Gateway, account: str, timeout_ms: int, now_ms: int) -> int:
    """Arm `account`'s dead man's switch on every market's engine; return the deadline (0: off).

    Each market's engine fires on its own clock (its commands' times), before any
    command at or past the deadline, so no order of the account trades after it.
    A failed append answers 503: the client re-arms, which is idempotent in effect.
    """
    check_deadman(timeout_ms)
    for symbol in sorted(gw.markets):
        _control(gw, symbol, ArmDeadman(account, timeout_ms, now_ms * NS_PER_MS))
    return now_ms + timeout_ms if timeout_ms else 0


def market_view(gw: Gateway, symbol: str, now_ms: int) -> dict[str, Any]:
    """Return `symbol`'s mode and breaker as its engine last reported them."""
    status, breaker = gw.market_view(symbol)
    live = status is not None and not (status.until_ms and now_ms >= status.until_ms)
    view: dict[str, Any] = {"symbol": symbol, "mode": status.mode if live and status else "open",
                            "until_ms": status.until_ms if live and status else 0,
                            "reason": status.reason if live and status else ""}
    if breaker is not None:
        view["breaker"] = {"max_move_bps": breaker.max_move_bps, "window_ms": breaker.window_ms,
                           "cooldown_ms": breaker.cooldown_ms}
    return view
