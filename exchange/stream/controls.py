"""Kill switches on the scale-out order path, decided by the engine in stream order.

Control commands travel in the market's own command stream (`CMD_<SYMBOL>`),
between the orders, so the stream sequence decides every race: an order
appended just before a halt trades, one appended just after is refused, on
every engine that ever replays the stream. The engine worker runs each
command through `EngineControls.run`, which holds the market's
`MarketControls` (exchange/controls.py, the single-process venue's rules and
error codes) and a clock taken from the commands' own timestamps (never the
worker's wall clock), so a replay or a standby reaches the same decisions:

- `ctl_status`: halted (2021: no orders, no cancels) / cancel_only (2022:
  cancels only) / open, optionally until `until_ms`;
- `ctl_breaker`: the max-move circuit breaker; a trade that moves the price
  more than `max_move_bps` within `window_ms` halts the market for
  `cooldown_ms` (reason `circuit_breaker`);
- `ctl_deadman`: arm (re-arm, 0 disarms) an account's dead man's switch;
  before any later command whose time is at or past the deadline, every
  live order of the account on this market is cancelled;
- `ctl_void`: the hold reconciler's tombstone for an order whose margin hold
  is stuck (its append failed or was never retried). In stream order: if the
  order is not live on the book, the tombstone wins (a `rejected` event with
  reason `hold_voided`, on which the margin worker voids the hold) and the
  order id is refused from then on, so a late append of that order can never
  rest without margin; if the order is live, the tombstone changes nothing.

A refused order or cancel is a `rejected` event (the book's event sequence
advances, as for the book's own rejections). A refused cancel carries reason
`market_closed`: the margin worker keeps the order's hold on it (the order
may still be on its way in the stream).

The gateways see the market's mode too: every event batch carries the
status and breaker in force after it (`EventBatch.status` / `.breaker`), so a
gateway refuses a new order on a halted market before it reserves margin or
appends anything. The engine's check stays the authoritative one.
"""

from __future__ import annotations

from typing import Final

import msgspec

from exchange.controls import ControlError, ControlsState, MarketControls, MarketStatus
from exchange.engine.codes import ResultCode
from exchange.engine.messages import Amend, Cancel, CancelAll, Event, NewOrder, Rejected, Trade
from exchange.engine.orderbook import OrderBook
from exchange.engine.replay import parse_line
from exchange.risk.codes import RiskCode

NS_PER_MS: Final = 1_000_000
CONTROL_PREFIX: Final = b'{"op":"ctl_'
# Reason of a refused cancel or amend: not an order refusal, the order's hold stays.
CLOSED_REASON: Final = "market_closed"
VOIDED_REASON: Final = "hold_voided"
REFUSED_REASON: Final = {RiskCode.MARKET_HALTED: "market_halted",
                         RiskCode.MARKET_CANCEL_ONLY: "market_cancel_only"}
VOIDED_MAX: Final = 1_000_000  # tombstones kept; far more than stuck holds ever are


class _Control(msgspec.Struct, frozen=True, tag_field="op", forbid_unknown_fields=True):
    """Base of the control commands (their `op` tag is first in the encoding)."""


class SetStatus(_Control, frozen=True, tag="ctl_status"):
    """Put the market in `mode` (open, cancel_only, halted), until `until_ms` if set."""

    mode: str
    until_ms: int = 0
    reason: str = ""
    ts: int = 0


class SetBreaker(_Control, frozen=True, tag="ctl_breaker"):
    """Configure (max_move_bps > 0) or remove (0) the market's max-move circuit breaker."""

    max_move_bps: int
    window_ms: int = 0
    cooldown_ms: int = 0
    ts: int = 0


class ArmDeadman(_Control, frozen=True, tag="ctl_deadman"):
    """Arm (re-arm; 0 disarms) `account`'s dead man's switch at the command's time."""

    account: str
    timeout_ms: int
    ts: int = 0


class VoidHold(_Control, frozen=True, tag="ctl_void"):
    """Tombstone an order id whose margin hold the reconciler found stuck."""

    id: str
    ts: int = 0


Control = SetStatus | SetBreaker | ArmDeadman | VoidHold
CONTROL_TYPES: Final = (SetStatus, SetBreaker, ArmDeadman, VoidHold)
control_encoder: Final = msgspec.json.Encoder()
_control_decoder: Final = msgspec.json.Decoder(Control)


class ControlsSnapshot(msgspec.Struct, frozen=True):
    """What a worker snapshot needs besides the book: the controls, the clock, the tombstones."""

    controls: ControlsState = msgspec.field(default_factory=ControlsState)
    now_ms: int = 0
    voided: list[str] = msgspec.field(default_factory=list)


