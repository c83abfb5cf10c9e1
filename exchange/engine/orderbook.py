"""Price-time priority order book for one instrument: the pure matching core.

Commands go in through `process()`, events come out in `events` (drain with
`take_events()`). Every event carries a strictly increasing `seq`. The book
never reads a clock, draws a random number or performs I/O, so the same
commands always produce the same events, byte for byte.

Layout, chosen for speed in CPython and under mypyc:
- each side keeps `levels: dict[key, Level]` and `keys: list[int]` sorted
  ascending so the best level is always `keys[-1]` (bids use key = price,
  asks key = -price); pops at the top of book are O(1);
- a level is an intrusive doubly linked list of `Order` nodes (head = oldest),
  so cancel is O(1) plus, when a level empties, an O(levels) list delete;
- `orders: dict[client id, Order]` indexes live resting orders.
"""

import hashlib
import os
import warnings
from bisect import bisect_left, insort
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

import msgspec

from exchange.engine.codes import REASONS, ResultCode
from exchange.engine.instrument import BPS_DENOMINATOR, MAX_PRICE, MAX_QTY, Instrument
from exchange.engine.messages import (
    Accepted,
    Amend,
    Amended,
    BestBidOffer,
    BookRequest,
    Cancel,
    CancelAll,
    Cancelled,
    Command,
    DepthSnapshot,
    DepthUpdate,
    Event,
    Malformed,
    NewOrder,
    PriceSet,
    PriceUpdate,
    Rejected,
    SetReference,
    Side,
    Trade,
    Triggered,
)
from exchange.engine.state import BookState, RestingOrderState, StopOrderState

# Limits on everything (TigerBeetle style): a book refuses new orders beyond
# MAX_LIVE_ORDERS, client ids are short, L2 snapshots are bounded.
MAX_LIVE_ORDERS: Final = 10_000_000
MAX_ID_LEN: Final = 64
MAX_SNAPSHOT_DEPTH: Final = 1_000
MAX_SHARED_ACCOUNTS: Final = 100_000

STP_NONE: Final = 0
STP_CANCEL_TAKER: Final = 1
STP_CANCEL_MAKER: Final = 2
STP_CANCEL_BOTH: Final = 3
_STP_BY_NAME: Final[dict[str | None, int]] = {
    None: STP_NONE,
    "cancel_taker": STP_CANCEL_TAKER,
    "cancel_maker": STP_CANCEL_MAKER,
    "cancel_both": STP_CANCEL_BOTH,
}

# `_on_new` unpacks a NewOrder positionally, in this field order.
_NEW_ORDER_FIELDS: Final = (
    "id", "account", "side", "qty", "type", "price", "tif", "stp", "reduce_only",
    "trigger_price", "trigger", "ts",
)
if NewOrder.__struct_fields__ != _NEW_ORDER_FIELDS:
    raise ImportError(f"NewOrder fields changed to {NewOrder.__struct_fields__}; update _on_new")
_astuple: Final = msgspec.structs.astuple

# A bound no key ever falls below: "no protection limit".
_NO_BOUND: Final = -(2**63)

_OK: Final = 0
_UNKNOWN_ORDER: Final = 3001
_DUPLICATE_ORDER_ID: Final = 3002
_BAD_TICK: Final = 3003
_BAD_LOT: Final = 3004
_OUTSIDE_BAND: Final = 3005
_POST_ONLY_WOULD_TAKE: Final = 3006
_FOK_UNFILLABLE: Final = 3007
_BAD_QTY: Final = 3008
_BAD_PRICE: Final = 3009
_BAD_ORDER_TYPE: Final = 3010
_BAD_SIDE: Final = 3011
_BAD_ID: Final = 3012
_BAD_TRIGGER: Final = 3013
_REDUCE_ONLY_UNAVAILABLE: Final = 3014
_REDUCE_ONLY_WOULD_INCREASE: Final = 3015
_NOT_AMENDABLE: Final = 3016
_BOOK_FULL: Final = 3017
_INVALID_COMMAND: Final = 3018


class CorruptState(Exception):
    """The book broke one of its own invariants: a programmer error."""


class ReduceOnlyHook(Protocol):
    """Let the positions owner decide whether a reduce-only order may rest.

    It must be deterministic given the command stream (the positions owner
    rebuilds its state from the same journal), otherwise replay diverges.
    """

    def allows_reduce_only(self, account: str, side: Side, qty: int) -> bool:
        """Return True when `qty` on `side` can only reduce the position."""
        ...


class Order:
    """A resting order: a node of its level's intrusive list."""

    __slots__ = (
        "account",
        "id",
        "is_buy",
        "level",
        "next",
        "oid",
        "post_only",
        "prev",
        "price",
        "qty",
        "reduce_only",
        "stp",
    )

    def __init__(
        self,
        oid: int,
        id: str,
        account: str,
        is_buy: bool,
        price: int,
        qty: int,
        post_only: bool,
        stp: int,
        reduce_only: bool,
    ) -> None:
        self.oid = oid
        self.id = id
        self.account = account
        self.is_buy = is_buy
        self.price = price
        self.qty = qty
        self.post_only = post_only
        self.stp = stp
        self.reduce_only = reduce_only
        self.level: Level | None = None
        self.prev: Order | None = None
        self.next: Order | None = None


