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
from typing import Any, Final

from flask import Flask, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from custody.api.errors import ApiError
from exchange.engine.messages import NewOrder
from exchange.risk.codes import RiskCode
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
    markets = {s for s in symbols if SYMBOL_PATTERN.fullmatch(s)}
    app.extensions[EXTENSION] = GatewayHolder(
        app, list(urls), markets, int(app.config.get("EXCHANGE_SCALEOUT_IM_PPM", DEFAULT_IM_PPM)),
        float(app.config.get("EXCHANGE_SCALEOUT_WAIT_S", 5.0)))


# What scale-out mode routes to the engines; every other state change would act on this
# process's own (unjournaled, unshared) venue and is refused instead of pretending.
ROUTED_WRITES: Final = frozenset({"exchange.place_order", "exchange.cancel_order"})


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
           client_id: str) -> tuple[int, list[Any] | None]:
    """Send a cancel of the caller's order through the gateway; return (seq, events or None)."""
    try:
        placed = gw.cancel(symbol, engine_id, account)
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
