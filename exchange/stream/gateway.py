"""The order gateway of an API worker in scale-out mode (docs/scale-out.md, "Order entry").

A Flask request thread calls `Gateway.place`: the order's initial margin is
reserved in the ledger first (atomic across every gateway process, see
exchange/stream/margin.py), then the command is appended to the market's
stream under the order id (the client's idempotency id, scoped per user), and
the request waits for the engine's events of that command. If they do not
arrive within `wait_s` the answer is the command sequence alone (HTTP 202):
the order is in the stream and will be processed.

Each gateway follows the events stream (exchange/stream/follower.py) into a
`MarginBook`: the waiters are answered from it, and hot reads (positions,
open orders, book depth) are served from it without touching the engine
leader or the database.

The gateway owns an asyncio loop in a daemon thread (nats-py is asyncio; the
API workers are threads). It is created lazily in each worker process, after
gunicorn forks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from exchange.controls import Breaker, MarketClosed, MarketStatus
from exchange.engine.messages import Cancel, Command, Event, NewOrder
from exchange.risk.codes import RiskCode
from exchange.stream.controls import CONTROL_TYPES, NS_PER_MS, Control
from exchange.stream.follower import EventFollower
from exchange.stream.margin import (
    DuplicateOrder,
    HoldBatcher,
    MarginBook,
    MarginLedger,
    Position,
    initial_margin,
)
from exchange.stream.publisher import (
    COMMAND_ID_PATTERN,
    CommandPublisher,
    StreamCode,
    StreamRefused,
    validate_command,
)
from exchange.stream.wire import EventBatch

log = logging.getLogger("strongroom.gateway")

DEFAULT_WAIT_S = 5.0
CONNECT_TIMEOUT_S = 10.0
RECENT_MAX = 50_000  # commands whose events are kept for a waiter that registers late
APPEND_SLACK_S = 15.0  # an append retries inside nats for at most its own timeout


@dataclass(frozen=True)
class Placed:
    """Where the order went: its command sequence, and its events unless still pending."""

    seq: int
    events: list[Event] | None
    duplicate: bool


class Gateway:
    """Reserve margin, append orders, wait for their events; serve event-fed reads."""

    def __init__(self, urls: list[str], markets: set[str], margin: MarginLedger, *,
                 im_ppm: int, wait_s: float = DEFAULT_WAIT_S) -> None:
        self.urls = urls
        self.markets = frozenset(markets)
        self.margin = margin
        self.im_ppm = im_ppm
        self.wait_s = wait_s
        self.book = MarginBook(im_ppm)
        self.holds = HoldBatcher(margin)  # one head-lock transaction per group of holds
        self.lock = threading.Lock()  # guards self.book against request threads
        # The kill-switch state each market's last event batch reported (absent: open).
        self.statuses: dict[str, tuple[MarketStatus | None, Breaker | None]] = {}
        self._recent: OrderedDict[tuple[str, int], list[Event]] = OrderedDict()
        self._waiters: dict[tuple[str, int], asyncio.Future[list[Event]]] = {}
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._publisher: CommandPublisher | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="gateway",
                                        daemon=True)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Gateway:
        """Connect and start following the events stream; return self."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._connect(), self._loop).result(CONNECT_TIMEOUT_S)
        return self

    async def _connect(self) -> None:
        import nats

        self._stop = asyncio.Event()
        self._nc = await nats.connect(servers=self.urls, name="gateway",
                                      max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        js = self._nc.jetstream()
        self._publisher = CommandPublisher(js, set(self.markets))
        self._follow = asyncio.gather(*(EventFollower(js, m, self._on_batch).run(self._stop)
                                        for m in sorted(self.markets)))

    def close(self) -> None:
        """Stop following and disconnect."""
        async def _close() -> None:
            if self._stop is not None:
                self._stop.set()
                with contextlib.suppress(Exception):
                    await self._follow
                await self._nc.close()
        self.holds.close()
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(CONNECT_TIMEOUT_S)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CONNECT_TIMEOUT_S)

    # -- the events side (runs on the loop) -------------------------------------------------

    async def _on_batch(self, batch: EventBatch) -> None:
        with self.lock:
            self.book.apply(batch)
            self.statuses[batch.market] = (batch.status, batch.breaker)
        for command in batch.commands:
            key = (batch.market, command.seq)
            waiter = self._waiters.pop(key, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(command.events)
            self._recent[key] = command.events
        while len(self._recent) > RECENT_MAX:
            self._recent.popitem(last=False)

    async def _append_and_wait(self, market: str, order_id: str, cmd: Command | Control) -> Placed:
        assert self._publisher is not None
        if isinstance(cmd, CONTROL_TYPES):
            appended = await self._publisher.append_control(market, order_id, cmd)
        else:
            appended = await self._publisher.append(market, order_id, cmd)
        key = (market, appended.seq)
        found = self._recent.get(key)
        if found is not None:
            return Placed(appended.seq, found, appended.duplicate)
        waiter = self._loop.create_future()
        self._waiters[key] = waiter
        try:
            events = await asyncio.wait_for(waiter, self.wait_s)
        except TimeoutError:
            return Placed(appended.seq, None, appended.duplicate)
        finally:
            self._waiters.pop(key, None)
        return Placed(appended.seq, events, appended.duplicate)

    # -- the request side (runs in a request thread) ----------------------------------------

    def place(self, market: str, cmd: NewOrder) -> Placed:
        """Reserve `cmd`'s margin, append it under its order id, wait for its events.

        Raise StreamRefused (bad command, unknown market, stream unavailable),
        MarginRefused (not enough free collateral: nothing reserved, nothing
        appended) or DuplicateOrder (the id belongs to a finished order).
        """
        if market not in self.markets:
            raise StreamRefused(StreamCode.UNKNOWN_MARKET, f"market was {market[:40]!r}, not listed")
        if not COMMAND_ID_PATTERN.fullmatch(cmd.id):
            raise StreamRefused(StreamCode.BAD_COMMAND_ID, f"order id was {cmd.id[:40]!r}")
        validate_command(cmd)
        if cmd.type != "limit" or cmd.price is None:
            raise StreamRefused(StreamCode.BAD_COMMAND, "scale-out mode takes limit orders only")
        self._refuse_if_closed(market, cmd.ts, cancel=False)
        amount = initial_margin(cmd.price, cmd.qty, self.im_ppm)
        if not self.holds.reserve(cmd.account, cmd.id, amount, market) \
                and self.margin.hold_resolved(cmd.id):
            raise DuplicateOrder(f"order id {cmd.id!r} was already used")
        # The hold stays if the append fails: the client retries with the same id (the
        # reservation is found, the stream stores the command once); a hold never retried
        # is voided by the margin worker's reconciler (exchange/stream/reconcile.py).
        return self._send(market, cmd.id, cmd)

    def cancel(self, market: str, order_id: str, account: str, ts: int = 0) -> Placed:
        """Append a cancel of `account`'s order `order_id` and wait for its events.

        The command id is `cx.<order id>`: a retried cancel is stored once. The book
        refuses (unknown_order) a cancel of an order that is not `account`'s or not live;
        the margin worker releases the hold when it sees the order cancelled.
        """
        if market not in self.markets:
            raise StreamRefused(StreamCode.UNKNOWN_MARKET, f"market was {market[:40]!r}, not listed")
        self._refuse_if_closed(market, ts, cancel=True)
        cmd = validate_command(Cancel(id=order_id, account=account, ts=ts))
        return self._send(market, f"cx.{order_id}", cmd)

    def control(self, market: str, command_id: str, control: Control) -> Placed:
        """Append a kill-switch control command and wait until the engine applied it.

        The engine decides in stream order (exchange/stream/controls.py); when this
        returns with events, `market_view(market)` shows the control's effect.
        """
        if market not in self.markets:
            raise StreamRefused(StreamCode.UNKNOWN_MARKET, f"market was {market[:40]!r}, not listed")
        return self._send(market, command_id, control)

    def _send(self, market: str, command_id: str, cmd: Command | Control) -> Placed:
        future = asyncio.run_coroutine_threadsafe(
            self._append_and_wait(market, command_id, cmd), self._loop)
        try:
            return future.result(self.wait_s + APPEND_SLACK_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise StreamRefused(StreamCode.STREAM_UNAVAILABLE, "no answer from the gateway loop") from None

    def _refuse_if_closed(self, market: str, ts_ns: int, *, cancel: bool) -> None:
        """Raise MarketClosed if the market's last reported mode refuses the command now.

        An early answer only: nothing is reserved or appended for a command the engine
        would refuse anyway. The engine's check, in stream order, is the one that counts.
        """
        with self.lock:
            status = self.statuses.get(market, (None, None))[0]
        if status is None:
            return
        now_ms = ts_ns // NS_PER_MS if ts_ns > 0 else time.time_ns() // NS_PER_MS
        if status.until_ms and now_ms >= status.until_ms:
            return
        if status.mode == "halted" or not cancel:
            code = RiskCode.MARKET_HALTED if status.mode == "halted" else RiskCode.MARKET_CANCEL_ONLY
            why = f" ({status.reason})" if status.reason else ""
            raise MarketClosed(code, f"{market} is {status.mode.replace('_', '-')}{why}")

    def market_view(self, market: str) -> tuple[MarketStatus | None, Breaker | None]:
        """Return the market's status and breaker as its last event batch reported them."""
        with self.lock:
            return self.statuses.get(market, (None, None))

    def positions(self, account: str) -> dict[str, Position]:
        """Return the event-fed positions of `account` by market (hot read)."""
        with self.lock:
            return {m: Position(p.size, p.cost) for (a, m), p in self.book.positions.items()
                    if a == account}

    def open_orders(self, account: str) -> list[dict[str, object]]:
        """Return the event-fed open orders of `account` (hot read)."""
        with self.lock:
            return [{"symbol": m, "id": oid, "side": o.side, "price": o.price,
                     "open_qty": o.remaining} for (m, oid), o in self.book.orders.items()
                    if o.account == account]

    def depth(self, market: str, depth: int) -> dict[str, object]:
        """Return the event-fed book levels of `market` and the command sequence they reflect."""
        with self.lock:
            return {"symbol": market, "seq": self.book.last_seq.get(market, 0),
                    **self.book.book(market, depth)}