class Level:
    """All resting orders at one price, oldest first."""

    __slots__ = ("count", "head", "key", "price", "tail", "total")

    def __init__(self, key: int, price: int) -> None:
        self.key = key
        self.price = price
        self.total = 0
        self.count = 0
        self.head: Order | None = None
        self.tail: Order | None = None


class BookSide:
    """One side of the book; keys are price (bids) or -price (asks)."""

    __slots__ = ("keys", "levels", "sign")

    def __init__(self, sign: int) -> None:
        self.sign = sign
        self.levels: dict[int, Level] = {}
        self.keys: list[int] = []

    def best_price(self) -> int | None:
        """Return the best price on this side, or None when empty."""
        if not self.keys:
            return None
        return self.keys[-1] * self.sign


class StopOrder:
    """An accepted stop waiting for its trigger price."""

    __slots__ = (
        "account",
        "id",
        "is_buy",
        "is_market",
        "oid",
        "price",
        "qty",
        "reduce_only",
        "stp",
        "tif",
        "trigger",
        "trigger_price",
        "ts",
    )

    def __init__(
        self,
        oid: int,
        id: str,
        account: str,
        is_buy: bool,
        qty: int,
        is_market: bool,
        price: int | None,
        tif: str,
        stp: int,
        reduce_only: bool,
        trigger: str,
        trigger_price: int,
    ) -> None:
        self.oid = oid
        self.id = id
        self.account = account
        self.is_buy = is_buy
        self.qty = qty
        self.is_market = is_market
        self.price = price
        self.tif = tif
        self.stp = stp
        self.reduce_only = reduce_only
        self.trigger = trigger
        self.trigger_price = trigger_price


def _make_order(
    oid: int, id: str, account: str, is_buy: bool, price: int, qty: int, post_only: bool,
    stp: int, reduce_only: bool,
) -> Order:
    """Return a new resting order, as `Order(...)` does.

    The compiled core builds it without the Python-level call into
    `__init__` (argument parsing is a tenth of the cost of a new order).
    """
    o = Order.__new__(Order)
    o.oid = oid
    o.id = id
    o.account = account
    o.is_buy = is_buy
    o.price = price
    o.qty = qty
    o.post_only = post_only
    o.stp = stp
    o.reduce_only = reduce_only
    o.level = None
    o.prev = None
    o.next = None
    return o


def _side_name(is_buy: bool) -> Side:
    return "buy" if is_buy else "sell"


