"""The venue: order books + clearing house + prices, composed without I/O.

Every external input is one method call with the time passed in: orders,
cancels, amends, deposits, index quotes and ``advance(now_ms)`` (funding and
expiry). Each call starts a new clearing sequence number; engine events and
clearing postings come out of ``drain()``. The imperative shell
(exchange/service.py) feeds the postings to the ledger.

Pipeline per order (exchange-core style): risk pre-check (reserve initial
margin) -> matching (OrderBook) -> risk settlement (positions, fees, PnL).
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, Protocol, get_args

import msgspec

from exchange.commands import (
    AdjustIsolatedMargin,
    Advance,
    AmendOrder,
    ArmDeadman,
    CancelAllOrders,
    CancelOrder,
    Delist,
    Deposit,
    Drain,
    Expire,
    Fund,
    Liquidate,
    ListInstrument,
    Place,
    Quote,
    SeedInsurance,
    SetBreaker,
    SetLeverage,
    SetMark,
    SetMarketStatus,
    SetTpSl,
    Tick,
    VenueCommand,
    Withdraw,
)
from exchange.controls import ControlsState, MarketControls
from exchange.engine.codes import ResultCode
from exchange.engine.messages import (
    Amend,
    Amended,
    Cancel,
    CancelAll,
    Event,
    NewOrder,
    OrderType,
    PriceKind,
    PriceUpdate,
    Rejected,
    SetReference,
    Side,
    StpMode,
    TimeInForce,
    Trade,
)
from exchange.engine.orderbook import OrderBook
from exchange.instruments import PPM, ExchangeConfig, InstrumentSpec
from exchange.prices import BasisTracker, IndexPrice, IndexState, Twap, linear_mark, option_mark
from exchange.risk.clearing import ISOLATED_SEP, Clearinghouse, Posting
from exchange.risk.codes import RiskCode
from exchange.risk.events import (
    FundingPaid,
    LiquidationOrder,
    LiquidationStarted,
    MarkSet,
    RiskEvent,
    Settled,
    SettlementDelayed,
    TpSlRefused,
)
from exchange.risk.liqindex import LiquidationIndex
from exchange.state import FillRecord, IndexStateRecord, PriceState, TpSlRecord, VenueState

MAX_FILLS_KEPT: Final = 1_000
MAX_SWEEP_LEVELS: Final = 1_000  # book levels walked to price a market order's worst fill
MAX_CATCH_UP: Final = 10_000  # funding intervals and expiries one ``advance`` runs at most
INTEREST_CLAMP_PPM: Final = 500
PARTIAL_TARGET_NUM: Final = 9  # partial liquidation aims at equity >= MM * 10/9
PARTIAL_TARGET_DEN: Final = 10
# The journal stores integers as JSON numbers that must decode back into 64-bit fields.
JOURNAL_INT_MIN: Final = -(2**63)
JOURNAL_INT_MAX: Final = 2**63 - 1
MAX_ECHO_CHARS: Final = 40  # how much of a refused value an error message repeats
# Engine commands carry the edge's time in nanoseconds (`NewOrder.ts`): the venue's own orders,
# cancels and price updates too, so every fill's `ts` has one unit (docs/market-data.md).
NS_PER_MS: Final = 1_000_000

SIDES: Final[frozenset[str]] = frozenset(get_args(Side))
ORDER_TYPES: Final[frozenset[str]] = frozenset(get_args(OrderType))
TIMES_IN_FORCE: Final[frozenset[str]] = frozenset(get_args(TimeInForce))
STP_MODES: Final[frozenset[str]] = frozenset(get_args(StpMode))
PRICE_KINDS: Final[frozenset[str]] = frozenset(get_args(PriceKind))


class InvalidCommand(ValueError):
    """A command the venue refuses before it changes or journals anything.

    Such a command could not be decoded from the journal again (an enum value
    outside its set, a string that is not valid UTF-8, an integer beyond 64
    bits), so it must never reach the journal: it would stop the next start.
    """

    def __init__(self, code: ResultCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _echo(value: object) -> str:
    return repr(value)[:MAX_ECHO_CHARS]


def _journal_str(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate from a JSON "\\ud800" escape
        return False
    return True


def _journal_int(value: object, optional: bool = False) -> bool:
    if value is None:
        return optional
    return type(value) is int and JOURNAL_INT_MIN <= value <= JOURNAL_INT_MAX


def order_problem(cmd: NewOrder) -> tuple[ResultCode, str] | None:
    """Return why a new order cannot be journaled (code, message), or None when it can.

    Checks the type of every field and every enum (side, type, tif, stp,
    trigger); what the book decides (tick, lot, band, margin) is left to it.
    """
    if not _journal_str(cmd.id) or not _journal_str(cmd.account):
        return ResultCode.BAD_ID, f"order id was {_echo(cmd.id)}, must be a UTF-8 string"
    if cmd.side not in SIDES:
        return ResultCode.BAD_SIDE, f"side was {_echo(cmd.side)}, must be buy|sell"
    if cmd.type not in ORDER_TYPES:
        return ResultCode.BAD_ORDER_TYPE, (f"type was {_echo(cmd.type)}, must be "
                                           f"{'|'.join(sorted(ORDER_TYPES))}")
    if cmd.tif not in TIMES_IN_FORCE:
        return ResultCode.BAD_ORDER_TYPE, (f"tif was {_echo(cmd.tif)}, must be "
                                           f"{'|'.join(sorted(TIMES_IN_FORCE))}")
    if cmd.stp is not None and cmd.stp not in STP_MODES:
        return ResultCode.BAD_ORDER_TYPE, (f"stp was {_echo(cmd.stp)}, must be "
                                           f"{'|'.join(sorted(STP_MODES))} or absent")
    if cmd.trigger not in PRICE_KINDS:
        return ResultCode.BAD_TRIGGER, f"trigger was {_echo(cmd.trigger)}, must be last|mark"
    if not _journal_int(cmd.qty):
        return ResultCode.BAD_QTY, f"qty was {_echo(cmd.qty)}, must be a 64-bit integer"
    if not _journal_int(cmd.price, optional=True):
        return ResultCode.BAD_PRICE, f"price was {_echo(cmd.price)}, must be a 64-bit integer"
    if not _journal_int(cmd.trigger_price, optional=True):
        return ResultCode.BAD_TRIGGER, (f"trigger_price was {_echo(cmd.trigger_price)}, "
                                        "must be a 64-bit integer")
    if type(cmd.reduce_only) is not bool or not _journal_int(cmd.ts):
        return ResultCode.INVALID_COMMAND, "reduce_only must be a boolean and ts a 64-bit integer"
    return None


def amend_problem(cmd: Amend) -> tuple[ResultCode, str] | None:
    """Return why an amend cannot be journaled (code, message), or None when it can."""
    if not _journal_str(cmd.id) or not (cmd.account is None or _journal_str(cmd.account)):
        return ResultCode.BAD_ID, f"order id was {_echo(cmd.id)}, must be a UTF-8 string"
    if not _journal_int(cmd.qty, optional=True):
        return ResultCode.BAD_QTY, f"qty was {_echo(cmd.qty)}, must be a 64-bit integer"
    if not _journal_int(cmd.price, optional=True):
        return ResultCode.BAD_PRICE, f"price was {_echo(cmd.price)}, must be a 64-bit integer"
    if not _journal_int(cmd.ts):
        return ResultCode.INVALID_COMMAND, f"ts was {_echo(cmd.ts)}, must be a 64-bit integer"
    return None


class VenueTap(Protocol):
    """A read model fed by the venue as it runs (exchange/marketdata.py); it must not mutate it."""

    def ran(self, symbol: str, cmd: Any, events: list[Event]) -> None:
        """Observe one engine command of ``symbol`` and the events it produced (after settlement)."""
        ...

    def drained(self, events: list[RiskEvent]) -> None:
        """Observe the end of a batch: the clearing events handed out by ``drain()``."""
        ...


class CommandLog(Protocol):
    """Where the venue records each command it ran (the venue journal, see exchange/recovery.py)."""

    def record(self, cmd: VenueCommand) -> None:
        """Buffer ``cmd``; it becomes durable when the shell commits after the next drain."""
        ...


class PositionHook:
    """The reduce-only hook of one book: asks the clearing house about the position."""

    def __init__(self, clearing: Clearinghouse, symbol: str) -> None:
        self.clearing = clearing
        self.symbol = symbol

    def allows_reduce_only(self, account: str, side: Side, qty: int) -> bool:
        """Return True when ``qty`` on ``side``, with the account's other live reduce-only orders
        on that side, can only shrink the position (so no sequence of their fills can flip it)."""
        ch = self.clearing
        acct = ch.accounts.get(account)
        pos = None if acct is None else acct.positions.get(self.symbol)
        if pos is None:
            return False
        closable = -pos.size if side == "buy" else pos.size
        sign = 1 if side == "buy" else -1
        resting = 0
        for order_id in ch.reduce_only_index.get((account, self.symbol), ()):
            res = ch.orders[(self.symbol, order_id)]
            if res.side == sign:
                resting += res.qty
        # The order being checked is already reserved (the risk check runs first).
        return closable > 0 and resting <= closable


@dataclass(frozen=True, slots=True)
class OrderResult:
    """What happened to an order: a risk refusal (code != 0) or the engine's events."""

    code: RiskCode
    message: str
    events: list[Event]