def encode_control(cmd: Control) -> bytes:
    """Return the command-stream body of a control command."""
    body = control_encoder.encode(cmd)
    assert body.startswith(CONTROL_PREFIX), body[:20]
    return body


class EngineControls:
    """The kill-switch state of one market's engine, applied around its order book."""

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.controls = MarketControls()
        self.now_ms = 0
        self.voided: dict[str, None] = {}  # insertion-ordered: the oldest go first past VOIDED_MAX

    # -- state ------------------------------------------------------------------------------

    def snapshot(self) -> ControlsSnapshot:
        return ControlsSnapshot(self.controls.state(), self.now_ms, list(self.voided))

    @classmethod
    def restore(cls, symbol: str, snap: ControlsSnapshot) -> EngineControls:
        out = cls(symbol)
        out.controls = MarketControls.from_state(snap.controls)
        out.now_ms = snap.now_ms
        out.voided = dict.fromkeys(snap.voided)
        return out

    def status(self) -> MarketStatus | None:
        """Return the market's status in force now (by the commands' clock), None if open."""
        st = self.controls.status.get(self.symbol)
        if st is None or (st.until_ms and self.now_ms >= st.until_ms):
            return None
        return st

    # -- commands ---------------------------------------------------------------------------

    def run(self, book: OrderBook, seq: int, data: bytes) -> list[Event]:
        """Apply command `seq` (an order-book command or a control) and return its events."""
        if data.startswith(CONTROL_PREFIX):
            try:
                control = _control_decoder.decode(data)
            except (msgspec.DecodeError, ValueError):
                return []  # nothing a gateway writes; ignored the same way on every replay
            self._advance(book, control.ts)
            self._control(book, control)
            return book.take_events()
        cmd = parse_line(seq, data, skip_invalid=True)
        self._advance(book, getattr(cmd, "ts", 0))
        refusal = self._refusal(cmd)
        if refusal is not None:
            book.seq += 1
            book.events.append(msgspec.structs.replace(refusal, seq=book.seq))
            return book.take_events()
        book.process(cmd)
        events = book.take_events()
        if self.controls.breakers and type(cmd) in (NewOrder, Amend):
            for e in events:
                if type(e) is Trade:
                    self.controls.on_trade(self.symbol, self.now_ms, e.price)
        return events

    def _advance(self, book: OrderBook, ts_ns: int) -> None:
        """Move the clock to the command's time; fire every dead man's switch now due."""
        if ts_ns > 0:
            self.now_ms = max(self.now_ms, ts_ns // NS_PER_MS)
        if self.controls.deadman and self.controls.deadman_due(self.now_ms):
            for account in self.controls.expired_accounts(self.now_ms):
                book.process(CancelAll(account, self.now_ms * NS_PER_MS))

    def _refusal(self, cmd: object) -> Rejected | None:
        t = type(cmd)
        if t is NewOrder:
            assert isinstance(cmd, NewOrder)
            if cmd.id in self.voided:
                return Rejected(0, cmd.id, int(ResultCode.DUPLICATE_ORDER_ID), VOIDED_REASON,
                                f"order id {cmd.id} was voided by the hold reconciler")
            if self.controls.status:
                code, message = self.controls.refusal(self.symbol, self.now_ms)
                if code:
                    return Rejected(0, cmd.id, int(code), REFUSED_REASON[code], message)
        elif t is Amend and self.controls.status:
            assert isinstance(cmd, Amend)
            code, message = self.controls.refusal(self.symbol, self.now_ms)
            if code:
                return Rejected(0, cmd.id, int(code), CLOSED_REASON, message)
        elif t in (Cancel, CancelAll) and self.controls.status:
            closed = self.controls.cancel_refusal(self.symbol, self.now_ms)
            if closed is not None:
                return Rejected(0, getattr(cmd, "id", None), int(closed.code), CLOSED_REASON,
                                closed.message)
        return None

    def _control(self, book: OrderBook, c: Control) -> None:
        try:
            if isinstance(c, SetStatus):
                self.controls.set_status(self.symbol, c.mode, c.until_ms, c.reason)
            elif isinstance(c, SetBreaker):
                self.controls.set_breaker(self.symbol, c.max_move_bps, c.window_ms, c.cooldown_ms)
            elif isinstance(c, ArmDeadman):
                self.controls.arm(c.account, c.timeout_ms, self.now_ms)
            elif c.id not in book.orders and c.id not in book.stops:
                self.voided[c.id] = None
                while len(self.voided) > VOIDED_MAX:
                    del self.voided[next(iter(self.voided))]
                book.seq += 1
                book.events.append(Rejected(book.seq, c.id, int(ResultCode.DUPLICATE_ORDER_ID),
                                            VOIDED_REASON, f"order id {c.id} voided: its margin "
                                            "hold was stuck"))
        except ControlError:
            pass  # values the gateway validated; ignored the same way on every replay