class OrderBook:
    """The matching engine of one instrument."""

    def __init__(
        self,
        instrument: Instrument,
        *,
        market_data: bool = False,
        reduce_only_hook: ReduceOnlyHook | None = None,
    ) -> None:
        instrument.check()
        self.instrument = instrument
        self.market_data = market_data
        self.reduce_only_hook = reduce_only_hook
        self.events: list[Event] = []
        self.seq = 0
        self.next_oid = 1
        self.bids = BookSide(1)
        self.asks = BookSide(-1)
        self.orders: dict[str, Order] = {}
        self.stops: dict[str, StopOrder] = {}
        self.last_price: int | None = None
        self.mark_price: int | None = None
        self._tick = instrument.tick_size
        self._lot = instrument.lot_size
        self._min_qty = instrument.min_qty
        self._max_qty = instrument.max_qty
        self._band_bps = instrument.band_bps if instrument.band_bps is not None else 0
        self.reference_price: int | None = None
        self._band_lo = 1
        self._band_hi = MAX_PRICE
        self._set_reference(instrument.reference_price)
        # Per-command scratch state of the matcher.
        self._halt_reason = ""
        self._touched: list[Level] = []
        self._bbo: tuple[int, int, int, int] = (0, 0, 0, 0)
        # One string object per account for resting orders: decoded commands
        # carry a fresh copy each, and a shared one is both smaller and warm
        # in the cache when a fill copies it into a Trade. Bounded.
        self._accounts: dict[str, str] = {}

    # ------------------------------------------------------------------ API

    def process(self, cmd: Command) -> None:
        """Apply one command; its events are appended to `self.events`."""
        if isinstance(cmd, NewOrder):
            self._on_new(cmd)
        elif isinstance(cmd, Cancel):
            self._on_cancel(cmd)
        elif isinstance(cmd, Amend):
            self._on_amend(cmd)
        elif isinstance(cmd, CancelAll):
            self._on_cancel_all(cmd)
        elif isinstance(cmd, PriceUpdate):
            self._on_price(cmd)
        elif isinstance(cmd, SetReference):
            self._on_reference(cmd)
        elif isinstance(cmd, BookRequest):
            self._on_book_request(cmd)
        elif isinstance(cmd, Malformed):
            self._reject(cmd.id, _INVALID_COMMAND, f"line {cmd.line}: {cmd.error}")
        else:
            self._reject(None, _INVALID_COMMAND, f"unknown command {type(cmd).__name__}")
        if self.market_data:
            self._flush_market_data()

    def process_many(self, cmds: Iterable[Command]) -> None:
        """Apply `cmds` in order, as `process()` on each; events go to `self.events`.

        One call per batch instead of one per command: the loop runs in C
        in the compiled core.
        """
        for cmd in cmds:
            self.process(cmd)

    def submit(self, cmd: Command) -> list[Event]:
        """Apply one command and return (and drain) the events it produced."""
        self.process(cmd)
        return self.take_events()

    def take_events(self) -> list[Event]:
        """Return the pending events and start a new, empty list."""
        events = self.events
        self.events = []
        return events

    def best_bid(self) -> int | None:
        """Return the best bid price, or None."""
        return self.bids.best_price()

    def best_ask(self) -> int | None:
        """Return the best ask price, or None."""
        return self.asks.best_price()

    # ------------------------------------------------------------ new order

    def _on_new(self, c: NewOrder) -> None:
        # Hot path: read every field at once (one C call in the compiled
        # core instead of a generic attribute lookup per field).
        (id, account, side, qty, t, price, tif, stp_name, reduce_only, trigger_price, _trigger,
         ts) = _astuple(c)
        code = self._validate_new(c, id, account, side, qty, t, price, tif, stp_name,
                                  reduce_only, trigger_price)
        if code != _OK:
            self._reject(id, code, self._explain_new(code, c))
            return
        is_buy = side == "buy"
        stp = STP_NONE if stp_name is None else _STP_BY_NAME[stp_name]
        oid = self.next_oid
        if t == "stop_limit" or t == "stop_market":
            self._accept_stop(c, oid, is_buy, stp)
            return
        is_market = t == "market"
        limit = 0 if price is None else price
        if tif == "POST_ONLY" or tif == "FOK":
            code = self._check_against_book(account, is_buy, is_market, limit, qty, tif, stp)
            if code != _OK:
                self._reject(id, code, self._explain_book(code, price, qty))
                return
        self.next_oid = oid + 1
        seq = self.seq + 1
        self.seq = seq
        self.events.append(Accepted(seq, id, oid, account, side, qty, price))
        if is_market or tif != "GTC":
            self._execute(oid, id, account, is_buy, is_market, limit, qty, tif, stp,
                          reduce_only, ts)
            return
        # GTC limit (the common case): match, then rest what is left.
        remaining = self._match(id, account, is_buy, -limit if is_buy else limit, qty, stp, ts)
        if remaining == 0:
            return
        if self._halt_reason:
            self.seq += 1
            self.events.append(Cancelled(self.seq, id, remaining, self._halt_reason))
            return
        self._rest(_make_order(oid, id, self._shared(account), is_buy, limit, remaining, False, stp,
                               reduce_only))

    def _shared(self, account: str) -> str:
        """Return the book's copy of `account` (an equal string), keeping at most MAX_SHARED_ACCOUNTS."""
        shared = self._accounts.get(account)
        if shared is not None:
            return shared
        if len(self._accounts) < MAX_SHARED_ACCOUNTS:
            self._accounts[account] = account
        return account

    def _accept_stop(self, c: NewOrder, oid: int, is_buy: bool, stp: int) -> None:
        trigger_price = c.trigger_price
        assert trigger_price is not None
        self.next_oid = oid + 1
        self.stops[c.id] = StopOrder(
            oid, c.id, c.account, is_buy, c.qty, c.type == "stop_market",
            c.price, c.tif, stp, c.reduce_only, c.trigger, trigger_price,
        )
        self.seq += 1
        self.events.append(Accepted(self.seq, c.id, oid, c.account, c.side, c.qty, c.price))

    def _validate_new(
        self, c: NewOrder, id: str, account: str, side: Side, qty: int, t: str,
        price: int | None, tif: str, stp_name: str | None, reduce_only: bool,
        trigger_price: int | None,
    ) -> int:
        """Return the first static problem of new order `c`, or 0.

        The other arguments are fields of `c` the caller has already read.
        """
        if id in self.orders or (self.stops and id in self.stops):
            return _DUPLICATE_ORDER_ID
        if not id or len(id) > MAX_ID_LEN:
            return _BAD_ID
        if side != "buy" and side != "sell":
            return _BAD_SIDE
        if qty <= 0 or qty > MAX_QTY:
            return _BAD_QTY
        if qty % self._lot != 0:
            return _BAD_LOT
        if qty < self._min_qty or qty > self._max_qty:
            return _BAD_QTY
        code = self._validate_type(c, t, price, tif, trigger_price)
        if code != _OK:
            return code
        if stp_name is not None and stp_name not in _STP_BY_NAME:
            return _BAD_ORDER_TYPE
        if reduce_only:
            hook = self.reduce_only_hook
            if hook is None:
                return _REDUCE_ONLY_UNAVAILABLE
            if not hook.allows_reduce_only(account, side, qty):
                return _REDUCE_ONLY_WOULD_INCREASE
        if len(self.orders) + len(self.stops) >= MAX_LIVE_ORDERS:
            return _BOOK_FULL
        return _OK

    def _validate_type(
        self, c: NewOrder, t: str, price: int | None, tif: str, trigger_price: int | None
    ) -> int:
        """Check the type/price/tif/trigger combination of new order `c`."""
        if tif != "GTC" and tif != "IOC" and tif != "FOK" and tif != "POST_ONLY":
            return _BAD_ORDER_TYPE
        if t == "limit" or t == "stop_limit":
            if price is None or price <= 0 or price >= MAX_PRICE:
                return _BAD_PRICE
            if price % self._tick != 0:
                return _BAD_TICK
            if t == "limit" and (price < self._band_lo or price > self._band_hi):
                return _OUTSIDE_BAND
        elif t == "market" or t == "stop_market":
            if price is not None:
                return _BAD_PRICE
            if tif == "POST_ONLY":
                return _BAD_ORDER_TYPE
        else:
            return _BAD_ORDER_TYPE
        if t == "limit" or t == "market":
            return _BAD_ORDER_TYPE if trigger_price is not None else _OK
        return self._validate_trigger(c)

    def _validate_trigger(self, c: NewOrder) -> int:
        trigger_price = c.trigger_price
        if trigger_price is None or trigger_price <= 0 or trigger_price >= MAX_PRICE:
            return _BAD_TRIGGER
        if trigger_price % self._tick != 0:
            return _BAD_TICK
        if c.trigger != "last" and c.trigger != "mark":
            return _BAD_TRIGGER
        current = self.last_price if c.trigger == "last" else self.mark_price
        # A stop that would trigger at once is almost always a client bug.
        if current is not None:
            if c.side == "buy" and trigger_price <= current:
                return _BAD_TRIGGER
            if c.side == "sell" and trigger_price >= current:
                return _BAD_TRIGGER
        return _OK

    def _protection_bound(self, is_buy: bool) -> int:
        """Return the key bound a market order must not sweep past."""
        if self._band_bps == 0:
            return _NO_BOUND
        ref = self.reference_price
        if ref is None:
            opp = self.asks if is_buy else self.bids
            ref = opp.best_price()
            if ref is None:
                return _NO_BOUND
        width = ref * self._band_bps // BPS_DENOMINATOR
        # Opposite side keys: asks are -price, bids are price; key >= bound.
        return -(ref + width) if is_buy else ref - width

    def _check_against_book(
        self, account: str, is_buy: bool, is_market: bool, limit: int, qty: int, tif: str,
        stp: int,
    ) -> int:
        """Return why the order cannot run against the current book, or 0."""
        if tif == "POST_ONLY":
            if is_buy:
                best = self.asks.best_price()
                if best is not None and best <= limit:
                    return _POST_ONLY_WOULD_TAKE
            else:
                best = self.bids.best_price()
                if best is not None and best >= limit:
                    return _POST_ONLY_WOULD_TAKE
            return _OK
        if tif == "FOK":
            bound = self._protection_bound(is_buy) if is_market else (-limit if is_buy else limit)
            if not self._fillable(account, is_buy, bound, qty, stp):
                return _FOK_UNFILLABLE
        return _OK

    def _fillable(self, account: str, is_buy: bool, bound: int, qty: int, stp: int) -> bool:
        """Say whether `qty` can fill completely without changing anything."""
        opp = self.asks if is_buy else self.bids
        keys = opp.keys
        levels = opp.levels
        need = qty
        i = len(keys) - 1
        while i >= 0 and keys[i] >= bound:
            level = levels[keys[i]]
            if stp == STP_NONE:
                if level.total >= need:
                    return True
                need -= level.total
            else:
                o = level.head
                while o is not None:
                    if o.account == account:
                        if stp != STP_CANCEL_MAKER:
                            return False
                    else:
                        if o.qty >= need:
                            return True
                        need -= o.qty
                    o = o.next
            i -= 1
        return False

    def _execute(
        self, oid: int, id: str, account: str, is_buy: bool, is_market: bool, limit: int,
        qty: int, tif: str, stp: int, reduce_only: bool, ts: int,
    ) -> None:
        """Match an accepted order, then rest or cancel what is left."""
        bound = self._protection_bound(is_buy) if is_market else (-limit if is_buy else limit)
        remaining = self._match(id, account, is_buy, bound, qty, stp, ts)
        if remaining == 0:
            return
        halt = self._halt_reason
        if halt:
            reason = halt
        elif is_market:
            opp = self.asks if is_buy else self.bids
            reason = "market_protection" if opp.keys else "market_no_liquidity"
        elif tif == "IOC" or tif == "FOK":
            reason = "ioc" if tif == "IOC" else "fok"
        else:
            self._rest(_make_order(oid, id, self._shared(account), is_buy, limit, remaining,
                                   tif == "POST_ONLY",
                                   stp, reduce_only))
            return
        self.seq += 1
        self.events.append(Cancelled(self.seq, id, remaining, reason))

    def _match(
        self, id: str, account: str, is_buy: bool, bound: int, qty: int, stp: int, ts: int
    ) -> int:
        """Trade `qty` against the opposite side down to `bound`; return what is left.

        Sets `_halt_reason` to "stp" when self-trade prevention cancelled
        the taker.
        """
        self._halt_reason = ""
        opp = self.asks if is_buy else self.bids
        keys = opp.keys
        if not keys or keys[-1] < bound:
            return qty
        levels = opp.levels
        events = self.events
        orders = self.orders
        taker_side = _side_name(is_buy)
        md = self.market_data
        remaining = qty
        seq = self.seq
        traded_price = 0
        while remaining > 0 and keys:
            key = keys[-1]
            if key < bound:
                break
            level = levels[key]
            price = level.price
            if md:
                self._touched.append(level)
            o = level.head
            while o is not None:
                if stp != STP_NONE and o.account == account:
                    if stp != STP_CANCEL_TAKER:
                        self._unlink_head(level, o)
                        seq += 1
                        events.append(Cancelled(seq, o.id, o.qty, "stp"))
                    if stp != STP_CANCEL_MAKER:
                        self._halt_reason = "stp"
                        break
                    o = level.head
                    continue
                oqty = o.qty
                seq += 1
                traded_price = price
                if oqty > remaining:
                    o.qty = oqty - remaining
                    level.total -= remaining
                    events.append(Trade(seq, o.id, id, price, remaining, taker_side, o.account,
                                        account, ts))
                    remaining = 0
                    break
                events.append(Trade(seq, o.id, id, price, oqty, taker_side, o.account, account,
                                    ts))
                remaining -= oqty
                # Unlink the fully filled head inline: this is the hot path.
                nxt = o.next
                level.head = nxt
                if nxt is None:
                    level.tail = None
                else:
                    nxt.prev = None
                level.total -= oqty
                level.count -= 1
                o.level = None
                o.next = None
                del orders[o.id]
                if remaining == 0:
                    break
                o = nxt
            if level.head is None:
                keys.pop()
                del levels[key]
            if self._halt_reason:
                break
        self.seq = seq
        if traded_price != 0:
            self._set_reference(traded_price)
        return remaining

    def _unlink_head(self, level: Level, o: Order) -> None:
        nxt = o.next
        level.head = nxt
        if nxt is None:
            level.tail = None
        else:
            nxt.prev = None
        level.total -= o.qty
        level.count -= 1
        o.level = None
        o.next = None
        del self.orders[o.id]

    def _rest(self, o: Order) -> None:
        """Append `o` to the tail of its price level."""
        side = self.bids if o.is_buy else self.asks
        key = o.price * side.sign
        level = side.levels.get(key)
        if level is None:
            level = Level(key, o.price)
            side.levels[key] = level
            keys = side.keys
            if not keys or key > keys[-1]:
                keys.append(key)
            else:
                insort(keys, key)
        tail = level.tail
        o.prev = tail
        o.next = None
        if tail is None:
            level.head = o
        else:
            tail.next = o
        level.tail = o
        level.total += o.qty
        level.count += 1
        o.level = level
        self.orders[o.id] = o
        if self.market_data:
            self._touched.append(level)

    def _remove(self, o: Order) -> None:
        """Take a resting order out of the book (cancel or re-price)."""
        level = o.level
        assert level is not None
        prev = o.prev
        nxt = o.next
        if prev is None:
            level.head = nxt
        else:
            prev.next = nxt
        if nxt is None:
            level.tail = prev
        else:
            nxt.prev = prev
        level.total -= o.qty
        level.count -= 1
        o.level = None
        o.prev = None
        o.next = None
        del self.orders[o.id]
        if self.market_data:
            self._touched.append(level)
        if level.head is None:
            side = self.bids if o.is_buy else self.asks
            keys = side.keys
            key = level.key
            if keys[-1] == key:
                keys.pop()
            else:
                del keys[bisect_left(keys, key)]
            del side.levels[key]

    # ------------------------------------------------------- cancel, amend

    def _on_cancel(self, c: Cancel) -> None:
        o = self.orders.get(c.id)
        if o is not None and (c.account is None or c.account == o.account):
            self._remove(o)
            self.seq += 1
            self.events.append(Cancelled(self.seq, o.id, o.qty, "user"))
            return
        s = self.stops.get(c.id)
        if s is not None and (c.account is None or c.account == s.account):
            del self.stops[c.id]
            self.seq += 1
            self.events.append(Cancelled(self.seq, s.id, s.qty, "user"))
            return
        self._reject(c.id, _UNKNOWN_ORDER, f"no live order with id {c.id!r}")

    def _on_cancel_all(self, c: CancelAll) -> None:
        # Acceptance (oid) order, not dict order: amends re-insert into the
        # index and a restored book rebuilds it in level order.
        mine = sorted((o for o in self.orders.values() if o.account == c.account),
                      key=_order_oid)
        for o in mine:
            self._remove(o)
            self.seq += 1
            self.events.append(Cancelled(self.seq, o.id, o.qty, "cancel_all"))
        stops = [s for s in self.stops.values() if s.account == c.account]
        for s in stops:
            del self.stops[s.id]
            self.seq += 1
            self.events.append(Cancelled(self.seq, s.id, s.qty, "cancel_all"))

    def _on_amend(self, c: Amend) -> None:
        o = self.orders.get(c.id)
        if o is None or (c.account is not None and c.account != o.account):
            s = self.stops.get(c.id)
            if s is not None and (c.account is None or c.account == s.account):
                self._reject(c.id, _NOT_AMENDABLE, "untriggered stop orders cannot be amended")
            else:
                self._reject(c.id, _UNKNOWN_ORDER, f"no resting order with id {c.id!r}")
            return
        qty = o.qty if c.qty is None else c.qty
        price = o.price if c.price is None else c.price
        code = self._validate_amend(c, o, qty, price)
        if code != _OK:
            self._reject(c.id, code, self._explain_book(code, price, qty))
            return
        if price == o.price and qty <= o.qty:
            level = o.level
            assert level is not None
            level.total -= o.qty - qty
            o.qty = qty
            if self.market_data:
                self._touched.append(level)
            self.seq += 1
            self.events.append(Amended(self.seq, o.id, price, qty, True))
            return
        self._remove(o)
        self.seq += 1
        self.events.append(Amended(self.seq, o.id, price, qty, False))
        bound = -price if o.is_buy else price
        remaining = self._match(o.id, o.account, o.is_buy, bound, qty, o.stp, c.ts)
        if remaining == 0:
            return
        if self._halt_reason:
            self.seq += 1
            self.events.append(Cancelled(self.seq, o.id, remaining, self._halt_reason))
            return
        o.price = price
        o.qty = remaining
        self._rest(o)

    def _validate_amend(self, c: Amend, o: Order, qty: int, price: int) -> int:
        if c.qty is None and c.price is None:
            return _INVALID_COMMAND
        if qty <= 0 or qty > MAX_QTY:
            return _BAD_QTY
        if qty % self._lot != 0:
            return _BAD_LOT
        if qty < self._min_qty or qty > self._max_qty:
            return _BAD_QTY
        if price == o.price:
            return _OK
        if price <= 0 or price >= MAX_PRICE:
            return _BAD_PRICE
        if price % self._tick != 0:
            return _BAD_TICK
        if price < self._band_lo or price > self._band_hi:
            return _OUTSIDE_BAND
        if o.post_only:
            best = self.asks.best_price() if o.is_buy else self.bids.best_price()
            if best is not None and (best <= price if o.is_buy else best >= price):
                return _POST_ONLY_WOULD_TAKE
        return _OK

    # ------------------------------------------------------ prices, stops

    def _set_reference(self, price: int | None) -> None:
        self.reference_price = price
        if price is None or self._band_bps == 0:
            self._band_lo = 1
            self._band_hi = MAX_PRICE
            return
        width = price * self._band_bps // BPS_DENOMINATOR
        self._band_lo = max(1, price - width)
        self._band_hi = price + width

    def _on_reference(self, c: SetReference) -> None:
        if c.price <= 0 or c.price >= MAX_PRICE:
            self._reject(None, _BAD_PRICE, f"reference price was {c.price}, must be positive")
            return
        self._set_reference(c.price)
        self.seq += 1
        self.events.append(PriceSet(self.seq, "reference", c.price))

    def _on_price(self, c: PriceUpdate) -> None:
        if c.kind != "last" and c.kind != "mark":
            self._reject(None, _INVALID_COMMAND, f"price kind was {c.kind!r}, must be last|mark")
            return
        if c.price <= 0 or c.price >= MAX_PRICE:
            self._reject(None, _BAD_PRICE, f"{c.kind} price was {c.price}, must be positive")
            return
        if c.kind == "last":
            self.last_price = c.price
        else:
            self.mark_price = c.price
        self.seq += 1
        self.events.append(PriceSet(self.seq, c.kind, c.price))
        # Stops trigger in acceptance (oid) order: `stops` preserves
        # insertion order and stops are never re-inserted.
        fired = [
            s
            for s in self.stops.values()
            if s.trigger == c.kind
            and (c.price >= s.trigger_price if s.is_buy else c.price <= s.trigger_price)
        ]
        for s in fired:
            del self.stops[s.id]
            self.seq += 1
            self.events.append(Triggered(self.seq, s.id, c.kind, s.trigger_price, c.price))
            self._run_triggered(s, c.ts)

    def _run_triggered(self, s: StopOrder, ts: int) -> None:
        """Run a triggered stop as a market or limit order with its own id."""
        limit = 0 if s.price is None else s.price
        code = _OK
        if not s.is_market and (limit < self._band_lo or limit > self._band_hi):
            code = _OUTSIDE_BAND
        else:
            code = self._check_against_book(s.account, s.is_buy, s.is_market, limit, s.qty,
                                            s.tif, s.stp)
        if code != _OK:
            self.seq += 1
            self.events.append(Cancelled(self.seq, s.id, s.qty, REASONS[code]))
            return
        self._execute(s.oid, s.id, s.account, s.is_buy, s.is_market, limit, s.qty, s.tif, s.stp,
                      s.reduce_only, ts)

    # -------------------------------------------------------- market data

    def _on_book_request(self, c: BookRequest) -> None:
        if c.depth <= 0 or c.depth > MAX_SNAPSHOT_DEPTH:
            self._reject(None, _INVALID_COMMAND,
                         f"depth was {c.depth}, must be in 1..{MAX_SNAPSHOT_DEPTH}")
            return
        self.seq += 1
        self.events.append(self.depth_snapshot(c.depth))

    def depth_snapshot(self, depth: int) -> DepthSnapshot:
        """Return the top `depth` L2 levels per side, tagged with the current seq."""
        return DepthSnapshot(self.seq, _levels(self.bids, depth), _levels(self.asks, depth))

    def _bbo_tuple(self) -> tuple[int, int, int, int]:
        bid = self.bids.keys[-1] if self.bids.keys else 0
        ask = self.asks.keys[-1] if self.asks.keys else 0
        bid_qty = self.bids.levels[bid].total if bid else 0
        ask_qty = self.asks.levels[ask].total if ask else 0
        return (bid, bid_qty, -ask, ask_qty)

    def _flush_market_data(self) -> None:
        """Emit coalesced depth deltas and a BBO event if the top changed."""
        touched = self._touched
        if touched:
            seen: set[int] = set()
            for level in touched:
                if id(level) in seen:
                    continue
                seen.add(id(level))
                side_book = self.bids if level.key == level.price else self.asks
                alive = side_book.levels.get(level.key) is level
                side: Side = "buy" if side_book is self.bids else "sell"
                self.seq += 1
                self.events.append(
                    DepthUpdate(self.seq, side, level.price, level.total if alive else 0,
                                level.count if alive else 0)
                )
            self._touched = []
        bbo = self._bbo_tuple()
        if bbo != self._bbo:
            self._bbo = bbo
            self.seq += 1
            self.events.append(
                BestBidOffer(self.seq, bbo[0] or None, bbo[1], bbo[2] or None, bbo[3])
            )

    # ------------------------------------------------------------ errors

    def _reject(self, id: str | None, code: int, message: str) -> None:
        self.seq += 1
        self.events.append(Rejected(self.seq, id, code, REASONS[code], message))

    def _explain_new(self, code: int, c: NewOrder) -> str:
        if code == _DUPLICATE_ORDER_ID:
            return f"order id {c.id!r} is already live"
        if code == _BAD_ID:
            return f"order id was {c.id!r}, must be 1..{MAX_ID_LEN} characters"
        if code == _BAD_SIDE:
            return f"side was {c.side!r}, must be buy|sell"
        if code == _BAD_ORDER_TYPE:
            return (f"type={c.type!r} tif={c.tif!r} stp={c.stp!r} trigger_price={c.trigger_price}"
                    " is not a valid combination")
        if code == _BAD_TRIGGER:
            return (f"trigger_price was {c.trigger_price} ({c.trigger}), must be positive and"
                    " not already reached")
        if code == _REDUCE_ONLY_UNAVAILABLE:
            return "reduce-only orders need a positions owner; none is attached"
        if code == _REDUCE_ONLY_WOULD_INCREASE:
            return f"reduce-only {c.side} of {c.qty} would increase the position"
        if code == _BOOK_FULL:
            return f"book holds {MAX_LIVE_ORDERS} live orders, the maximum"
        if code == _BAD_TICK and (c.price is None or c.price % self._tick == 0):
            return f"trigger_price was {c.trigger_price}, must be a multiple of {self._tick}"
        return self._explain_book(code, c.price, c.qty)

    def _explain_book(self, code: int, price: int | None, qty: int) -> str:
        if code == _BAD_QTY:
            return f"qty was {qty}, must be in {self._min_qty}..{self._max_qty}"
        if code == _BAD_LOT:
            return f"qty was {qty}, must be a multiple of lot size {self._lot}"
        if code == _BAD_PRICE:
            return f"price was {price}, must be a positive integer (absent for market orders)"
        if code == _BAD_TICK:
            return f"price was {price}, must be a multiple of tick size {self._tick}"
        if code == _OUTSIDE_BAND:
            return (f"price was {price}, must be within {self._band_lo}..{self._band_hi}"
                    f" (reference {self.reference_price})")
        if code == _POST_ONLY_WOULD_TAKE:
            return f"post-only price {price} would cross the book"
        if code == _FOK_UNFILLABLE:
            return f"fill-or-kill qty {qty} cannot fill completely at {price}"
        if code == _INVALID_COMMAND:
            return "amend needs qty and/or price"
        return ResultCode(code).reason

    # ------------------------------------------------ state and invariants

    def state(self) -> BookState:
        """Return the canonical state: bids best first, asks best first, stops by oid."""
        return BookState(
            instrument=self.instrument,
            market_data=self.market_data,
            event_seq=self.seq,
            next_oid=self.next_oid,
            reference_price=self.reference_price,
            last_price=self.last_price,
            mark_price=self.mark_price,
            bids=_resting(self.bids),
            asks=_resting(self.asks),
            stops=[
                StopOrderState(s.oid, s.id, s.account, _side_name(s.is_buy), s.qty, s.is_market,
                               s.price, s.tif, s.stp, s.reduce_only, s.trigger, s.trigger_price)
                for s in self.stops.values()
            ],
        )

    def state_hash(self) -> str:
        """Return the SHA-256 (hex) of the canonical msgpack encoding of `state()`."""
        return hashlib.sha256(msgspec.msgpack.encode(self.state())).hexdigest()

    @classmethod
    def from_state(
        cls, state: BookState, *, reduce_only_hook: ReduceOnlyHook | None = None
    ) -> "OrderBook":
        """Rebuild a book from `state()` output; priority order is preserved."""
        book = cls(state.instrument, market_data=state.market_data,
                   reduce_only_hook=reduce_only_hook)
        book.seq = state.event_seq
        book.next_oid = state.next_oid
        book._set_reference(state.reference_price)
        book.last_price = state.last_price
        book.mark_price = state.mark_price
        for r in [*state.bids, *state.asks]:
            book._rest(Order(r.oid, r.id, r.account, r.side == "buy", r.price, r.qty, r.post_only,
                             r.stp, r.reduce_only))
        for s in state.stops:
            book.stops[s.id] = StopOrder(s.oid, s.id, s.account, s.side == "buy", s.qty,
                                         s.is_market, s.price, s.tif, s.stp, s.reduce_only,
                                         s.trigger, s.trigger_price)
        book._touched = []
        book._bbo = book._bbo_tuple()
        return book

    def validate_internal_state(self) -> None:
        """Raise CorruptState if any invariant of the book is broken."""
        for side in (self.bids, self.asks):
            _check_side(side, self.orders)
        bid = self.bids.best_price()
        ask = self.asks.best_price()
        if bid is not None and ask is not None and bid >= ask:
            raise CorruptState(f"book crossed: best bid {bid} >= best ask {ask}")
        counted = sum(level.count for s in (self.bids, self.asks) for level in s.levels.values())
        if counted != len(self.orders):
            raise CorruptState(f"{counted} orders in levels but {len(self.orders)} indexed")
        for sid, s in self.stops.items():
            if sid != s.id or sid in self.orders:
                raise CorruptState(f"stop index broken at {sid!r}")
            if s.oid >= self.next_oid:
                raise CorruptState(f"stop {sid!r} oid {s.oid} >= next oid {self.next_oid}")
        if self.seq < 0 or (self.events and self.events[-1].seq != self.seq):
            raise CorruptState(f"event seq {self.seq} out of step with emitted events")