class Venue:
    """All books of the exchange and the clearing house behind them (pure, deterministic)."""

    def __init__(self, config: ExchangeConfig, namespace: str = "x", record_fills: bool = True) -> None:
        self.config = config
        # A copy: listings add to it, and the configuration object may back other venues.
        self.specs: dict[str, InstrumentSpec] = dict(config.instruments)
        self.listed: dict[str, InstrumentSpec] = {}  # added at run time (listing calendar)
        self.clearing = Clearinghouse(self.specs, namespace)
        self.books = {s: OrderBook(spec.engine_instrument(),
                                   reduce_only_hook=PositionHook(self.clearing, s))
                      for s, spec in self.specs.items()}
        self.indices = {u: IndexPrice(cfg) for u, cfg in config.indices.items()}
        self.index_state: dict[str, IndexState] = {}
        self.basis = {s: BasisTracker() for s in self.specs}
        self.twaps = {s: Twap(spec.expiry_ms - spec.settlement_window_ms, spec.expiry_ms)
                      for s, spec in self.specs.items() if spec.expiry_ms is not None}
        self.premium: dict[str, list[int]] = {s: [0, 0] for s, sp in self.specs.items()
                                              if sp.kind == "perpetual"}
        self.next_funding_ms: dict[str, int] = {}
        self.funding_history: list[FundingPaid] = []
        self.settlement_history: list[Settled] = []
        self.record_fills = record_fills
        self.fills: dict[str, deque[dict[str, Any]]] = {}
        self.engine_events: list[tuple[str, Event]] = []
        self.now_ms = 0
        self._liq_n = 0
        # (account, symbol) -> (position side, take-profit mark, stop-loss mark): see set_tpsl.
        self.tpsl: dict[tuple[str, str], tuple[int, int | None, int | None]] = {}
        # Set by the shell to journal commands; None (tests, benchmarks, replay) records nothing.
        self.journal: CommandLog | None = None
        # Set by the shell to feed the market-data read model; None (the default) costs one test.
        self.tap: VenueTap | None = None
        self.recorded = 0  # commands recorded since the last Drain marker
        # Kill switches, circuit breakers, dead man's switches (exchange/controls.py); journaled.
        self.controls = MarketControls()

    def _log(self, cmd: VenueCommand) -> None:
        journal = self.journal
        if journal is not None:
            journal.record(cmd)
            self.recorded += 1

    def execute(self, cmd: VenueCommand) -> object:
        """Run one journaled command (replay); return what the public method returns."""
        t = type(cmd)
        if t is Place:
            # The journal only holds orders that passed `order_problem` (or, written by an
            # older version, ones it ran unchecked): run them exactly as they ran live.
            return self._place(cmd.symbol, cmd.order)  # type: ignore[union-attr]
        if t is CancelOrder:
            return self.cancel(cmd.symbol, cmd.id, cmd.account)  # type: ignore[union-attr]
        if t is CancelAllOrders:
            return self.cancel_all(cmd.symbol, cmd.account)  # type: ignore[union-attr, arg-type]
        if t is AmendOrder:
            return self.amend(cmd.symbol, cmd.amend)  # type: ignore[union-attr]
        if t is Drain:
            return self.drain()
        if t is ListInstrument:
            return self.list_instrument(cmd.spec)  # type: ignore[union-attr]
        return _DISPATCH[t](self, cmd)

    # ---------------------------------------------------------------- collateral

    def deposit(self, account: str, amount: int) -> None:
        """Move spot balance into exchange collateral."""
        _journalable(account, amount)
        _positive(amount)
        self.clearing.begin()
        self.clearing.deposit(account, amount)
        self._log(Deposit(account, amount))

    def withdraw(self, account: str, amount: int) -> RiskCode:
        """Move free collateral back to the spot balance."""
        _journalable(account, amount)
        self.clearing.begin()
        code = self.clearing.withdraw(account, amount)
        self._log(Withdraw(account, amount))
        return code

    def seed_insurance(self, amount: int) -> None:
        """Capitalise the insurance fund."""
        _journalable("insurance", amount)
        _positive(amount)
        self.clearing.begin()
        self.clearing.seed_insurance(amount)
        self._log(SeedInsurance(amount))

    # ---------------------------------------------------------------- orders

    def place(self, symbol: str, cmd: NewOrder) -> OrderResult:
        """Run an order through the pre-trade check, the book and settlement.

        Raises `InvalidCommand` (nothing changed, nothing journaled) for an order
        the journal could not hold; see `order_problem`.
        """
        problem = order_problem(cmd)
        if problem is None and not _journal_str(symbol):
            problem = ResultCode.INVALID_COMMAND, f"symbol was {_echo(symbol)}, must be a UTF-8 string"
        if problem is not None:
            raise InvalidCommand(*problem)
        return self._place(symbol, cmd)

    def _place(self, symbol: str, cmd: NewOrder) -> OrderResult:
        ch = self.clearing
        ch.begin()
        code, message = self._halted(symbol, cmd)
        if not code:
            worst = self._sweep_price(symbol, cmd) if symbol in self.books else None
            code, message = ch.check_new(symbol, cmd, worst)
        if self.journal is not None:
            self._log(Place(symbol, cmd))
        if code:
            return OrderResult(code, message, [])
        return OrderResult(RiskCode.OK, "", self._run(symbol, cmd))

    def _sweep_price(self, symbol: str, cmd: NewOrder) -> int | None:
        """Return the worst price an order that cannot rest (market, IOC, FOK) would trade at now.

        It walks the opposite side of the book, as the matching will in this very
        command, down to the order's limit or the band edge. None: the order may
        rest (its limit is the worst price), or the book cannot be walked exactly.
        """
        if cmd.type not in ("market", "limit") or cmd.stp is not None:
            return None
        if cmd.type == "limit" and cmd.tif not in ("IOC", "FOK"):
            return None
        book = self.books[symbol]
        buy = cmd.side == "buy"
        bound = cmd.price
        if bound is None:
            ref = book.reference_price
            if ref is None:
                return None
            width = ref * self.specs[symbol].band_bps // 10_000
            bound = ref + width if buy else max(1, ref - width)
        opp = book.asks if buy else book.bids
        need = cmd.qty
        cost = filled = 0
        keys = opp.keys
        for walked, i in enumerate(range(len(keys) - 1, -1, -1), 1):
            level = opp.levels[keys[i]]
            if (level.price > bound) if buy else (level.price < bound):
                break  # the rest is cancelled, never filled
            if walked > MAX_SWEEP_LEVELS:
                return bound  # too deep to walk: assume the band edge or the limit
            take = min(need, level.total)
            cost += take * level.price
            filled += take
            need -= take
            if need <= 0:
                break
        if filled == 0:
            return None
        # The average fill price, rounded against the trader: what the loss to the mark is.
        return -(-cost // filled) if buy else cost // filled
    def _halted(self, symbol: str, cmd: NewOrder) -> tuple[RiskCode, str]:
        """Refuse orders on an instrument past its expiry, and new risk on a stale index.

        The order's time is its own timestamp (ns) or, without one, the venue's
        clock; both are journaled, so a replay refuses the same orders.
        """
        spec = self.specs.get(symbol)
        if spec is None:
            return RiskCode.OK, ""  # check_new names the unknown instrument
        now_ms = max(self.now_ms, cmd.ts // 1_000_000)
        if self.controls.status:
            code, message = self.controls.refusal(symbol, now_ms)
            if code:
                return code, message
        if spec.expiry_ms is not None and now_ms >= spec.expiry_ms:
            return RiskCode.INSTRUMENT_NOT_TRADING, (
                f"{symbol} expired at {spec.expiry_ms} (now {now_ms}) and no longer trades")
        index = self.indices[spec.underlying]
        # An underlying nobody ever quoted is marked directly (set_mark: tests, replays of old
        # journals); one that is fed must be fresh at the order's time, checked on every order.
        if index.quotes and _index_stale(index, now_ms) and not self._reduces(symbol, cmd):
            cfg = index.config
            return RiskCode.INDEX_STALE, (
                f"{spec.underlying} index is stale at {now_ms}: fewer than {cfg.min_sources} of "
                f"{len(cfg.sources)} sources quoted within {cfg.staleness_ms} ms; only orders that "
                "reduce a position are accepted")
        return RiskCode.OK, ""

    def _reduces(self, symbol: str, cmd: NewOrder) -> bool:
        """Tell whether ``cmd`` can only shrink its account's position (risk-reducing)."""
        if cmd.reduce_only:
            return True
        acct = self.clearing.accounts.get(cmd.account)
        pos = None if acct is None else acct.positions.get(symbol)
        if pos is None:
            return False
        closable = max(0, -pos.size - pos.open_buy) if cmd.side == "buy" else max(0, pos.size - pos.open_sell)
        return cmd.qty <= closable

    def cancel(self, symbol: str, order_id: str, account: str | None) -> list[Event]:
        """Cancel a live order (the engine checks ownership when ``account`` is given)."""
        self._known(symbol)
        if not _journal_str(order_id) or not (account is None or _journal_str(account)):
            raise InvalidCommand(ResultCode.BAD_ID, f"order id was {_echo(order_id)}, "
                                 "must be a UTF-8 string")
        self._cancel_allowed(symbol)
        self.clearing.begin()
        events = self._run(symbol, Cancel(order_id, account, self.now_ms * NS_PER_MS))
        self._log(CancelOrder(symbol, order_id, account))
        return events

    def cancel_all(self, symbol: str, account: str) -> list[Event]:
        """Cancel every live order (resting and untriggered stops) of ``account`` on ``symbol``."""
        self._known(symbol)
        if not _journal_str(account):
            raise InvalidCommand(ResultCode.INVALID_COMMAND, f"account was {_echo(account)}, "
                                 "must be a UTF-8 string")
        self._cancel_allowed(symbol)
        self.clearing.begin()
        events = self._run(symbol, CancelAll(account, self.now_ms * NS_PER_MS))
        self._log(CancelAllOrders(symbol, account))
        return events

    def _cancel_allowed(self, symbol: str) -> None:
        """Raise `MarketClosed` (nothing changed, nothing journaled) for a cancel on a halted market."""
        if self.controls.status:
            refused = self.controls.cancel_refusal(symbol, self.now_ms)
            if refused is not None:
                raise refused

    def amend(self, symbol: str, cmd: Amend) -> OrderResult:
        """Amend a resting order; a larger quantity or price needs margin for the difference.

        Raises `InvalidCommand` (nothing changed) for an amend the journal could not hold.
        """
        self._known(symbol)
        problem = amend_problem(cmd)
        if problem is not None:
            raise InvalidCommand(*problem)
        result = self._amend(symbol, cmd)
        self._log(AmendOrder(symbol, cmd))
        return result

    def _amend(self, symbol: str, cmd: Amend) -> OrderResult:
        ch = self.clearing
        ch.begin()
        res = ch.orders.get((symbol, cmd.id))
        book_order = self.books[symbol].orders.get(cmd.id)
        if res is None or book_order is None or (cmd.account and cmd.account != res.account):
            return OrderResult(RiskCode.OK, "", self._run(symbol, cmd))
        new_qty = book_order.qty if cmd.qty is None else cmd.qty
        new_price = book_order.price if cmd.price is None else cmd.price
        side: Side = "buy" if res.side > 0 else "sell"
        probe = NewOrder(id=cmd.id, account=res.account, side=side, qty=new_qty, price=new_price,
                         reduce_only=res.reduce_only)
        old = (res.account, res.payer, res.side, res.qty, res.im, res.price, res.reduce_only)
        ch.release(symbol, cmd.id, res.qty)
        # Past expiry nothing may change; on a stale index only a smaller order at its price may.
        shrink_only = new_qty <= book_order.qty and new_price == book_order.price
        probe_at = msgspec.structs.replace(probe, ts=cmd.ts)
        code, message = self._halted(symbol, probe_at)
        if code == RiskCode.INDEX_STALE and shrink_only:
            code, message = RiskCode.OK, ""
        if not code:
            code, message = ch.check_new(symbol, probe)
            if not code and probe.reduce_only and not PositionHook(ch, symbol).allows_reduce_only(
                    res.account, side, new_qty):
                ch.release(symbol, cmd.id, new_qty)
                code, message = RiskCode.REDUCE_ONLY_EXCEEDS_POSITION, (
                    f"reduce-only orders would total more than the {symbol} position after this amend")
        # Put the old reservation back exactly (re-checking it could fail at today's marks).
        if code:
            ch.reserve(symbol, cmd.id, *old)
            return OrderResult(code, message, [])
        events = self._run(symbol, cmd)
        if any(type(e) is Rejected for e in events):
            ch.release(symbol, cmd.id, new_qty)
            ch.reserve(symbol, cmd.id, *old)
        else:
            self._sync_amended(symbol, cmd.id, events)
        return OrderResult(RiskCode.OK, "", events)

    def _known(self, symbol: str) -> None:
        if symbol not in self.books:
            raise KeyError(f"symbol was {symbol!r}, not listed")

    def _sync_amended(self, symbol: str, order_id: str, events: list[Event]) -> None:
        # An amend that crossed the book traded part of the order; the trades already
        # released their share. A fully filled order has no reservation left.
        for e in events:
            if type(e) is Amended:
                res = self.clearing.orders.get((symbol, order_id))
                if res is not None and res.qty > e.qty:
                    self.clearing.release(symbol, order_id, res.qty - e.qty)

    def _run(self, symbol: str, cmd: Any) -> list[Event]:
        book = self.books[symbol]
        book.process(cmd)
        events = book.take_events()
        self.clearing.apply(symbol, events)
        if self.record_fills:
            self._record(symbol, events)
        if self.tap is not None:
            self.tap.ran(symbol, cmd, events)
        if self.controls.breakers and symbol in self.controls.breakers:
            self._feed_breaker(symbol, events)
        if self.clearing.moved:
            events = events + self._after_fills()
        return events

    def _feed_breaker(self, symbol: str, events: list[Event]) -> None:
        for e in events:
            if type(e) is Trade:
                self.controls.on_trade(symbol, max(self.now_ms, e.ts // NS_PER_MS), e.price)

    def _after_fills(self) -> list[Event]:
        """Keep every live order of the accounts whose positions just moved within the rules.

        Reduce-only orders shrink (resting) or are cancelled (stops, and any on
        the side that would now open) so their total never exceeds the position;
        reservations are recomputed on the new position; and risk-increasing
        orders the account can no longer afford are cancelled, newest first.
        """
        ch = self.clearing
        out: list[Event] = []
        while ch.moved:
            account, symbol = min(ch.moved)
            ch.moved.discard((account, symbol))
            if account not in ch.accounts or not ch.trading.get(symbol, False):
                continue
            attached = self.tpsl.get((account, symbol))
            if attached is not None:
                pos = ch.accounts[account].positions.get(symbol)
                if pos is None or pos.size * attached[0] <= 0:  # closed or flipped: it goes
                    del self.tpsl[(account, symbol)]
            for cmd in self._reduce_only_fixes(account, symbol):
                events = self._run(symbol, cmd)
                if type(cmd) is Amend:
                    self._sync_amended(symbol, cmd.id, events)
                out.extend(events)
            ch.rereserve(account, symbol)
            for cmd in self._unaffordable(account, symbol):
                out.extend(self._run(symbol, cmd))
        return out

    def _reduce_only_fixes(self, account: str, symbol: str) -> list[Any]:
        ch = self.clearing
        reduce_only = ch.reduce_only_index.get((account, symbol))
        if not reduce_only:
            return []
        book = self.books[symbol]
        pos = ch.accounts[account].positions.get(symbol)
        size = 0 if pos is None else pos.size
        live = [(self._oid(book, i), i) for i in reduce_only]
        cmds: list[Any] = []
        room = {1: max(0, -size), -1: max(0, size)}
        for _, order_id in sorted(live):
            res = ch.orders[(symbol, order_id)]
            left = room[res.side]
            if left >= res.qty:
                room[res.side] = left - res.qty
            elif left > 0 and order_id in book.orders:
                cmds.append(Amend(order_id, qty=left, account=account, ts=self.now_ms * NS_PER_MS))
                room[res.side] = 0
            else:
                cmds.append(Cancel(order_id, account, self.now_ms * NS_PER_MS))
        return cmds

    @staticmethod
    def _oid(book: OrderBook, order_id: str) -> int:
        o = book.orders.get(order_id)
        if o is not None:
            return int(o.oid)
        s = book.stops.get(order_id)
        return int(s.oid) if s is not None else 0

    def _unaffordable(self, account: str, symbol: str) -> list[Any]:
        ch = self.clearing
        ids = ch.order_index.get((account, symbol))
        if not ids:
            return []
        payer = ch.accounts[ch.orders[(symbol, next(iter(ids)))].payer]
        short = -ch.available(payer)  # risk-increasing orders must fit above initial margin
        below = -ch.free_above_maintenance(payer)  # and nothing may fill below maintenance
        if short <= 0 and below <= 0:
            return []
        book = self.books[symbol]
        cmds: list[Any] = []
        for _, order_id in sorted(((self._oid(book, i), i) for i in ids), reverse=True):
            res = ch.orders[(symbol, order_id)]
            if res.im <= 0 or (res.reduce_only and below <= 0):
                continue
            cmds.append(Cancel(order_id, account, self.now_ms * NS_PER_MS))
            short -= res.im
            below -= res.im
            if short <= 0 and below <= 0:
                break
        return cmds

    def _record(self, symbol: str, events: list[Event]) -> None:
        for e in events:
            self.engine_events.append((symbol, e))
            if type(e) is Trade:
                for account, order_id, side in (
                    (e.taker_account, e.taker, e.taker_side),
                    (e.maker_account, e.maker, "sell" if e.taker_side == "buy" else "buy"),
                ):
                    kept = self.fills.setdefault(account, deque(maxlen=MAX_FILLS_KEPT))
                    kept.append({"symbol": symbol, "order_id": order_id, "side": side,
                                 "price": e.price, "qty": e.qty, "seq": e.seq, "ts": e.ts,
                                 "liquidity": "taker" if order_id == e.taker else "maker"})
        if len(self.engine_events) > 100_000:
            del self.engine_events[:50_000]

    # ---------------------------------------------------------------- prices

    def quote(self, underlying: str, source: str, price: int, ts_ms: int) -> None:
        """Record a price source's quote (it counts at the next ``tick``)."""
        if not _journal_str(source) or not _journal_int(price) or not _journal_int(ts_ms):
            raise InvalidCommand(ResultCode.INVALID_COMMAND,
                                 f"quote source {_echo(source)} / price {_echo(price)} cannot be journaled")
        self.indices[underlying].quote(source, price, ts_ms)
        self._log(Quote(underlying, source, price, ts_ms))

    def tick(self, underlying: str, now_ms: int) -> IndexState:
        """Recompute the index; when fresh, publish marks and liquidate crossed accounts."""
        index = self.indices[underlying]
        state = self._tick(index, underlying, now_ms)
        self._log(Tick(underlying, now_ms))
        return state

    def _tick(self, index: IndexPrice, underlying: str, now_ms: int) -> IndexState:
        self.now_ms = now_ms
        state = index.compute(now_ms)
        self.index_state[underlying] = state
        if state.price is None:
            return state
        ch = self.clearing
        ch.begin()
        ch.set_index(underlying, state.price)
        for symbol, spec in sorted(self.specs.items()):
            if spec.underlying != underlying or not ch.trading[symbol]:
                continue
            twap = self.twaps.get(symbol)
            if twap is not None:
                twap.sample(now_ms, state.price)
            if spec.expiry_ms is not None and now_ms >= spec.expiry_ms:
                continue  # expired, settling: no new mark can trigger stops or liquidations
            mark = self._mark(symbol, spec, state.price, now_ms)
            if symbol in self.premium:
                acc = self.premium[symbol]
                acc[0] += (mark - state.price) * PPM // state.price
                acc[1] += 1
                self.next_funding_ms.setdefault(symbol, self._next_boundary(spec, now_ms))
            self._set_mark(symbol, mark, state.price)
        return state

    def _mark(self, symbol: str, spec: InstrumentSpec, index: int, now_ms: int) -> int:
        if spec.is_option:
            return option_mark(spec, index, now_ms)
        book = self.books[symbol]
        bid, ask = book.best_bid(), book.best_ask()
        mid = (bid + ask) // 2 if bid is not None and ask is not None else None
        return linear_mark(spec, index, self.basis[symbol].update(index, mid))

    def set_mark(self, symbol: str, mark: int, index: int) -> None:
        """Publish a mark: liquidate the accounts it crosses, move the band, fire mark stops."""
        self._known(symbol)
        _positive(mark)
        self._set_mark(symbol, mark, index)
        self._log(SetMark(symbol, mark, index))

    def _set_mark(self, symbol: str, mark: int, index: int) -> None:
        ch = self.clearing
        ch.events.append(MarkSet(ch.seq, symbol, mark, index))
        unsafe = ch.set_mark(symbol, mark)
        # Before anything trades at the new mark: resting orders it moved through are re-priced
        # (a liquidation order must not fill against a maker who cannot pay for that fill).
        self._recheck_crossed_orders(symbol, mark)
        for account_id in unsafe:
            self._liquidate(account_id)
        self._run(symbol, SetReference(mark, self.now_ms * NS_PER_MS))
        self._run(symbol, PriceUpdate("mark", mark, self.now_ms * NS_PER_MS))
        if self.tpsl:
            self._fire_tpsl(symbol, mark)

    def _recheck_crossed_orders(self, symbol: str, mark: int) -> None:
        """Re-price the resting orders the new mark moved *through* (bids above it, asks below).

        Their fill would now be a loss against the mark that their reservation
        may not cover; their accounts' reservations are recomputed and what
        they can no longer afford is cancelled. Only the crossed levels at the
        top of each side are walked (normally none).
        """
        book = self.books[symbol]
        ch = self.clearing
        accounts: set[str] = set()
        for side, sign in ((book.bids, 1), (book.asks, -1)):
            keys = side.keys
            for i in range(len(keys) - 1, -1, -1):
                level = side.levels[keys[i]]
                if sign * (level.price - mark) <= 0:  # bids above the mark, asks below it
                    break
                o = level.head
                while o is not None:
                    accounts.add(o.account)
                    o = o.next
        for account in sorted(accounts):
            if (account, symbol) in ch.order_index:
                ch.moved.add((account, symbol))
        if ch.moved:
            self._after_fills()

    @staticmethod
    def _next_boundary(spec: InstrumentSpec, now_ms: int) -> int:
        interval = spec.funding_interval_ms
        return (now_ms // interval + 1) * interval

    # ---------------------------------------------------------------- position management (issue 14)

    @staticmethod
    def _unjournalable(account: object, symbol: object, *numbers: object) -> tuple[RiskCode, str] | None:
        """Refuse (before anything is journaled) values the journal could not decode again."""
        if not _journal_str(account) or not _journal_str(symbol):
            return RiskCode.UNKNOWN_ACCOUNT, f"account/symbol were {_echo(account)}/{_echo(symbol)}"
        for n in numbers:
            if not _journal_int(n, optional=True):
                return RiskCode.INVALID_AMOUNT, f"value was {_echo(n)}, must be a 64-bit integer"
        return None

    def adjust_isolated_margin(self, account: str, symbol: str, amount: int) -> tuple[RiskCode, str]:
        """Add (> 0) or remove (< 0) margin of an isolated position (see Clearinghouse)."""
        problem = self._unjournalable(account, symbol, amount)
        if problem is not None:
            return problem
        self.clearing.begin()
        result = self.clearing.adjust_isolated_margin(account, symbol, amount)
        self._log(AdjustIsolatedMargin(account, symbol, amount))
        return result

    def set_leverage(self, account: str, symbol: str, leverage: int) -> tuple[RiskCode, str]:
        """Choose the leverage (initial-margin rate) of an account on a linear instrument."""
        problem = self._unjournalable(account, symbol, leverage)
        if problem is not None:
            return problem
        self.clearing.begin()
        result = self.clearing.set_leverage(account, symbol, leverage)
        self._log(SetLeverage(account, symbol, leverage))
        return result

    def set_tpsl(self, account: str, symbol: str, take_profit: int | None,
                 stop_loss: int | None) -> tuple[RiskCode, str]:
        """Attach take-profit / stop-loss mark prices to the account's position (both None: detach).

        They belong to the position, not to orders: when the mark reaches either,
        the whole position *as it is then* is closed by one reduce-only market
        order and both legs go (one cancels the other); when the position is
        closed or flips first, they go too. Nothing is reserved and nothing can
        ever open a position.
        """
        problem = self._unjournalable(account, symbol, take_profit, stop_loss)
        if problem is not None:
            return problem
        self.clearing.begin()
        result = self._set_tpsl(account, symbol, take_profit, stop_loss)
        self._log(SetTpSl(account, symbol, take_profit, stop_loss))
        return result

    def _set_tpsl(self, account: str, symbol: str, take_profit: int | None,
                  stop_loss: int | None) -> tuple[RiskCode, str]:
        ch = self.clearing
        acct = ch.accounts.get(account)
        pos = None if acct is None else acct.positions.get(symbol)
        if symbol not in self.specs:
            return RiskCode.UNKNOWN_INSTRUMENT, f"instrument was {symbol!r}, not listed"
        if take_profit is None and stop_loss is None:
            self.tpsl.pop((account, symbol), None)
            return RiskCode.OK, ""
        if pos is None or pos.size == 0:
            return RiskCode.INVALID_AMOUNT, f"account {account!r} has no {symbol} position to attach to"
        side = 1 if pos.size > 0 else -1
        mark = ch.marks[symbol]
        legs = (("take_profit", take_profit, side > 0), ("stop_loss", stop_loss, side < 0))
        for name, price, above in legs:
            if price is None:
                continue
            if price <= 0 or price % self.specs[symbol].tick_size:
                return RiskCode.INVALID_AMOUNT, f"{name} was {price}, must be a positive tick multiple"
            if (price <= mark) if above else (price >= mark):
                where = "above" if above else "below"
                return RiskCode.INVALID_AMOUNT, f"{name} was {price}, must be {where} the mark {mark}"
        self.tpsl[(account, symbol)] = (side, take_profit, stop_loss)
        return RiskCode.OK, ""

    def _fire_tpsl(self, symbol: str, mark: int) -> None:
        ch = self.clearing
        fired = []
        for (account, sym), (side, tp, sl) in sorted(self.tpsl.items()):
            if sym != symbol:
                continue
            hit_tp = tp is not None and (mark >= tp if side > 0 else mark <= tp)
            hit_sl = sl is not None and (mark <= sl if side > 0 else mark >= sl)
            if hit_tp or hit_sl:
                fired.append(account)
        for account in fired:
            del self.tpsl[(account, symbol)]  # one cancels the other
            acct = ch.accounts.get(account)
            pos = None if acct is None else acct.positions.get(symbol)
            if pos is None or pos.size == 0:
                continue
            self._liq_n += 1
            cmd = NewOrder(id=f"tpsl.{ch.seq}.{self._liq_n}", account=account,
                           side="sell" if pos.size > 0 else "buy", qty=abs(pos.size), type="market",
                           reduce_only=True, ts=self.now_ms * NS_PER_MS)
            code, message = self.controls.refusal(symbol, self.now_ms)
            if not code:
                code, message = ch.check_new(symbol, cmd, self._sweep_price(symbol, cmd))
            if code:
                ch.events.append(TpSlRefused(ch.seq, account, symbol, int(code), message))
                continue
            self._run(symbol, cmd)

    # ---------------------------------------------------------------- liquidation

    def liquidate(self, account_id: str) -> None:
        """Cancel orders, then partial, then full liquidation orders, then insurance/ADL."""
        if account_id not in self.clearing.accounts:
            raise KeyError(f"account was {account_id!r}, has no collateral")
        self._liquidate(account_id)
        self._log(Liquidate(account_id))

    def _liquidate(self, account_id: str) -> None:
        ch = self.clearing
        acct = ch.accounts[account_id]
        equity, _, mm = ch.valuation(acct)
        if equity >= mm:
            return
        ch.events.append(LiquidationStarted(ch.seq, account_id, equity, mm,
                                            "partial" if equity > 0 else "full"))
        for symbol in sorted(s for s, p in acct.positions.items() if p.open_buy or p.open_sell):
            self._run(symbol, CancelAll(account_id, self.now_ms * NS_PER_MS))
        ch.liquidating = account_id
        try:
            for stage in ("partial", "full"):
                equity, _, mm = ch.valuation(acct)
                if equity >= mm:
                    break
                full = stage == "full" or equity <= 0
                for symbol in sorted(s for s, p in acct.positions.items() if p.size):
                    self._liquidation_order(account_id, symbol, full, equity, mm)
        finally:
            ch.liquidating = None
        equity, _, mm = ch.valuation(acct)
        if equity < mm and any(p.size for p in acct.positions.values()):
            ch.deleverage(acct)
        elif not any(p.size for p in acct.positions.values()):
            ch.settle_losses(acct)

    def _liquidation_order(self, account_id: str, symbol: str, full: bool, equity: int, mm: int) -> None:
        ch = self.clearing
        cmd = self.build_liquidation_order(account_id, symbol, full, equity, mm)
        ch.events.append(LiquidationOrder(ch.seq, account_id, symbol, cmd.id, cmd.side, cmd.qty,
                                          cmd.price or 0))
        code, _ = ch.check_new(symbol, cmd, liquidation=True)
        assert code == RiskCode.OK, f"liquidation order refused by risk: {code}"
        self._run(symbol, cmd)

    def build_liquidation_order(self, account_id: str, symbol: str, full: bool, equity: int,
                                mm: int) -> NewOrder:
        """Return the IOC liquidation order for one position (bankruptcy-price limit)."""
        ch = self.clearing
        acct = ch.accounts[account_id]
        pos = acct.positions[symbol]
        spec = self.specs[symbol]
        size = abs(pos.size)
        if full:
            qty = size
        else:
            # Close the fraction f = 1 - (9/10) * equity / MM of the position, rounded up to lots.
            num = mm * PARTIAL_TARGET_DEN - equity * PARTIAL_TARGET_NUM
            qty = min(size, -(-size * num // (mm * PARTIAL_TARGET_DEN)))
            lot = spec.lot_size
            qty = min(size, -(-qty // lot) * lot)
        # The full stage may trade past the bankruptcy price by at most the liquidation fee
        # rate of the position's notional, and only as far as the insurance fund can pay.
        cap = size * ch.marks[symbol] // spec.contracts_per_unit * spec.liquidation_fee_ppm // PPM
        limit = ch.bankruptcy_limit(acct, symbol, min(ch.insurance, cap) if full else 0)
        limit = self._inside_band(symbol, limit)
        self._liq_n += 1
        side: Side = "sell" if pos.size > 0 else "buy"
        return NewOrder(id=f"liq.{ch.seq}.{self._liq_n}", account=account_id, side=side, qty=qty,
                        type="limit", price=limit, tif="IOC", reduce_only=True,
                        ts=self.now_ms * NS_PER_MS)

    def _inside_band(self, symbol: str, price: int) -> int:
        book = self.books[symbol]
        spec = self.specs[symbol]
        ref = book.reference_price
        if ref is None:
            return price
        width = ref * spec.band_bps // 10_000
        tick = spec.tick_size
        lo = -(-max(1, ref - width) // tick) * tick
        hi = (ref + width) // tick * tick
        return min(max(price, lo), hi)

    # ---------------------------------------------------------------- funding, expiry

    def advance(self, now_ms: int) -> None:
        """Run every funding interval and expiry due at ``now_ms``, in time order, each at its time.

        Missed funding intervals (the scheduler was late, or the server was
        down) are settled one by one at their own boundary time, in order
        with expiries; since every command runs only after the ones due
        before it (the shell calls this before each command), the positions
        and mark each interval sees are those in force at its boundary.
        """
        self.now_ms = now_ms
        tried: set[str] = set()
        for _ in range(MAX_CATCH_UP):
            due = self._next_due(now_ms, tried)
            if due is None:
                break
            at, kind, symbol = due
            if kind == 0:
                self._fund(symbol, at)
                self.next_funding_ms[symbol] = at + self.specs[symbol].funding_interval_ms
            else:
                tried.add(symbol)  # a settlement still pending is retried at the next advance
                self._expire(symbol, at, now_ms)
        if self.controls.deadman:
            self._fire_deadman(now_ms)
        self._log(Advance(now_ms))

    def _next_due(self, now_ms: int, tried: set[str] | None = None) -> tuple[int, int, str] | None:
        """Return the earliest (time, 0 funding | 1 expiry, symbol) due at ``now_ms``, if any.

        An expiry is due while the instrument trades, and again, once halted with its
        settlement pending (no index), as soon as its underlying's index is fresh.
        """
        best: tuple[int, int, str] | None = None
        trading = self.clearing.trading
        for symbol, at in self.next_funding_ms.items():
            if at <= now_ms and trading[symbol] and (best is None or (at, 0, symbol) < best):
                best = (at, 0, symbol)
        settled: set[str] | None = None
        for symbol, spec in self.specs.items():
            expiry = spec.expiry_ms
            if expiry is None or expiry > now_ms or (tried and symbol in tried):
                continue
            if not trading[symbol]:
                if settled is None:
                    settled = {e.symbol for e in self.settlement_history}
                if symbol in settled or self.indices[spec.underlying].compute(now_ms).stale:
                    continue
            if best is None or (expiry, 1, symbol) < best:
                best = (expiry, 1, symbol)
        return best

    def due(self, now_ms: int) -> bool:
        """Tell whether a funding interval, an expiry or a dead man's switch is due at ``now_ms``."""
        return self._next_due(now_ms) is not None or self.controls.deadman_due(now_ms)

    # ---------------------------------------------------------------- kill switches

    def set_market_status(self, symbol: str, mode: str, until_ms: int = 0, reason: str = "") -> None:
        """Put ``symbol`` in ``mode`` (open, cancel_only, halted); see exchange/controls.py."""
        self._known(symbol)
        if not _journal_str(reason):
            raise InvalidCommand(ResultCode.INVALID_COMMAND, "reason must be a UTF-8 string")
        self.controls.set_status(symbol, mode, until_ms, reason)
        self._log(SetMarketStatus(symbol, mode, until_ms, reason))

    def set_breaker(self, symbol: str, max_move_bps: int, window_ms: int, cooldown_ms: int) -> None:
        """Configure (``max_move_bps`` > 0) or remove (0) the max-move circuit breaker of ``symbol``."""
        self._known(symbol)
        self.controls.set_breaker(symbol, max_move_bps, window_ms, cooldown_ms)
        self._log(SetBreaker(symbol, max_move_bps, window_ms, cooldown_ms))

    def arm_deadman(self, account: str, timeout_ms: int, now_ms: int) -> int:
        """Arm (re-arm; 0 disarms) ``account``'s dead man's switch at ``now_ms``; return its deadline."""
        if not _journal_str(account) or not _journal_int(now_ms):
            raise InvalidCommand(ResultCode.INVALID_COMMAND, f"account {_echo(account)} / now_ms "
                                 f"{_echo(now_ms)} cannot be journaled")
        deadline = self.controls.arm(account, timeout_ms, now_ms)
        self._log(ArmDeadman(account, timeout_ms, now_ms))
        return deadline

    def _fire_deadman(self, now_ms: int) -> None:
        """Cancel every live order (cross and isolated, every market) of each account past its deadline."""
        for account in self.controls.expired_accounts(now_ms):
            prefix = account + ISOLATED_SEP
            for symbol, book in sorted(self.books.items()):
                owners = {o.account for o in book.orders.values()} | {o.account for o in book.stops.values()}
                for owner in sorted(o for o in owners if o == account or o.startswith(prefix)):
                    self.clearing.begin()
                    self._run(symbol, CancelAll(owner, now_ms * NS_PER_MS))

    def funding_rate(self, symbol: str) -> int:
        """Return the rate of the current interval: premium + clamp(interest - premium), capped."""
        spec = self.specs[symbol]
        total, count = self.premium[symbol]
        premium = total // count if count else 0
        rate = premium + max(-INTEREST_CLAMP_PPM, min(INTEREST_CLAMP_PPM, spec.interest_ppm - premium))
        return max(-spec.funding_cap_ppm, min(spec.funding_cap_ppm, rate))

    def fund(self, symbol: str, ts_ms: int) -> None:
        """Settle one funding interval of a perpetual."""
        if symbol not in self.premium:
            raise KeyError(f"symbol was {symbol!r}, not a listed perpetual")
        self._fund(symbol, ts_ms)
        self._log(Fund(symbol, ts_ms))

    def _fund(self, symbol: str, ts_ms: int) -> None:
        ch = self.clearing
        if symbol not in ch.marks:
            return
        ch.begin()
        rate = self.funding_rate(symbol)
        self.premium[symbol] = [0, 0]
        if rate:
            ch.fund(symbol, rate, ts_ms)
            self.funding_history.append(ch.events[-1])  # type: ignore[arg-type]
        # Funding moved collateral: anyone it pushed below maintenance is liquidated now.
        ch.refresh_bands()
        for account_id in sorted(ch.holders[symbol]):
            self._liquidate(account_id)

    def expire(self, symbol: str, now_ms: int) -> RiskCode:
        """Stop trading, cancel every order, and settle at the TWAP of the index.

        Returns ``SETTLEMENT_PENDING`` when no index was in force in the window
        and none is fresh now: the instrument stays halted with its positions
        open until a later ``advance``/``expire`` finds a fresh index.
        """
        if symbol not in self.twaps:
            raise KeyError(f"symbol was {symbol!r}, not a listed dated instrument")
        code = self._expire(symbol, now_ms, now_ms)
        self._log(Expire(symbol, now_ms))
        return code

    # ---------------------------------------------------------------- listing

    def list_instrument(self, spec: InstrumentSpec) -> bool:
        """List a new instrument (idempotent: an already listed symbol changes nothing)."""
        if spec.symbol in self.specs:
            return False
        if spec.underlying not in self.indices:
            raise ValueError(f"{spec.symbol}: underlying {spec.underlying} is not indexed")
        spec.engine_instrument().check()
        self._add(spec)
        self.listed[spec.symbol] = spec
        self._log(ListInstrument(spec))
        return True

    def _add(self, spec: InstrumentSpec) -> None:
        s, ch = spec.symbol, self.clearing
        self.specs[s] = spec  # shared with the clearing house
        ch.trading[s] = True
        ch.holders[s] = set()
        ch.liq_index[s] = LiquidationIndex()
        self.books[s] = OrderBook(spec.engine_instrument(), reduce_only_hook=PositionHook(ch, s))
        self.basis[s] = BasisTracker()
        if spec.expiry_ms is not None:
            self.twaps[s] = Twap(spec.expiry_ms - spec.settlement_window_ms, spec.expiry_ms)
        if spec.kind == "perpetual":
            self.premium[s] = [0, 0]

    def delistable(self, symbol: str) -> bool:
        """Tell whether ``symbol`` was listed at run time, has settled, and nothing refers to it."""
        ch = self.clearing
        if symbol not in self.listed or ch.trading[symbol] or ch.holders[symbol]:
            return False
        book = self.books[symbol]
        if book.orders or book.stops or any(s == symbol for s, _ in ch.orders):
            return False
        return not any(symbol in a.positions and not a.positions[symbol].idle() for a in ch.accounts.values())

    def delist(self, symbol: str) -> None:
        """Remove a settled, empty instrument that the calendar listed (its settlement stays in history)."""
        if not self.delistable(symbol):
            raise ValueError(f"symbol was {symbol!r}: not a settled, empty, calendar-listed instrument")
        ch = self.clearing
        for acct in ch.accounts.values():
            if symbol in acct.positions:
                del acct.positions[symbol]
                acct.cache_version = -1
        for table in (ch.trading, ch.holders, ch.liq_index, ch.marks, self.specs, self.listed, self.books,
                      self.basis, self.twaps, self.premium, self.next_funding_ms):
            table.pop(symbol, None)
        ch.version += 1
        self._log(Delist(symbol))

    def settlement_price(self, symbol: str, now_ms: int) -> int | None:
        """Return the settlement price of an expired instrument, or None while there is none.

        The time-weighted index of the window (including the value in force when it
        opened); failing that, the index fresh *now* (a delayed settlement). Never the
        instrument's own mark: for an option that is its premium, not the underlying.
        """
        spec = self.specs[symbol]
        staleness = self.config.indices[spec.underlying].staleness_ms
        twap = self.twaps[symbol].price(staleness)
        if twap is None:
            twap = self.indices[spec.underlying].compute(now_ms).price
        return None if twap is None else spec.round_to_tick(twap)

    def _expire(self, symbol: str, at_ms: int, now_ms: int) -> RiskCode:
        """Settle ``symbol``, which expired at ``at_ms``; ``now_ms``: when (a delayed one's index)."""
        ch = self.clearing
        ch.begin()
        if any(e.symbol == symbol for e in self.settlement_history):
            return RiskCode.OK
        book = self.books[symbol]
        owners = sorted({o.account for o in book.orders.values()} | {s.account for s in book.stops.values()})
        for account in owners:
            self._run(symbol, CancelAll(account, at_ms * NS_PER_MS))
        price = self.settlement_price(symbol, now_ms)
        if price is None:
            if ch.trading[symbol]:
                ch.trading[symbol] = False  # halted: nothing trades an instrument past expiry
                ch.events.append(SettlementDelayed(ch.seq, symbol, "index_unavailable", at_ms))
            return RiskCode.SETTLEMENT_PENDING
        ch.settle(symbol, price, at_ms if ch.trading[symbol] else now_ms)
        self.settlement_history.append(ch.events[-1])  # type: ignore[arg-type]
        return RiskCode.OK

    # ---------------------------------------------------------------- state

    def state(self) -> VenueState:
        """Return the canonical state; only valid between batches (after ``drain()``)."""
        return VenueState(
            now_ms=self.now_ms, liq_n=self._liq_n,
            books={s: b.state() for s, b in sorted(self.books.items())},
            clearing=self.clearing.state(),
            prices=PriceState(
                quotes={u: dict(sorted(i.quotes.items())) for u, i in sorted(self.indices.items())},
                index_state=[IndexStateRecord(u, st.price, st.fresh_sources, st.ts_ms)
                             for u, st in sorted(self.index_state.items())],
                basis={s: (b.basis, b.initialised) for s, b in sorted(self.basis.items())},
                twaps={s: list(t.samples) for s, t in sorted(self.twaps.items())},
                premium={s: (p[0], p[1]) for s, p in sorted(self.premium.items())},
                next_funding_ms=dict(sorted(self.next_funding_ms.items()))),
            funding_history=list(self.funding_history),
            settlement_history=list(self.settlement_history),
            fills={a: [FillRecord(**f) for f in kept] for a, kept in sorted(self.fills.items())},
            listed=[spec for _, spec in sorted(self.listed.items())],
            tpsl=[TpSlRecord(a, s, *t) for (a, s), t in sorted(self.tpsl.items())],
        )

    def state_hash(self) -> str:
        """Return the SHA-256 (hex) of the canonical msgpack encoding of ``state()`` (and controls).

        Kill-switch state is hashed only once any was set, so venues that never used one
        (and their snapshots) keep the hash they always had.
        """
        h = hashlib.sha256(msgspec.msgpack.encode(self.state()))
        if not self.controls.empty():
            h.update(msgspec.msgpack.encode(self.controls.state()))
        return h.hexdigest()

    def controls_state(self) -> ControlsState | None:
        """Return the kill-switch state for a snapshot (None: nothing was ever set)."""
        return None if self.controls.empty() else self.controls.state()

    @classmethod
    def from_state(cls, config: ExchangeConfig, state: VenueState, record_fills: bool = True) -> Venue:
        """Rebuild a venue from ``state()`` output under ``config`` (which may list more instruments)."""
        v = cls(config, state.clearing.namespace, record_fills)
        for spec in state.listed:
            v._add(spec)
            v.listed[spec.symbol] = spec
        ch = v.clearing = Clearinghouse.from_state(v.specs, state.clearing)
        for symbol, book in state.books.items():
            v.books[symbol] = OrderBook.from_state(book, reduce_only_hook=PositionHook(ch, symbol))
        for symbol in v.books:
            hook = v.books[symbol].reduce_only_hook
            if isinstance(hook, PositionHook):
                hook.clearing = ch
        v.now_ms, v._liq_n = state.now_ms, state.liq_n
        p = state.prices
        for underlying, quotes in p.quotes.items():
            v.indices[underlying].quotes = {src: (q[0], q[1]) for src, q in quotes.items()}
        v.index_state = {r.underlying: IndexState(r.underlying, r.price, r.fresh_sources, r.ts_ms)
                         for r in p.index_state}
        for symbol, (basis, initialised) in p.basis.items():
            v.basis[symbol] = BasisTracker(basis, initialised)
        for symbol, samples in p.twaps.items():
            v.twaps[symbol].samples = [(ts, px) for ts, px in samples]
        for symbol, (total, count) in p.premium.items():
            v.premium[symbol] = [total, count]
        v.next_funding_ms = dict(p.next_funding_ms)
        v.funding_history = list(state.funding_history)
        v.settlement_history = list(state.settlement_history)
        for account, kept in state.fills.items():
            v.fills[account] = deque((msgspec.structs.asdict(f) for f in kept), maxlen=MAX_FILLS_KEPT)
        v.tpsl = {(r.account, r.symbol): (r.side, r.take_profit, r.stop_loss) for r in state.tpsl}
        return v

    # ---------------------------------------------------------------- output

    def drain(self) -> tuple[list[Posting], list[RiskEvent]]:
        """Return (and clear) the postings and clearing events produced so far.

        With a journal attached, a ``Drain`` marker closes the batch of
        commands recorded since the previous one (nothing recorded: no marker).
        """
        if self.recorded:
            self.recorded = 0
            self._log(Drain())
            self.recorded = 0
        postings, events = self.clearing.drain()
        if self.tap is not None:
            self.tap.drained(events)
        return postings, events


def _index_stale(index: IndexPrice, now_ms: int) -> bool:
    """``index.compute(now_ms).stale`` without the median: fewer than min_sources fresh quotes.

    Runs on every order; the same freshness rule as ``IndexPrice.compute``.
    """
    cfg = index.config
    limit = cfg.staleness_ms
    fresh = 0
    for _, ts in index.quotes.values():
        if 0 <= now_ms - ts <= limit:
            fresh += 1
    return fresh < cfg.min_sources


def _journalable(account: str, amount: int) -> None:
    if not _journal_str(account) or not _journal_int(amount):
        raise InvalidCommand(ResultCode.INVALID_COMMAND, f"account {_echo(account)} / amount "
                             f"{_echo(amount)} cannot be journaled (UTF-8 string, 64-bit integer)")


def _positive(amount: int) -> None:
    if amount <= 0:
        raise ValueError(f"amount was {amount}, must be positive")


_DISPATCH: dict[type, Any] = {
    Deposit: lambda v, c: v.deposit(c.account, c.amount),
    Withdraw: lambda v, c: v.withdraw(c.account, c.amount),
    SeedInsurance: lambda v, c: v.seed_insurance(c.amount),
    Quote: lambda v, c: v.quote(c.underlying, c.source, c.price, c.ts_ms),
    Tick: lambda v, c: v.tick(c.underlying, c.now_ms),
    SetMark: lambda v, c: v.set_mark(c.symbol, c.mark, c.index),
    Advance: lambda v, c: v.advance(c.now_ms),
    Fund: lambda v, c: v.fund(c.symbol, c.ts_ms),
    Expire: lambda v, c: v.expire(c.symbol, c.now_ms),
    Liquidate: lambda v, c: v.liquidate(c.account),
    Delist: lambda v, c: v.delist(c.symbol),
    AdjustIsolatedMargin: lambda v, c: v.adjust_isolated_margin(c.account, c.symbol, c.amount),
    SetLeverage: lambda v, c: v.set_leverage(c.account, c.symbol, c.leverage),
    SetTpSl: lambda v, c: v.set_tpsl(c.account, c.symbol, c.take_profit, c.stop_loss),
    SetMarketStatus: lambda v, c: v.set_market_status(c.symbol, c.mode, c.until_ms, c.reason),
    SetBreaker: lambda v, c: v.set_breaker(c.symbol, c.max_move_bps, c.window_ms, c.cooldown_ms),
    ArmDeadman: lambda v, c: v.arm_deadman(c.account, c.timeout_ms, c.now_ms),
}
