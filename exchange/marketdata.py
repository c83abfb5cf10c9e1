"""The market-data read model: public trades, candles, depth, marks; private order, fill and income history.

The venue feeds it through its tap (`exchange.venue.VenueTap`): after every
engine command (``ran``: the command, its events, the fee of each trade) and
at every batch end (``drained``: the clearing events). It never changes the
venue; it keeps its own bounded copies, so reading market data takes its own
lock (``MarketData.lock``) and never the exchange's, and it hands each batch's
stream messages to its listeners (exchange/api/stream.py) as one list.

Determinism: everything here is a function of the venue's command stream.
Time is the venue's: ``clock_ms`` is the largest of the venue clock
(``now_ms``, set by ticks and ``advance``) and the timestamp of the order
being run (``NewOrder.ts``, journaled), never the wall clock; ids are the
book's sequence numbers. So the model is rebuilt exactly on restart from its
own snapshot (taken with each venue snapshot, same command seq) plus the
journal tail the venue replays; without one (a directory written before the
model existed) it starts from the venue's positions and books with empty
histories.

Positions are mirrored (``Position``, the clearing house's own arithmetic) so
that funding, realised PnL and the realised PnL of closed positions (which the
clearing house forgets when they go flat) can be attributed per account.

A failure in here must never stop the engine: the tap catches it, logs it
once and marks the model ``broken`` (the API then answers 503).

Units (docs/market-data.md): integers internally (prices in quote minor units
per underlying unit, quantities in contracts, money in quote minor units,
times in Unix milliseconds); the API renders decimal strings.
"""

from __future__ import annotations

import logging
import os
import threading
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import msgspec

from exchange.engine.messages import Accepted, Amended, Cancelled, Event, NewOrder, Rejected, Trade, Triggered
from exchange.instruments import InstrumentSpec
from exchange.margin.position import Position
from exchange.risk.clearing import allocate, intrinsic_value, isolated_parent
from exchange.risk.events import (
    Deleveraged,
    FundingPaid,
    LiquidationOrder,
    MarkSet,
    RiskEvent,
    Settled,
)
from exchange.venue import NS_PER_MS, Venue

log = logging.getLogger(__name__)

INTERVALS_MS: Final[dict[str, int]] = {
    "1m": 60_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000, "4h": 14_400_000, "1d": 86_400_000,
}
DAY_MS: Final = 86_400_000
MAX_TRADES_KEPT: Final = 1_000  # public trades per symbol
MAX_CANDLES_KEPT: Final = 1_500  # per symbol and interval (1m: 25 h, enough for the 24 h ticker)
MAX_ROWS_KEPT: Final = 1_000  # per account: closed orders, fills, income rows, closed positions
MAX_LIQUIDATIONS_KEPT: Final = 200  # public liquidation orders per symbol
MAX_PENDING: Final = 10_000  # recorded engine commands before the tap folds them in itself
LIQUIDATION_PREFIX: Final = "liq."
SNAPSHOT_MAGIC: Final = b"SRMDS001"
SNAPSHOT_PREFIX: Final = "marketdata-"
SNAPSHOT_SUFFIX: Final = ".snap"
STATE_VERSION: Final = 1

OPEN_STATES: Final = frozenset({"new", "partially_filled", "untriggered"})
# A stream message: (channel, owner account or None for public, payload).
Message = tuple[str, str | None, dict[str, Any]]


def owner_of(account: str) -> str:
    """Return the user an engine account belongs to (an isolated sub-account's parent)."""
    return isolated_parent(account) or account


class Shadow:
    """A mirrored position with the life-cycle facts the clearing house does not keep."""

    __slots__ = ("fees", "funding", "opened_ms", "pos")

    def __init__(self, symbol: str, opened_ms: int) -> None:
        self.pos = Position(symbol)
        self.opened_ms = opened_ms
        self.funding = 0
        self.fees = 0