def _order_oid(o: Order) -> int:
    return o.oid


def _levels(side: BookSide, depth: int) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    keys = side.keys
    for i in range(len(keys) - 1, max(-1, len(keys) - 1 - depth), -1):
        level = side.levels[keys[i]]
        out.append((level.price, level.total, level.count))
    return out


def _resting(side: BookSide) -> list[RestingOrderState]:
    out: list[RestingOrderState] = []
    for i in range(len(side.keys) - 1, -1, -1):
        o = side.levels[side.keys[i]].head
        while o is not None:
            out.append(RestingOrderState(o.oid, o.id, o.account, _side_name(o.is_buy), o.price,
                                         o.qty, o.post_only, o.stp, o.reduce_only))
            o = o.next
    return out


def _check_side(side: BookSide, orders: dict[str, Order]) -> None:
    keys = side.keys
    if any(keys[i] >= keys[i + 1] for i in range(len(keys) - 1)):
        raise CorruptState(f"price keys not strictly ascending: {keys[:10]}...")
    if set(keys) != set(side.levels):
        raise CorruptState("price key list and level dict disagree")
    for key, level in side.levels.items():
        if level.key != key or level.price * side.sign != key:
            raise CorruptState(f"level at key {key} has price {level.price}")
        total = 0
        count = 0
        prev: Order | None = None
        o = level.head
        while o is not None:
            if o.prev is not prev or o.level is not level or orders.get(o.id) is not o:
                raise CorruptState(f"order {o.id!r} links or index broken")
            if o.qty <= 0 or o.price != level.price or o.is_buy != (side.sign == 1):
                raise CorruptState(f"order {o.id!r} qty {o.qty} price {o.price} misplaced")
            total += o.qty
            count += 1
            prev = o
            o = o.next
        if level.tail is not prev or count == 0:
            raise CorruptState(f"level {level.price} tail broken or empty")
        if total != level.total or count != level.count:
            raise CorruptState(
                f"level {level.price}: total {level.total}/count {level.count}"
                f" but orders sum to {total}/{count}"
            )


# ------------------------------------------------------- compiled core

PURE_ENV: Final = "STRONGROOM_ENGINE_PURE"
CORE = "pure"
"""Which core `OrderBook` is: "pure" (this source, interpreted) or "cython"."""
_COMPILED_NAMES: Final = ("BookSide", "CorruptState", "Level", "Order", "OrderBook", "StopOrder")


def _load_compiled_core() -> None:
    """Rebind the classes above to their Cython build, when it is built and current.

    scripts/build-engine.sh compiles this very file (plus the C types of
    orderbook_cython.pxd) into the `orderbook_cython` extension and records
    the SHA-256 of the source it compiled. A build of an older source would
    silently run old rules, so it is ignored (with a warning) unless the hash
    matches. STRONGROOM_ENGINE_PURE=1 forces the pure core.
    """
    global CORE
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return
    try:
        from exchange.engine import orderbook_cython as compiled  # type: ignore[attr-defined]
    except ImportError:
        return
    source_sha256 = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    if source_sha256 != compiled.SOURCE_SHA256:
        warnings.warn(
            f"{compiled.__file__} was built from another version of {__file__}; using the"
            " pure-Python core (rebuild with scripts/build-engine.sh)",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    g = globals()
    for name in _COMPILED_NAMES:
        g[name] = getattr(compiled, name)
    CORE = "cython"


if not TYPE_CHECKING and __name__ == "exchange.engine.orderbook":
    _load_compiled_core()