class MarketData:
    """The read model; see the module docstring."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.venue: Venue | None = None
        self.broken: str | None = None
        self.clock_ms = 0
        self.trades: dict[str, deque[dict[str, Any]]] = {}
        self.candles: dict[tuple[str, str], OrderedDict[int, list[int]]] = {}
        self.orders: dict[str, dict[str, dict[str, Any]]] = {}  # account -> order id -> record
        self.closed_orders: dict[str, deque[str]] = {}  # account -> closed order ids, oldest first
        self.fills: dict[str, deque[dict[str, Any]]] = {}
        self.income: dict[str, deque[dict[str, Any]]] = {}
        self.closed_positions: dict[str, deque[dict[str, Any]]] = {}
        self.shadows: dict[tuple[str, str], Shadow] = {}
        self.open_interest: dict[str, int] = {}
        self.liquidations: dict[str, deque[dict[str, Any]]] = {}
        self.marks: dict[str, dict[str, Any]] = {}
        self.depth: dict[str, tuple[dict[int, tuple[int, int]], dict[int, tuple[int, int]]]] = {}
        self.depth_seq: dict[str, int] = {}
        self.listeners: list[Callable[[list[Message]], None]] = []
        self._touched: set[tuple[str, str, int]] = set()
        self._risk_seen = 0
        self._outbox: list[Message] = []
        self._moved: set[str] = set()  # accounts whose positions or collateral changed this batch
        self._adl_n = 0
        self._live: dict[str, str] = {}  # live order id -> account
        # Recorded by the tap (engine thread), folded in by `catch_up` (any thread).
        self._pending: deque[tuple[Any, ...]] = deque()
        self._specs: dict[str, InstrumentSpec] = {}
        self._marks_pending = False
        self._funding_clocks: dict[str, tuple[int, int | None]] = {}
        self._marks_changed: set[str] = set()
        # The book mirrored from the engine's events: resting orders and untriggered stops.
        self.resting: dict[tuple[str, str], list[Any]] = {}  # (symbol, id) -> [side, price, open qty]
        self.stops: dict[tuple[str, str], list[Any]] = {}  # (symbol, id) -> [side, limit or None, qty]
        self._book_seq: dict[str, int] = {}

    # ------------------------------------------------------------------ attaching

    def attach(self, venue: Venue, state: dict[str, Any] | None = None) -> None:
        """Listen to ``venue``; start from ``state`` (a snapshot) or from the venue's positions."""
        with self.lock:
            self.venue = venue
            venue.tap = self
            venue.clearing.trade_fees = []
            self._risk_seen = len(venue.clearing.events)
            if state is not None:
                self._load(state)
            else:
                self.clock_ms = venue.now_ms
                for acct in venue.clearing.accounts.values():
                    for symbol, pos in acct.positions.items():
                        if pos.size:
                            shadow = self._shadow(acct.id, symbol)
                            shadow.pos.size, shadow.pos.cost = pos.size, pos.cost
                            shadow.pos.realised = pos.realised
                            self.open_interest[symbol] = self.open_interest.get(symbol, 0) + max(0, pos.size)
            self._specs = dict(venue.specs)
            self._funding_clocks = {sym: (venue.funding_rate(sym), venue.next_funding_ms.get(sym))
                                    for sym in venue.premium}
            for symbol, mark in venue.clearing.marks.items():
                self.marks.setdefault(symbol, self._mark_view(symbol, mark, None))
            self.resting, self.stops, self.depth = {}, {}, {}
            for symbol in venue.books:
                self._mirror_book(symbol)

    def recovering(self, directory: Path) -> Callable[[Venue, int], None]:
        """Return the hook recovery calls with the venue loaded from its snapshot at ``seq``."""

        def observe(venue: Venue, seq: int) -> None:
            self.attach(venue, load_snapshot(directory, seq))

        return observe

    def _mirror_book(self, symbol: str) -> None:
        """Start the mirror of one book from its resting orders and stops (before any replay)."""
        assert self.venue is not None
        book = self.venue.books[symbol]
        bids: dict[int, tuple[int, int]] = {}
        asks: dict[int, tuple[int, int]] = {}
        for o in book.orders.values():
            side = "buy" if o.is_buy else "sell"
            self.resting[(symbol, o.id)] = [side, o.price, o.qty]
            levels = bids if o.is_buy else asks
            qty, count = levels.get(o.price, (0, 0))
            levels[o.price] = (qty + o.qty, count + 1)
        for st in book.stops.values():
            self.stops[(symbol, st.id)] = ["buy" if st.is_buy else "sell", st.price, st.qty]
        self.depth[symbol] = (bids, asks)
        self.depth_seq[symbol] = self._book_seq[symbol] = book.seq

    def level(self, symbol: str, side: str, price: int, qty: int, count: int) -> None:
        """Change one mirrored level by (qty, count) and mark it for the next depth diff."""
        if symbol not in self.depth:
            self.depth[symbol], self.depth_seq[symbol] = ({}, {}), 0
        levels = self.depth[symbol][0 if side == "buy" else 1]
        old_qty, old_count = levels.get(price, (0, 0))
        new = (old_qty + qty, old_count + count)
        if new[1] <= 0:
            levels.pop(price, None)
        else:
            levels[price] = new
        self._touched.add((symbol, side, price))

    # ------------------------------------------------------------------ the tap

    def ran(self, symbol: str, cmd: Any, events: list[Event]) -> None:
        """Record one engine command's events (the venue calls this under the exchange lock).

        Only what a later `catch_up` needs and could not read later is taken here, in
        O(1): the events, the trades' fees, new clearing events, the venue clock, the spec.
        """
        venue = self.venue
        assert venue is not None
        ch = venue.clearing
        risk = ch.events
        new_risk = risk[self._risk_seen:] if len(risk) > self._risk_seen else None
        if new_risk is not None:
            self._marks_pending = True
        self._risk_seen = len(risk)
        fees = ch.trade_fees
        if fees:
            ch.trade_fees = []
        else:
            fees = None  # the empty list stays the clearing house's
        ts = cmd.ts if type(cmd) is NewOrder else 0
        self._pending.append((symbol, cmd, events, fees, new_risk, venue.now_ms, ts, venue.specs[symbol]))
        if len(self._pending) >= MAX_PENDING:
            self.catch_up()

    def drained(self, events: list[RiskEvent]) -> None:
        """Record the end of a batch: the clearing events not seen yet and the funding clocks."""
        venue = self.venue
        assert venue is not None
        new_risk = events[self._risk_seen:] if len(events) > self._risk_seen else None
        self._risk_seen = 0
        funding = None
        if new_risk is not None or self._marks_pending:
            funding = {s: (venue.funding_rate(s), venue.next_funding_ms.get(s)) for s in venue.premium}
            self._marks_pending = False
        if len(venue.specs) != len(self._specs):
            self._specs.update(venue.specs)
        self._pending.append((None, None, None, None, new_risk, venue.now_ms, 0, funding))
        if len(self._pending) >= MAX_PENDING:
            self.catch_up()

    def catch_up(self) -> None:
        """Fold everything recorded so far in and publish the stream batches (any thread)."""
        if self.broken is not None:
            self._pending.clear()
            return
        batches: list[list[Message]] = []
        pending = self._pending
        with self.lock:
            try:
                while pending:
                    rec = pending.popleft()  # the engine appends at the other end meanwhile
                    if rec[0] is None:
                        batch = self._drained(rec)
                        if batch:
                            batches.append(batch)
                    else:
                        self._ran(rec)
            except Exception as exc:  # the engine must go on; the read model is marked broken
                self._break(exc)
                return
        for batch in batches:
            for listener in self.listeners:
                try:
                    listener(batch)
                except Exception:  # a listener's failure is its own (it only enqueues)
                    log.exception("market-data listener failed")

    def _break(self, exc: Exception) -> None:
        self.broken = f"{type(exc).__name__}: {exc}"[:200]
        log.exception("market-data read model stopped; the engine goes on, market data answers 503")

    def _ran(self, rec: tuple[Any, ...]) -> None:
        symbol, cmd, events, fees, new_risk, now_ms, ts, spec = rec
        if new_risk:
            self._risk(new_risk)
        self.clock_ms = now = max(self.clock_ms, now_ms, ts // NS_PER_MS)
        self._specs.setdefault(symbol, spec)
        book = BookRun(self, symbol, cmd)
        n = 0
        for e in events:
            t = type(e)
            if t is Trade:
                fee, maker_fee = fees[n]
                n += 1
                book.trade(e)
                self._trade(symbol, e, fee, maker_fee, now)
            elif t is Accepted:
                self._accepted(symbol, e, cmd, now)
                book.accepted(e)
            elif t is Cancelled:
                book.cancelled(e)
                self._cancelled(symbol, e, now)
            elif t is Amended:
                book.amended(e)
                self._amended(symbol, e, now)
            elif t is Triggered:
                book.triggered(e)
                self._triggered(e, now)
            elif t is Rejected:
                book.rejected(e)
                self._rejected(symbol, e, cmd, now)
        book.finish()
        if events:
            self._book_seq[symbol] = events[-1].seq
        assert n == (len(fees) if fees else 0), f"{len(fees or ())} trade fees for {n} trades"

    def _drained(self, rec: tuple[Any, ...]) -> list[Message]:
        _, _, _, _, new_risk, now_ms, _, funding = rec
        if new_risk:
            self._risk(new_risk)
        if funding is not None:
            self._funding_clocks = funding
        self.clock_ms = max(self.clock_ms, now_ms)
        for symbol in sorted(self._marks_changed):
            view = self.marks[symbol]
            view.update(self._funding_view(symbol))
            self._emit("mark", None, dict(view))
        self._marks_changed.clear()
        self._depth_diffs()
        if self.listeners:  # private balance and position updates only for someone listening
            venue = self.venue
            assert venue is not None
            for account in sorted(self._moved):
                # The collateral as it is now (read without the exchange lock: one integer).
                acct = venue.clearing.accounts.get(account)
                if acct is not None:
                    self._emit("balances", account, {"account": account, "collateral": acct.cash,
                                                     "time_ms": self.clock_ms})
                for symbol in sorted(self._specs):
                    shadow = self.shadows.get((account, symbol))
                    if shadow is not None:
                        self._emit("positions", account, self._position_view(account, symbol, shadow))
        self._moved.clear()
        batch, self._outbox = self._outbox, []
        return batch

    def _emit(self, channel: str, account: str | None, payload: dict[str, Any]) -> None:
        if self.listeners:
            self._outbox.append((channel, account, payload))

    def _emit_order(self, rec: dict[str, Any]) -> None:
        if self.listeners:  # the view is built only for someone listening
            self._outbox.append(("orders", rec["account"], self.order_view(rec)))

    # ------------------------------------------------------------------ engine events

    def _order(self, account: str, order_id: str) -> dict[str, Any] | None:
        return self.orders.get(account, {}).get(order_id)

    def _find(self, order_id: str) -> dict[str, Any] | None:
        # Engine events name a live order by id only; the index maps live ids to their account.
        account = self._live.get(order_id)
        return None if account is None else self._order(account, order_id)

    def _accepted(self, symbol: str, e: Accepted, cmd: Any, now: int) -> None:
        rec = self._find(e.id)
        if rec is None:
            own = cmd if isinstance(cmd, NewOrder) and cmd.id == e.id else None
            stop = own is not None and own.type.startswith("stop")
            rec = {
                "symbol": symbol, "order_id": e.id, "account": e.account, "side": e.side,
                "type": own.type if own is not None else "limit",
                "tif": own.tif if own is not None else "GTC",
                "price": e.price, "qty": e.qty, "filled_qty": 0, "filled_notional": 0,
                "trigger_price": own.trigger_price if own is not None else None,
                "reduce_only": bool(own.reduce_only) if own is not None else False,
                "status": "untriggered" if stop else "new", "reason": None,
                "liquidation": e.id.startswith(LIQUIDATION_PREFIX), "created_ms": now, "updated_ms": now,
            }
            self.orders.setdefault(e.account, {})[e.id] = rec
            self._live[e.id] = e.account
        else:  # a stop that triggered runs as an order with the same id
            rec["status"] = "new"
            rec["updated_ms"] = now
        self._emit_order(rec)

    def _trade(self, symbol: str, e: Trade, fee: int, maker_fee: int, now: int) -> None:
        spec = self._specs[symbol]
        maker_side = "sell" if e.taker_side == "buy" else "buy"
        liquidation = e.taker.startswith(LIQUIDATION_PREFIX)
        trade_id = str(e.seq)
        public = {"symbol": symbol, "trade_id": trade_id, "price": e.price, "qty": e.qty,
                  "side": e.taker_side, "liquidation": liquidation, "time_ms": now}
        self.trades.setdefault(symbol, deque(maxlen=MAX_TRADES_KEPT)).append(public)
        self._emit("trades", None, public)
        self._candle(symbol, e.price, e.qty, spec.notional(e.qty, e.price), now)
        sign = 1 if e.taker_side == "buy" else -1
        for account, order_id, side, qty, paid, liquidity in (
                (e.taker_account, e.taker, e.taker_side, sign * e.qty, fee, "taker"),
                (e.maker_account, e.maker, maker_side, -sign * e.qty, maker_fee, "maker")):
            realised = self._fill(account, symbol, qty, e.price, now, paid)
            rec = self._order(account, order_id)
            if rec is not None:
                rec["filled_qty"] += e.qty
                rec["filled_notional"] += e.qty * e.price
                rec["updated_ms"] = now
                if rec["filled_qty"] >= rec["qty"]:
                    self._close_order(rec, "filled")
                else:
                    rec["status"] = "partially_filled"
                self._emit_order(rec)
            row = {"trade_id": trade_id, "symbol": symbol, "order_id": order_id, "side": side,
                   "price": e.price, "qty": e.qty, "fee": paid, "liquidity": liquidity,
                   "realised_pnl": realised,
                   "liquidation": liquidity == "taker" and liquidation, "adl": False, "time_ms": now}
            self._fill_row(account, row)
            if paid:
                kind = "liquidation_fee" if row["liquidation"] else "fee"
                self._income(account, kind, -paid, symbol, trade_id, now)

    def _cancelled(self, symbol: str, e: Cancelled, now: int) -> None:
        rec = self._find(e.id)
        if rec is None:
            return
        rec["reason"] = e.reason
        rec["updated_ms"] = now
        self._close_order(rec, "cancelled")
        self._emit_order(rec)

    def _amended(self, symbol: str, e: Amended, now: int) -> None:
        rec = self._find(e.id)
        if rec is None:
            return
        rec["price"] = e.price
        rec["qty"] = rec["filled_qty"] + e.qty
        rec["updated_ms"] = now
        self._emit_order(rec)

    def _triggered(self, e: Triggered, now: int) -> None:
        rec = self._find(e.id)
        if rec is not None:
            rec["status"] = "new"
            rec["updated_ms"] = now

    def _rejected(self, symbol: str, e: Rejected, cmd: Any, now: int) -> None:
        if not isinstance(cmd, NewOrder) or e.id is None or cmd.id != e.id or self._find(e.id) is not None:
            return
        rec = {"symbol": symbol, "order_id": e.id, "account": cmd.account, "side": cmd.side,
               "type": cmd.type, "tif": cmd.tif, "price": cmd.price, "qty": cmd.qty, "filled_qty": 0,
               "filled_notional": 0, "trigger_price": cmd.trigger_price, "reduce_only": bool(cmd.reduce_only),
               "status": "new", "reason": e.reason, "liquidation": e.id.startswith(LIQUIDATION_PREFIX),
               "created_ms": now, "updated_ms": now}
        self.orders.setdefault(cmd.account, {})[e.id] = rec
        self._close_order(rec, "rejected")
        self._emit_order(rec)

    def _close_order(self, rec: dict[str, Any], status: str) -> None:
        if rec["status"] not in OPEN_STATES:
            return
        rec["status"] = status
        account = rec["account"]
        if self._live.get(rec["order_id"]) == account:
            del self._live[rec["order_id"]]
        closed = self.closed_orders.setdefault(account, deque())
        closed.append(rec["order_id"])
        if len(closed) > MAX_ROWS_KEPT:
            old = closed.popleft()
            kept = self.orders.get(account, {})
            gone = kept.get(old)
            if gone is not None and gone["status"] not in OPEN_STATES:
                del kept[old]

    # ------------------------------------------------------------------ positions and money

    def _shadow(self, account: str, symbol: str) -> Shadow:
        shadow = self.shadows.get((account, symbol))
        if shadow is None:
            shadow = self.shadows[(account, symbol)] = Shadow(symbol, self.clock_ms)
        return shadow

    def _fill(self, account: str, symbol: str, qty: int, price: int, now: int, fee: int) -> int:
        """Apply a signed fill to the mirrored position; return its realised PnL (0 for options)."""
        spec = self._specs[symbol]
        shadow = self._shadow(account, symbol)
        pos = shadow.pos
        before = pos.size
        realised = pos.fill(qty, price, spec.contracts_per_unit)
        shadow.fees += fee
        self._moved.add(account)
        self.open_interest[symbol] = self.open_interest.get(symbol, 0) + max(0, pos.size) - max(0, before)
        if spec.is_option:
            realised = 0
        elif realised:
            self._income(account, "realised_pnl", realised, symbol, None, now)
        if before and (pos.size == 0 or (pos.size > 0) != (before > 0)):
            self._close_position(account, symbol, shadow, before, now)
        return realised

    def _close_position(self, account: str, symbol: str, shadow: Shadow, before: int, now: int) -> None:
        pos = shadow.pos
        row = {"symbol": symbol, "margin_mode": "isolated" if isolated_parent(account) else "cross",
               "side": "long" if before > 0 else "short", "realised_pnl": pos.realised,
               "funding": shadow.funding, "fees": shadow.fees, "opened_ms": shadow.opened_ms,
               "closed_ms": now}
        self.closed_positions.setdefault(account, deque(maxlen=MAX_ROWS_KEPT)).append(row)
        self._emit("positions", account, {**row, "size": 0, "status": "closed"})
        if pos.size == 0:
            del self.shadows[(account, symbol)]
        else:  # flipped: a new position opens with the rest of the fill
            pos.realised = 0
            shadow.funding = shadow.fees = 0
            shadow.opened_ms = now

    def _fill_row(self, account: str, row: dict[str, Any]) -> None:
        self.fills.setdefault(account, deque(maxlen=MAX_ROWS_KEPT)).append(row)
        self._emit("fills", account, row)

    def _income(self, account: str, kind: str, amount: int, symbol: str, ref: str | None, now: int) -> None:
        row = {"type": kind, "amount": amount, "symbol": symbol, "ref": ref, "time_ms": now}
        self.income.setdefault(account, deque(maxlen=MAX_ROWS_KEPT)).append(row)
        self._emit("income", account, row)

    def _risk(self, events: list[RiskEvent]) -> None:
        """Fold clearing events in (funding, ADL, settlement, marks, liquidations)."""
        for e in events:
            t = type(e)
            if t is MarkSet:
                self._mark(e)  # type: ignore[arg-type]
            elif t is FundingPaid:
                self._funding(e)  # type: ignore[arg-type]
            elif t is Deleveraged:
                self._deleveraged(e)  # type: ignore[arg-type]
            elif t is Settled:
                self._settled(e)  # type: ignore[arg-type]
            elif t is LiquidationOrder:
                self._liquidation(e)  # type: ignore[arg-type]

    def _funding_view(self, symbol: str) -> dict[str, Any]:
        rate, next_ms = self._funding_clocks.get(symbol, (None, None))
        return {"funding_rate_ppm": rate, "next_funding_ms": next_ms}

    def _mark_view(self, symbol: str, mark: int, index: int | None) -> dict[str, Any]:
        return {"symbol": symbol, "mark": mark, "index": index, **self._funding_view(symbol),
                "time_ms": self.clock_ms}

    def _mark(self, e: MarkSet) -> None:
        # The funding fields are filled in at the batch end, with the clocks the batch left.
        self.marks[e.symbol] = self._mark_view(e.symbol, e.mark, e.index)
        self._marks_changed.add(e.symbol)

    def _funding(self, e: FundingPaid) -> None:
        spec = self._specs[e.symbol]
        held = sorted((a, s) for (a, sym), s in self.shadows.items() if sym == e.symbol and s.pos.size)
        longs = [(a, s) for a, s in held if s.pos.size > 0]
        shorts = [(a, s) for a, s in held if s.pos.size < 0]
        payers, payees = (longs, shorts) if e.rate_ppm > 0 else (shorts, longs)
        rate = abs(e.rate_ppm)
        total = 0
        for account, shadow in payers:
            amount = abs(shadow.pos.size) * e.mark // spec.contracts_per_unit * rate // 1_000_000
            if amount:
                total += amount
                shadow.funding -= amount
                self._income(account, "funding", -amount, e.symbol, None, e.ts_ms)
                self._moved.add(account)
        if total != e.total:
            raise RuntimeError(f"funding of {e.symbol} at {e.ts_ms}: mirrored {total}, cleared {e.total}")
        shares = allocate(total, {a: abs(s.pos.size) for a, s in payees})
        for account, shadow in payees:
            amount = shares.get(account, 0)
            if amount:
                shadow.funding += amount
                self._income(account, "funding", amount, e.symbol, None, e.ts_ms)
                self._moved.add(account)

    def _deleveraged(self, e: Deleveraged) -> None:
        now = self.clock_ms
        if e.qty == 0:  # the bankrupt account's remaining loss charged to a counterparty
            if e.charge:
                self._income(e.counterparty, "adl_charge", -e.charge, e.symbol, None, now)
                self._moved.add(e.counterparty)
            return
        bankrupt = self.shadows.get((e.account, e.symbol))
        if bankrupt is None or bankrupt.pos.size == 0:
            raise RuntimeError(f"ADL of {e.account} on {e.symbol} without a mirrored position")
        cp_qty = e.qty if bankrupt.pos.size > 0 else -e.qty
        self._adl_n += 1
        trade_id = f"adl.{e.seq}.{self._adl_n}"
        for account, qty in ((e.counterparty, cp_qty), (e.account, -cp_qty)):
            realised = self._fill(account, e.symbol, qty, e.price, now, 0)
            self._fill_row(account, {
                "trade_id": trade_id, "symbol": e.symbol, "order_id": None,
                "side": "buy" if qty > 0 else "sell", "price": e.price, "qty": e.qty, "fee": 0,
                "liquidity": "adl", "realised_pnl": realised, "liquidation": account == e.account,
                "adl": True, "time_ms": now})

    def _settled(self, e: Settled) -> None:
        spec = self._specs[e.symbol]
        for (account, symbol), shadow in sorted(self.shadows.items()):
            if symbol != e.symbol or shadow.pos.size == 0:
                continue
            if spec.is_option:
                pos = shadow.pos
                payoff = pos.size * intrinsic_value(spec, e.price) // spec.contracts_per_unit
                pos.realised += payoff - pos.cost
                before, pos.size, pos.cost = pos.size, 0, 0
                self.open_interest[symbol] = self.open_interest.get(symbol, 0) - max(0, before)
                self._income(account, "settlement", payoff, symbol, None, e.ts_ms)
                self._moved.add(account)
                self._close_position(account, symbol, shadow, before, e.ts_ms)
            else:
                self._fill(account, symbol, -shadow.pos.size, e.price, e.ts_ms, 0)

    def _liquidation(self, e: LiquidationOrder) -> None:
        row = {"symbol": e.symbol, "side": e.side, "qty": e.qty, "price": e.limit, "time_ms": self.clock_ms}
        self.liquidations.setdefault(e.symbol, deque(maxlen=MAX_LIQUIDATIONS_KEPT)).append(row)
        self._emit("liquidations", None, row)

    # ------------------------------------------------------------------ candles and depth

    def _candle(self, symbol: str, price: int, qty: int, notional: int, now: int) -> None:
        for name, width in INTERVALS_MS.items():
            series = self.candles.get((symbol, name))
            if series is None:
                series = self.candles[(symbol, name)] = OrderedDict()
            start = now - now % width
            bar = series.get(start)
            if bar is None:
                series[start] = [price, price, price, price, qty, notional, 1]
                if len(series) > MAX_CANDLES_KEPT:
                    series.popitem(last=False)
            else:
                bar[1] = max(bar[1], price)
                bar[2] = min(bar[2], price)
                bar[3] = price
                bar[4] += qty
                bar[5] += notional
                bar[6] += 1

    def _depth_diffs(self) -> None:
        if not self._touched:
            return
        changed: dict[str, tuple[list[list[int]], list[list[int]]]] = {}
        for symbol, side, price in self._touched:
            buy = side == "buy"
            qty, count = self.depth[symbol][0 if buy else 1].get(price, (0, 0))
            changed.setdefault(symbol, ([], []))[0 if buy else 1].append([price, qty, count])
        self._touched.clear()
        for symbol, (bids, asks) in sorted(changed.items()):
            seq = self._book_seq.get(symbol, 0)
            prev, self.depth_seq[symbol] = self.depth_seq.get(symbol, 0), seq
            self._emit("depth", None, {"symbol": symbol, "seq": seq, "prev_seq": prev,
                                       "bids": sorted(bids, reverse=True), "asks": sorted(asks)})

    # ------------------------------------------------------------------ reads (take ``lock``)

    def depth_view(self, symbol: str, limit: int) -> dict[str, Any]:
        """Return the top ``limit`` levels per side, best first, with the diff sequence."""
        bids, asks = self.depth.get(symbol, ({}, {}))
        top_bids = sorted(bids, reverse=True)[:limit]
        top_asks = sorted(asks)[:limit]
        return {"symbol": symbol, "seq": self.depth_seq.get(symbol, 0),
                "bids": [[p, *bids[p]] for p in top_bids], "asks": [[p, *asks[p]] for p in top_asks]}

    def candle_rows(self, symbol: str, interval: str, start_ms: int | None, end_ms: int | None,
                    limit: int) -> list[list[int]]:
        """Return [open_ms, open, high, low, close, volume, quote volume, trades], oldest first."""
        series = self.candles.get((symbol, interval), OrderedDict())
        rows = [[start, *bar] for start, bar in series.items()
                if (start_ms is None or start >= start_ms) and (end_ms is None or start <= end_ms)]
        return rows[-limit:]

    def ticker(self, symbol: str, now_ms: int) -> dict[str, Any]:
        """Return the rolling 24 h statistics of ``symbol`` from its one-minute candles."""
        since = now_ms - DAY_MS
        bars = [bar for start, bar in self.candles.get((symbol, "1m"), OrderedDict()).items()
                if start >= since - since % 60_000]
        last = self.trades.get(symbol)
        out: dict[str, Any] = {"symbol": symbol, "last_price": last[-1]["price"] if last else None,
                               "open": None, "high": None, "low": None, "volume": 0, "quote_volume": 0,
                               "trades": 0, "change": None, "change_ppm": None,
                               "open_ms": since, "close_ms": now_ms}
        if bars:
            open_price = bars[0][0]
            close = bars[-1][3]
            out.update(open=open_price, high=max(b[1] for b in bars), low=min(b[2] for b in bars),
                       volume=sum(b[4] for b in bars), quote_volume=sum(b[5] for b in bars),
                       trades=sum(b[6] for b in bars), change=close - open_price,
                       change_ppm=(close - open_price) * 1_000_000 // open_price)
        return out

    def order_view(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Return an order record with its average fill price (floored)."""
        filled = rec["filled_qty"]
        return {**{k: v for k, v in rec.items() if k != "filled_notional"},
                "avg_price": rec["filled_notional"] // filled if filled else None}

    def _position_view(self, account: str, symbol: str, shadow: Shadow) -> dict[str, Any]:
        pos = shadow.pos
        return {"symbol": symbol, "margin_mode": "isolated" if isolated_parent(account) else "cross",
                "size": pos.size, "entry_price": pos.entry_price(self._specs[symbol].contracts_per_unit),
                "realised_pnl": pos.realised, "funding": shadow.funding, "fees": shadow.fees,
                "opened_ms": shadow.opened_ms, "status": "open"}

    def accounts_of(self, owner: str, table: dict[str, Any]) -> list[str]:
        """Return the engine accounts of ``owner`` that ``table`` has (cross first, then isolated)."""
        return sorted(a for a in table if a == owner or isolated_parent(a) == owner)

    def open_positions(self, owner: str) -> list[dict[str, Any]]:
        """Return the owner's mirrored open positions."""
        return [self._position_view(a, s, sh) for (a, s), sh in sorted(self.shadows.items())
                if (a == owner or isolated_parent(a) == owner) and sh.pos.size]

    # ------------------------------------------------------------------ persistence

    def state(self) -> dict[str, Any]:
        """Return the model as builtins (the snapshot); depth is rebuilt from the books."""
        self.catch_up()
        return {
            "version": STATE_VERSION, "clock_ms": self.clock_ms, "adl_n": self._adl_n,
            "trades": {s: list(d) for s, d in sorted(self.trades.items())},
            "candles": [[s, i, [[start, *bar] for start, bar in series.items()]]
                        for (s, i), series in sorted(self.candles.items())],
            "orders": {a: sorted(o.values(), key=lambda r: r["order_id"])
                       for a, o in sorted(self.orders.items())},
            "closed_orders": {a: list(d) for a, d in sorted(self.closed_orders.items())},
            "fills": {a: list(d) for a, d in sorted(self.fills.items())},
            "income": {a: list(d) for a, d in sorted(self.income.items())},
            "closed_positions": {a: list(d) for a, d in sorted(self.closed_positions.items())},
            "shadows": [[a, s, sh.pos.size, sh.pos.cost, sh.pos.realised, sh.opened_ms, sh.funding, sh.fees]
                        for (a, s), sh in sorted(self.shadows.items())],
            "open_interest": dict(sorted(self.open_interest.items())),
            "liquidations": {s: list(d) for s, d in sorted(self.liquidations.items())},
            "marks": dict(sorted(self.marks.items())),
        }

    def _load(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"market-data snapshot version was {state.get('version')!r}, "
                             f"expected {STATE_VERSION}")
        self.clock_ms = state["clock_ms"]
        self._adl_n = state["adl_n"]
        self.trades = {s: deque(rows, maxlen=MAX_TRADES_KEPT) for s, rows in state["trades"].items()}
        self.candles = {(s, i): OrderedDict((r[0], list(r[1:])) for r in rows)
                        for s, i, rows in state["candles"]}
        self.orders = {a: {r["order_id"]: r for r in rows} for a, rows in state["orders"].items()}
        self._live = {r["order_id"]: a for a, rows in state["orders"].items() for r in rows
                      if r["status"] in OPEN_STATES}
        self.closed_orders = {a: deque(ids) for a, ids in state["closed_orders"].items()}
        self.fills = {a: deque(rows, maxlen=MAX_ROWS_KEPT) for a, rows in state["fills"].items()}
        self.income = {a: deque(rows, maxlen=MAX_ROWS_KEPT) for a, rows in state["income"].items()}
        self.closed_positions = {a: deque(rows, maxlen=MAX_ROWS_KEPT)
                                 for a, rows in state["closed_positions"].items()}
        self.shadows = {}
        for a, s, size, cost, realised, opened, funding, fees in state["shadows"]:
            shadow = self.shadows[(a, s)] = Shadow(s, opened)
            shadow.pos.size, shadow.pos.cost, shadow.pos.realised = size, cost, realised
            shadow.funding, shadow.fees = funding, fees
        self.open_interest = dict(state["open_interest"])
        self.liquidations = {s: deque(rows, maxlen=MAX_LIQUIDATIONS_KEPT)
                             for s, rows in state["liquidations"].items()}
        self.marks = dict(state["marks"])

    def save_snapshot(self, directory: Path, command_seq: int) -> Path:
        """Write the model as of venue snapshot ``command_seq`` (temp file, fsync, rename); prune."""
        self.catch_up()
        with self.lock:
            body = msgspec.msgpack.encode(self.state())
        path = directory / f"{SNAPSHOT_PREFIX}{command_seq:020d}{SNAPSHOT_SUFFIX}"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(SNAPSHOT_MAGIC + zlib.crc32(body).to_bytes(4, "little") + body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        venue_seqs = {p.name[len("venue-snapshot-"):-len(".snap")]
                      for p in directory.glob("venue-snapshot-*.snap")}
        for old in directory.glob(f"{SNAPSHOT_PREFIX}*{SNAPSHOT_SUFFIX}"):
            if old.name[len(SNAPSHOT_PREFIX):-len(SNAPSHOT_SUFFIX)] not in venue_seqs:
                old.unlink()
        return path


def load_snapshot(directory: Path, command_seq: int) -> dict[str, Any] | None:
    """Return the market-data state saved with venue snapshot ``command_seq``, or None (start fresh)."""
    path = directory / f"{SNAPSHOT_PREFIX}{command_seq:020d}{SNAPSHOT_SUFFIX}"
    if not path.exists():
        if command_seq:
            log.warning("no market-data snapshot for venue snapshot %d in %s: histories start empty",
                        command_seq, directory)
        return None
    data = path.read_bytes()
    body = data[len(SNAPSHOT_MAGIC) + 4:]
    if data[:len(SNAPSHOT_MAGIC)] != SNAPSHOT_MAGIC or zlib.crc32(body).to_bytes(4, "little") != data[
            len(SNAPSHOT_MAGIC):len(SNAPSHOT_MAGIC) + 4]:
        log.warning("market-data snapshot %s is damaged: histories start empty", path)
        return None
    state: dict[str, Any] = msgspec.msgpack.decode(body)
    return state


class BookRun:
    """Mirror one engine command's effect on its book from the events alone (no book access).

    The order being matched (new, amended or triggered) takes its trades as taker;
    what is left when the next one starts, or when the command ends, rests at its
    limit unless a ``Cancelled`` (IOC, market, self-trade prevention) took it away.
    """

    __slots__ = ("cmd", "incoming", "md", "symbol")

    def __init__(self, md: MarketData, symbol: str, cmd: Any) -> None:
        self.md = md
        self.symbol = symbol
        self.cmd = cmd
        self.incoming: list[Any] | None = None  # [id, side, limit or None, open qty]

    def _seq(self, seq: int) -> None:
        self.md._book_seq[self.symbol] = seq

    def accepted(self, e: Accepted) -> None:
        self.finish()
        self._seq(e.seq)
        cmd = self.cmd
        if type(cmd) is NewOrder and cmd.id == e.id and cmd.type in ("stop_limit", "stop_market"):
            self.md.stops[(self.symbol, e.id)] = [e.side, cmd.price, e.qty]
        else:
            self.incoming = [e.id, e.side, e.price, e.qty]

    def trade(self, e: Trade) -> None:
        self._seq(e.seq)
        md, key = self.md, (self.symbol, e.maker)
        maker = md.resting.get(key)
        if maker is not None:
            maker[2] -= e.qty
            gone = maker[2] <= 0
            md.level(self.symbol, maker[0], maker[1], -e.qty, -1 if gone else 0)
            if gone:
                del md.resting[key]
        incoming = self.incoming
        if incoming is not None and incoming[0] == e.taker:
            incoming[3] -= e.qty

    def cancelled(self, e: Cancelled) -> None:
        self._seq(e.seq)
        md, key = self.md, (self.symbol, e.id)
        resting = md.resting.pop(key, None)
        if resting is not None:
            md.level(self.symbol, resting[0], resting[1], -resting[2], -1)
        elif self.incoming is not None and self.incoming[0] == e.id:
            self.incoming = None
        else:
            md.stops.pop(key, None)

    def amended(self, e: Amended) -> None:
        self.finish()
        self._seq(e.seq)
        md = self.md
        resting = md.resting.pop((self.symbol, e.id), None)
        if resting is not None:
            md.level(self.symbol, resting[0], resting[1], -resting[2], -1)
            self.incoming = [e.id, resting[0], e.price, e.qty]

    def triggered(self, e: Triggered) -> None:
        self.finish()
        self._seq(e.seq)
        stop = self.md.stops.pop((self.symbol, e.id), None)
        if stop is not None:
            self.incoming = [e.id, stop[0], stop[1], stop[2]]

    def rejected(self, e: Rejected) -> None:
        self._seq(e.seq)
        if self.incoming is not None and self.incoming[0] == e.id:
            self.incoming = None

    def finish(self) -> None:
        """Rest what is left of the order being matched."""
        incoming = self.incoming
        self.incoming = None
        if incoming is not None and incoming[3] > 0 and incoming[2] is not None:
            order_id, side, price, qty = incoming
            self.md.resting[(self.symbol, order_id)] = [side, price, qty]
            self.md.level(self.symbol, side, price, qty, 1)
