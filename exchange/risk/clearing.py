"""The clearing house: collateral, positions, pre-trade risk, funding, settlement, ADL (pure).

It owns every account's collateral (``cash``) and positions, and turns each
change into *postings*: ledger transfer intents with deterministic ids
``{ns}.{seq}.{n}`` derived from its own sequence number, so replaying the
same commands re-creates the same ids and the ledger treats them as retries.
Nothing here performs I/O or reads a clock; callers pass times in.

Ledger accounts are named by key: ``m:<acct>`` (the account's exchange
collateral, a user_margin account), ``h:<acct>`` (its margin hold, a
user_held account, only ever the credit side of a pending transfer),
``a:<acct>`` (its spot balance, user_available), ``clearing`` (the
counterparty of realised PnL, funding and settlement), ``fees``,
``insurance`` and ``wallet`` (the platform's hot wallet, for seeding the
insurance fund). Platform identity, checked by ``check_invariants``:

    clearing == -sum(cost of open futures positions)
    sum(cash) + clearing + fees + insurance + bad_debt == deposits - withdrawals + seeded insurance

``bad_debt`` (<= 0, ledger key ``bad_debt``) holds what was written off after
the insurance fund and ADL could not absorb a shortfall.
"""

from __future__ import annotations

from typing import Final

from exchange.engine.messages import Cancelled, Event, NewOrder, Rejected, Trade
from exchange.instruments import PPM, InstrumentSpec
from exchange.margin.position import Position
from exchange.margin.requirement import (
    linear_im,
    linear_margin,
    linear_mm,
    option_seller_margin,
    position_margin,
    position_value,
    tier_ceiling_price,
)
from exchange.risk.codes import RiskCode
from exchange.risk.events import (
    BadDebt,
    Deleveraged,
    FundingPaid,
    InsuranceUsed,
    RiskEvent,
    Settled,
)
from exchange.risk.liqindex import LiquidationIndex
from exchange.state import (
    AccountState,
    BandEntry,
    ClearingState,
    LiquidationIndexState,
    PositionState,
    ReservationState,
)

CLEARING: Final = "clearing"
FEES: Final = "fees"
INSURANCE: Final = "insurance"
WALLET: Final = "wallet"
BAD_DEBT: Final = "bad_debt"
SINGLE: Final = "single"
PENDING: Final = "pending"
VOID: Final = "void"
ISOLATED_SEP: Final = ":iso:"
MAX_ADL_PASSES: Final = 8

# (id, kind, debit key, credit key, amount, pending id)
Posting = tuple[str, str, str, str, int, str | None]


class Account:
    """One margin account: a cross account, or the isolated sub-account of one position."""

    __slots__ = ("cache", "cache_version", "cash", "epoch", "hold", "hold_id", "hold_n", "id", "im",
                 "leverage", "mm", "order_im", "parent", "positions")

    def __init__(self, id: str, parent: str | None = None) -> None:
        self.id = id
        self.parent = parent
        self.cash = 0
        self.positions: dict[str, Position] = {}
        self.order_im = 0
        self.epoch = 0
        self.hold = 0
        self.hold_id: str | None = None
        self.hold_n = 0
        # Per-symbol IM rate floor (ppm) chosen through the leverage setting; absent: the tier's.
        self.leverage: dict[str, int] = {}
        # Valuation cache (equity in ``cache``, ``im``, ``mm``), valid while ``cache_version``
        # equals the clearing house's ``version``; any change of cash or positions resets it.
        self.cache = 0
        self.im = 0
        self.mm = 0
        self.cache_version = -1


class OrderReservation:
    """Initial margin reserved for a live order, released as it fills or leaves the book."""

    __slots__ = ("account", "im", "payer", "price", "qty", "reduce_only", "side")

    def __init__(self, account: str, payer: str, side: int, qty: int, im: int, price: int,
                 reduce_only: bool) -> None:
        self.account = account
        self.payer = payer
        self.side = side
        self.qty = qty
        self.im = im
        self.price = price  # the worst price it can fill at (the loss against the mark is reserved)
        self.reduce_only = reduce_only


class Clearinghouse:
    """Accounts, positions and collateral of every instrument sharing one quote asset."""

    def __init__(self, specs: dict[str, InstrumentSpec], namespace: str = "x") -> None:
        self.specs = specs
        self.ns = namespace
        self.accounts: dict[str, Account] = {}
        self.marks: dict[str, int] = {}
        self.index_of: dict[str, int] = {}  # underlying -> index price
        self.trading: dict[str, bool] = {s: True for s in specs}
        self.holders: dict[str, set[str]] = {s: set() for s in specs}
        self.orders: dict[tuple[str, str], OrderReservation] = {}
        self.order_index: dict[tuple[str, str], set[str]] = {}  # (account, symbol) -> live order ids
        # The reduce-only ones among them (derived: rebuilt by from_state, checked by check_invariants),
        # so the venue's after-fill pass does not scan every live order of a moved account.
        self.reduce_only_index: dict[tuple[str, str], set[str]] = {}
        self.moved: set[tuple[str, str]] = set()  # (account, symbol) whose position changed
        self.liq_index: dict[str, LiquidationIndex] = {s: LiquidationIndex() for s in specs}
        self.epochs: dict[str, int] = {}
        self.short_option_accounts: set[str] = set()
        self.clearing = 0
        self.fees = 0
        self.insurance = 0
        self.bad_debt = 0  # minus the losses written off (nobody could absorb them)
        self.external_in = 0  # deposits + seeded insurance - withdrawals
        self.seq = 0
        self.version = 0
        self._n = 0
        self.postings: list[Posting] = []
        self.events: list[RiskEvent] = []
        self.dirty: set[str] = set()  # accounts to re-band
        self.touched: set[str] = set()  # accounts whose ledger hold may need adjusting
        self.liquidating: str | None = None
        self._iso_carry: dict[str, int] = {}
        # (taker fee, maker fee) of each trade, in order, while a read model listens
        # (exchange/marketdata.py takes them after each engine command); None: not kept.
        self.trade_fees: list[tuple[int, int]] | None = None

    # -------------------------------------------------------------- sequencing

    def begin(self) -> int:
        """Start the next clearing sequence number (one per external command)."""
        self.seq += 1
        self._n = 0
        return self.seq

    def _post(self, debit: str, credit: str, amount: int) -> None:
        assert amount > 0, f"posting amount was {amount}, must be positive"
        self._n += 1
        self.postings.append((f"{self.ns}.{self.seq}.{self._n}", SINGLE, debit, credit, amount, None))

    def _move(self, frm: str, to: str, amount: int) -> None:
        """Post ``amount`` (either sign) from ``frm`` to ``to``; zero posts nothing."""
        if amount > 0:
            self._post(frm, to, amount)
        elif amount < 0:
            self._post(to, frm, -amount)

    # ------------------------------------------------------------- accounts

    def account(self, account_id: str) -> Account:
        """Return an account, creating an isolated sub-account on first use."""
        acct = self.accounts.get(account_id)
        if acct is None:
            parent = isolated_parent(account_id)
            if parent is None or parent not in self.accounts:
                raise KeyError(account_id)
            acct = self.accounts[account_id] = Account(account_id, parent)
            self.epochs[account_id] = 0
        return acct

    def open_account(self, account_id: str) -> Account:
        """Create a cross-margin account (idempotent)."""
        if account_id not in self.accounts:
            self.accounts[account_id] = Account(account_id)
            self.epochs[account_id] = 0
        return self.accounts[account_id]

    def deposit(self, account_id: str, amount: int) -> None:
        """Move ``amount`` from the account's spot balance into exchange collateral."""
        assert amount > 0
        acct = self.open_account(account_id)
        self._post(f"a:{account_id}", f"m:{account_id}", amount)
        self._credit(acct, amount)
        self.external_in += amount

    def withdraw(self, account_id: str, amount: int) -> RiskCode:
        """Move free collateral back to the spot balance, or refuse with a code."""
        acct = self.accounts.get(account_id)
        if acct is None:
            return RiskCode.UNKNOWN_ACCOUNT
        if amount <= 0:
            return RiskCode.INVALID_AMOUNT
        if amount > min(acct.cash, self.available(acct)):
            return RiskCode.INSUFFICIENT_FREE_COLLATERAL
        self._post(f"m:{account_id}", f"a:{account_id}", amount)
        self._credit(acct, -amount)
        self.external_in -= amount
        return RiskCode.OK

    def seed_insurance(self, amount: int) -> None:
        """Capitalise the insurance fund from the platform wallet."""
        assert amount > 0
        self._post(WALLET, INSURANCE, amount)
        self.insurance += amount
        self.external_in += amount

    def _credit(self, acct: Account, amount: int) -> None:
        acct.cash += amount
        acct.cache_version = -1
        self.dirty.add(acct.id)
        self.touched.add(acct.id)

    # ---------------------------------------------------------- valuation

    def set_index(self, underlying: str, price: int) -> None:
        """Record the latest index of an underlying (used by option seller margin)."""
        self.index_of[underlying] = price
        self.version += 1

    def valuation(self, acct: Account) -> tuple[int, int, int]:
        """Return (equity, initial margin, maintenance margin) of ``acct`` at current marks."""
        if acct.cache_version == self.version:
            return acct.cache, acct.im, acct.mm
        equity = acct.cash
        im = mm = 0
        specs = self.specs
        marks = self.marks
        for symbol, pos in acct.positions.items():
            if pos.size == 0:
                continue
            spec = specs[symbol]
            mark = marks[symbol]
            equity += position_value(spec, pos.size, pos.cost, mark)
            i, m = position_margin(spec, pos.size, mark, self.index_of.get(spec.underlying, mark),
                                   acct.leverage.get(symbol, 0))
            im += i
            mm += m
        acct.cache, acct.im, acct.mm = equity, im, mm
        acct.cache_version = self.version
        return equity, im, mm

    def available(self, acct: Account) -> int:
        """Return equity minus initial margin of positions and open orders (cached per marks)."""
        if acct.cache_version != self.version:
            self.valuation(acct)
        return acct.cache - acct.im - acct.order_im

    def health(self, acct: Account) -> int:
        """Return equity minus maintenance margin (negative: liquidate)."""
        equity, _, mm = self.valuation(acct)
        return equity - mm

    # ---------------------------------------------------------- pre-trade

    def check_new(self, symbol: str, c: NewOrder, worst_price: int | None = None,
                  liquidation: bool = False) -> tuple[RiskCode, str]:
        """Check an order against the account's post-trade state at the mark and reserve for it.

        The reservation (see docs/margin.md, "Pre-trade check") covers the
        whole-position initial margin the order can add, the loss of filling
        at its worst price instead of the mark, and the taker fee, minus the
        initial margin its closing part frees. A risk-increasing order must
        fit in equity above initial margin; a purely closing one in equity
        above maintenance margin. ``worst_price``: the band edge a market
        order can sweep to (the venue knows the book). Liquidation orders
        reserve nothing: they may trade down to the bankruptcy price.
        """
        spec = self.specs.get(symbol)
        if spec is None:
            return RiskCode.UNKNOWN_INSTRUMENT, f"instrument was {symbol!r}, not listed"
        if not self.trading[symbol]:
            return RiskCode.INSTRUMENT_NOT_TRADING, f"{symbol} has expired and no longer trades"
        key = (symbol, c.id)
        if key in self.orders:
            return RiskCode.DUPLICATE_ORDER_ID, f"order id {c.id!r} is already live on {symbol}"
        try:
            acct = self.account(c.account)
        except KeyError:
            return RiskCode.UNKNOWN_ACCOUNT, f"account {c.account!r} has no collateral"
        if acct.parent is not None and acct.id != isolated_account(acct.parent, symbol):
            return RiskCode.INVALID_MARGIN_MODE, f"isolated account {acct.id!r} trades only its own symbol"
        mark = self.marks.get(symbol)
        if mark is None:
            return RiskCode.NO_MARK_PRICE, f"{symbol} has no mark price yet"
        if not liquidation and c.type == "limit" and c.price is not None:
            # The engine's band follows the last trade, which trades can walk away from the
            # mark; limits are also held to the band around the mark itself.
            width = mark * spec.band_bps // 10_000
            if not mark - width <= c.price <= mark + width:
                return RiskCode.PRICE_OUTSIDE_MARK_BAND, (
                    f"price was {c.price}, must be within {spec.band_bps} bps of the mark {mark}")
        pos = acct.positions.get(symbol)
        if pos is None:
            pos = acct.positions[symbol] = Position(symbol)
        side = 1 if c.side == "buy" else -1
        price = self._worst_price(spec, side, c, mark, worst_price)
        payer = self.accounts[acct.parent] if acct.parent is not None else acct
        im = opening = 0
        if not liquidation:
            same = pos.open_buy if side > 0 else pos.open_sell
            closable = max(0, (-pos.size if side > 0 else pos.size) - same)
            gross = self._gross_qty(pos, side)
            im, opening, _, _ = self._reservation(acct, spec, pos, side, c.qty, price, closable, gross)
        if im > 0:
            free = self.available(payer) if opening else self.free_above_maintenance(payer)
            if im > free:
                if pos.idle():
                    del acct.positions[symbol]
                kind = "initial" if opening else "maintenance"
                return RiskCode.INSUFFICIENT_MARGIN, (
                    f"order needs initial margin {im} (including the loss of its price {price} against "
                    f"the mark {mark}), account {payer.id} has {max(free, 0)} free above {kind} margin")
        self.orders[key] = OrderReservation(acct.id, payer.id, side, c.qty, im, price, c.reduce_only)
        self.order_index.setdefault((acct.id, symbol), set()).add(c.id)
        if c.reduce_only:
            self.reduce_only_index.setdefault((acct.id, symbol), set()).add(c.id)
        payer.order_im += im
        if im:
            self.touched.add(payer.id)
        if side > 0:
            pos.open_buy += c.qty
        else:
            pos.open_sell += c.qty
        return RiskCode.OK, ""

    def free_above_maintenance(self, acct: Account) -> int:
        """Return equity minus maintenance margin minus what open orders reserve."""
        equity, _, mm = self.valuation(acct)
        return equity - mm - acct.order_im

    @staticmethod
    def _worst_price(spec: InstrumentSpec, side: int, c: NewOrder, mark: int, worst: int | None) -> int:
        """Return the worst price the order can fill at (limit, or band edge for market orders)."""
        if worst is not None:  # the venue walked the book for an order that cannot rest
            return worst
        if c.price is not None:
            return c.price
        ref = c.trigger_price or mark
        width = ref * spec.band_bps // 10_000
        return ref + width if side > 0 else max(spec.tick_size, ref - width)

    @staticmethod
    def _gross_qty(pos: Position, side: int) -> int:
        """Return the exposure (contracts) on ``side`` if the position and its same-side orders fill."""
        size = pos.size if side > 0 else -pos.size
        same = pos.open_buy if side > 0 else pos.open_sell
        return max(0, size + same) if size >= 0 else max(0, same + size)

    def _unit_im(self, spec: InstrumentSpec, long: bool, mark: int) -> int:
        """Return the initial margin per ``contracts_per_unit`` contracts of an option position."""
        if long:
            return mark
        index = self.index_of.get(spec.underlying, mark)
        return option_seller_margin(spec, -spec.contracts_per_unit, mark, index)[0]

    def _unit_mm(self, spec: InstrumentSpec, long: bool, mark: int) -> int:
        """Return the maintenance margin per ``contracts_per_unit`` contracts of an option position."""
        if long:
            return mark
        index = self.index_of.get(spec.underlying, mark)
        return option_seller_margin(spec, -spec.contracts_per_unit, mark, index)[1]

    def _reservation(self, acct: Account, spec: InstrumentSpec, pos: Position, side: int, qty: int,
                     price: int, closable: int, gross: int) -> tuple[int, int, int, int]:
        """Return (reserve, opening qty, closable left, gross left) for one order on ``side``.

        ``closable``: how much of the position is still closable by this side after the
        orders ahead of it; ``gross``: the exposure this side has before the order.
        """
        mark = self.marks[spec.symbol]
        cpu = spec.contracts_per_unit
        closing = min(qty, closable)
        opening = qty - closing
        loss = -(-max(0, side * (price - mark)) * qty // cpu)
        fee = -(-qty * price * max(spec.taker_fee_ppm, 0) // (cpu * PPM))
        # The closing part is credited the *maintenance* margin it frees, not the initial:
        # a closing order may use the buffer above maintenance, never go below it.
        if spec.is_option:
            open_im = -(-opening * self._unit_im(spec, side > 0, mark) // cpu)
            freed = closing * self._unit_mm(spec, side < 0, mark) // cpu
        else:
            lev = acct.leverage.get(spec.symbol, 0) if acct.leverage else 0
            im_price = max(price, mark)
            open_im = 0
            if opening:
                open_im = (_linear_im(spec, (gross + opening) * im_price // cpu, lev)
                           - _linear_im(spec, gross * im_price // cpu, lev))
            freed = 0
            if closing:
                freed = (_linear_mm(spec, closable * mark // cpu)
                         - _linear_mm(spec, (closable - closing) * mark // cpu))
        reserve = max(0, open_im - freed + loss + fee)
        return reserve, opening, closable - closing, gross + opening

    def rereserve(self, account_id: str, symbol: str) -> None:
        """Recompute the reservations of an account's live orders on ``symbol`` after its position moved.

        Closing capacity goes to reduce-only orders first, then by order id, so the
        result depends only on the state (replay- and snapshot-stable). Linear
        instruments take the inlined arithmetic of ``_reservation`` (same integers;
        tests/exchange/test_rereserve_fast.py checks it against the reference).
        """
        ids = self.order_index.get((account_id, symbol))
        acct = self.accounts.get(account_id)
        if not ids or acct is None or symbol not in self.marks:
            return
        spec = self.specs[symbol]
        pos = acct.positions[symbol]
        orders = self.orders
        # Reduce-only orders first, then by order id.
        reduce_only = self.reduce_only_index.get((account_id, symbol))
        ranked = sorted(ids) if not reduce_only else sorted(reduce_only) + sorted(ids - reduce_only)
        size = pos.size
        if spec.is_option or not spec.tiers:
            self._rereserve_generic(acct, spec, pos, [orders[(symbol, i)] for i in ranked])
            return
        mark = self.marks[symbol]
        cpu = spec.contracts_per_unit
        fee_ppm = max(spec.taker_fee_ppm, 0)
        fee_div = cpu * PPM
        lev = acct.leverage.get(symbol, 0)
        tiers = spec.tiers
        t0 = tiers[0]
        t0_max = t0.max_notional
        t0_im = max(t0.im_ppm, lev)
        t0_mm = t0.mm_ppm
        one_tier = len(tiers) == 1
        buy_closable, buy_gross = max(0, -size), max(0, size)
        sell_closable, sell_gross = max(0, size), max(0, -size)
        accounts = self.accounts
        touched = self.touched
        for order_id in ranked:
            res = orders[(symbol, order_id)]
            side, qty, price = res.side, res.qty, res.price
            if side > 0:
                closable, gross = buy_closable, buy_gross
                loss = -(-(price - mark) * qty // cpu) if price > mark else 0
            else:
                closable, gross = sell_closable, sell_gross
                loss = -(-(mark - price) * qty // cpu) if price < mark else 0
            closing = qty if qty < closable else closable
            opening = qty - closing
            reserve = loss - (-qty * price * fee_ppm // fee_div)
            if opening:
                im_price = price if price > mark else mark
                n1 = (gross + opening) * im_price // cpu
                n0 = gross * im_price // cpu
                if n1 <= t0_max or one_tier:
                    reserve += -(-n1 * t0_im // PPM)
                else:
                    reserve += linear_im(spec, n1, lev)
                if n0 <= t0_max or one_tier:
                    reserve -= -(-n0 * t0_im // PPM)
                else:
                    reserve -= linear_im(spec, n0, lev)
                gross += opening
            if closing:
                n1 = closable * mark // cpu
                n0 = (closable - closing) * mark // cpu
                reserve -= (n1 * t0_mm // PPM if n1 <= t0_max or one_tier else linear_mm(spec, n1))
                reserve += (n0 * t0_mm // PPM if n0 <= t0_max or one_tier else linear_mm(spec, n0))
                closable -= closing
            if side > 0:
                buy_closable, buy_gross = closable, gross
            else:
                sell_closable, sell_gross = closable, gross
            im = reserve if reserve > 0 else 0
            if im != res.im:
                accounts[res.payer].order_im += im - res.im
                res.im = im
                touched.add(res.payer)

    def _rereserve_generic(self, acct: Account, spec: InstrumentSpec, pos: Position,
                           ranked: list[OrderReservation]) -> None:
        """``rereserve`` through ``_reservation`` (options; the reference for linear instruments)."""
        state = {1: [max(0, -pos.size), max(0, pos.size)], -1: [max(0, pos.size), max(0, -pos.size)]}
        for res in ranked:
            closable, gross = state[res.side]
            im, _, closable, gross = self._reservation(acct, spec, pos, res.side, res.qty, res.price,
                                                       closable, gross)
            state[res.side] = [closable, gross]
            if im != res.im:
                self.accounts[res.payer].order_im += im - res.im
                res.im = im
                self.touched.add(res.payer)

    def reserve(self, symbol: str, order_id: str, account: str, payer: str, side: int, qty: int,
                im: int, price: int, reduce_only: bool) -> None:
        """Put back an exact reservation (an amend that did not take effect)."""
        assert (symbol, order_id) not in self.orders and qty > 0 and im >= 0
        acct = self.accounts[account]
        pos = acct.positions.get(symbol)
        if pos is None:
            pos = acct.positions[symbol] = Position(symbol)
        self.orders[(symbol, order_id)] = OrderReservation(account, payer, side, qty, im, price, reduce_only)
        self.order_index.setdefault((account, symbol), set()).add(order_id)
        if reduce_only:
            self.reduce_only_index.setdefault((account, symbol), set()).add(order_id)
        self.accounts[payer].order_im += im
        self.touched.add(payer)
        if side > 0:
            pos.open_buy += qty
        else:
            pos.open_sell += qty

    def release(self, symbol: str, order_id: str, qty: int) -> int:
        """Release the reservation of ``qty`` of a live order (it filled or left the book); return it."""
        res = self.orders.get((symbol, order_id))
        if res is None:
            return 0
        part = res.im if qty >= res.qty else res.im * qty // res.qty
        res.im -= part
        res.qty -= qty
        payer = self.accounts[res.payer]
        payer.order_im -= part
        self.touched.add(payer.id)
        acct = self.accounts[res.account]
        pos = acct.positions[symbol]
        if res.side > 0:
            pos.open_buy -= qty
        else:
            pos.open_sell -= qty
        if res.qty <= 0:
            assert res.qty == 0 and res.im == 0
            del self.orders[(symbol, order_id)]
            ids = self.order_index[(res.account, symbol)]
            ids.discard(order_id)
            if not ids:
                del self.order_index[(res.account, symbol)]
            if res.reduce_only:
                ro = self.reduce_only_index[(res.account, symbol)]
                ro.discard(order_id)
                if not ro:
                    del self.reduce_only_index[(res.account, symbol)]
        if pos.idle():
            del acct.positions[symbol]
        return part

    # ---------------------------------------------------------- isolated margin and leverage

    def adjust_isolated_margin(self, account_id: str, symbol: str, amount: int) -> tuple[RiskCode, str]:
        """Move ``amount`` from the cross account into its isolated ``symbol`` position (< 0: back).

        Adding needs free collateral above initial margin in the cross account;
        removing may leave the isolated position no less than its initial margin.
        """
        parent = self.accounts.get(account_id)
        if parent is None or parent.parent is not None:
            return RiskCode.UNKNOWN_ACCOUNT, f"account {account_id!r} has no collateral"
        if symbol not in self.specs:
            return RiskCode.UNKNOWN_INSTRUMENT, f"instrument was {symbol!r}, not listed"
        if amount == 0:
            return RiskCode.INVALID_AMOUNT, "amount was 0, must be non-zero"
        sub = self.account(isolated_account(account_id, symbol))
        if amount > 0:
            free = min(parent.cash, self.available(parent))
            if amount > free:
                return RiskCode.INSUFFICIENT_FREE_COLLATERAL, (
                    f"amount was {amount}, account {account_id} has {max(free, 0)} free")
            frm, to = parent, sub
        else:
            free = min(sub.cash, self.available(sub))
            if -amount > free:
                return RiskCode.POSITION_MARGIN_LOCKED, (
                    f"amount was {amount}, the isolated {symbol} position can release {max(free, 0)}")
            frm, to = sub, parent
        moved = abs(amount)
        self._post(f"m:{frm.id}", f"m:{to.id}", moved)
        self._credit(frm, -moved)
        self._credit(to, moved)
        return RiskCode.OK, ""

    def set_leverage(self, account_id: str, symbol: str, leverage: int) -> tuple[RiskCode, str]:
        """Set the leverage of an account on a linear instrument: IM rate = max(tier rate, 1/leverage).

        Refused when the positions and orders already open would then need more
        initial margin than the account has.
        """
        spec = self.specs.get(symbol)
        if spec is None:
            return RiskCode.UNKNOWN_INSTRUMENT, f"instrument was {symbol!r}, not listed"
        if spec.is_option:
            return RiskCode.INVALID_LEVERAGE, f"{symbol} is an option: its margin has no leverage"
        top = PPM // spec.tiers[0].im_ppm
        if not 1 <= leverage <= top:
            return RiskCode.INVALID_LEVERAGE, f"leverage was {leverage}, must be 1..{top} on {symbol}"
        try:
            acct = self.account(account_id)
        except KeyError:
            return RiskCode.UNKNOWN_ACCOUNT, f"account {account_id!r} has no collateral"
        rate = -(-PPM // leverage)
        old = acct.leverage.get(symbol, 0)
        acct.leverage[symbol] = rate if rate > spec.tiers[0].im_ppm else 0
        if not acct.leverage[symbol]:
            del acct.leverage[symbol]
        acct.cache_version = -1
        self.rereserve(account_id, symbol)
        payer = self.accounts[acct.parent] if acct.parent is not None else acct
        if rate > old and (self.available(payer) < 0 or self.available(acct) < 0):
            if old:
                acct.leverage[symbol] = old
            else:
                acct.leverage.pop(symbol, None)
            acct.cache_version = -1
            self.rereserve(account_id, symbol)
            return RiskCode.INSUFFICIENT_MARGIN, (
                f"leverage {leverage} on {symbol} needs more initial margin than {account_id} has free")
        self.touched.add(payer.id)
        self.touched.add(acct.id)
        self.dirty.add(acct.id)
        return RiskCode.OK, ""

    # ---------------------------------------------------------- engine events

    def apply(self, symbol: str, events: list[Event]) -> None:
        """Fold the engine's events for ``symbol`` into positions, reservations and postings."""
        # Reservation an isolated order released but its fill did not need yet: a taker's
        # later, worse fills in the same command may (see _top_up_isolated).
        self._iso_carry = {}
        for ev in events:
            if type(ev) is Trade:
                self._on_trade(symbol, ev)
            elif type(ev) is Cancelled:
                self.release(symbol, ev.id, ev.qty)
            elif type(ev) is Rejected and ev.id is not None:
                res = self.orders.get((symbol, ev.id))
                if res is not None:
                    self.release(symbol, ev.id, res.qty)

    def _on_trade(self, symbol: str, t: Trade) -> None:
        spec = self.specs[symbol]
        qty, price = t.qty, t.price
        sign = 1 if t.taker_side == "buy" else -1
        maker_part = self.release(symbol, t.maker, qty)
        taker_part = self.release(symbol, t.taker, qty)
        taker = self.account(t.taker_account)
        maker = self.account(t.maker_account)
        self.moved.add((taker.id, symbol))
        self.moved.add((maker.id, symbol))
        self.transfer_position(symbol, taker, maker, sign * qty, price)
        notional = spec.notional(qty, price)
        if taker.id == self.liquidating:
            equity = self.valuation(taker)[0]
            fee = min(notional * spec.liquidation_fee_ppm // PPM, max(0, equity))
            self._pay(taker, INSURANCE, fee)
            self.insurance += fee
        else:
            fee = notional * spec.taker_fee_ppm // PPM
            self._pay(taker, FEES, fee)
            self.fees += fee
        if spec.maker_fee_ppm >= 0:
            maker_fee = notional * spec.maker_fee_ppm // PPM
        elif taker.id == self.liquidating:
            # The taker's fee went to the insurance fund, so the fees account pays no rebate.
            maker_fee = 0
        else:
            maker_fee = -(notional * -spec.maker_fee_ppm // PPM)
        self._pay(maker, FEES, maker_fee)
        self.fees += maker_fee
        if self.trade_fees is not None:
            self.trade_fees.append((fee, maker_fee))
        self._top_up_isolated(taker, symbol, t.taker, taker_part)
        self._top_up_isolated(maker, symbol, t.maker, maker_part)

    def _pay(self, acct: Account, to: str, amount: int) -> None:
        """Move ``amount`` (may be negative: a rebate) from an account to a platform key."""
        if amount:
            self._move(f"m:{acct.id}", to, amount)
            self._credit(acct, -amount)

    def transfer_position(self, symbol: str, buyer_side: Account, other: Account, qty: int,
                          price: int) -> None:
        """Give ``buyer_side`` signed ``qty`` at ``price`` and ``other`` the opposite."""
        self._fill(buyer_side, symbol, qty, price)
        self._fill(other, symbol, -qty, price)
        spec = self.specs[symbol]
        if spec.is_option:
            premium = abs(qty) * price // spec.contracts_per_unit
            payer, payee = (buyer_side, other) if qty > 0 else (other, buyer_side)
            # A self-trade moves no premium (and the ledger refuses a transfer to itself).
            if premium and payer is not payee:
                self._post(f"m:{payer.id}", f"m:{payee.id}", premium)
                self._credit(payer, -premium)
                self._credit(payee, premium)

    def _fill(self, acct: Account, symbol: str, qty: int, price: int) -> None:
        spec = self.specs[symbol]
        pos = acct.positions.get(symbol)
        if pos is None:
            pos = acct.positions[symbol] = Position(symbol)
        realised = pos.fill(qty, price, spec.contracts_per_unit)
        if realised and not spec.is_option:
            self._move(CLEARING, f"m:{acct.id}", realised)
            self.clearing -= realised
            self._credit(acct, realised)
        acct.cache_version = -1
        self.dirty.add(acct.id)
        self.touched.add(acct.id)
        holders = self.holders[symbol]
        if pos.size:
            holders.add(acct.id)
        else:
            holders.discard(acct.id)
        if spec.is_option and pos.size < 0:
            self.short_option_accounts.add(acct.id)
        if pos.idle():
            del acct.positions[symbol]

    def _top_up_isolated(self, acct: Account, symbol: str, order_id: str, released: int) -> None:
        """Fund an isolated sub-account towards its initial margin from what its order reserved.

        An isolated position never draws more from the parent than the
        reservation its fill released (``released``, plus what earlier fills of
        the same order left unused) or margin added explicitly. The parent's
        free margin (equity, so unrealised gains count) backed that
        reservation, so its cash may dip below zero like any cross wallet.
        When the position is gone (and no order is live), the rest goes back.
        """
        if acct.parent is None:
            return
        reserved = self._iso_carry.pop(order_id, 0) + released
        parent = self.accounts[acct.parent]
        pos = acct.positions.get(symbol)
        if pos is None or pos.size == 0:
            if acct.cash < 0:
                # Closed at a loss beyond its margin: the closing order's reservation pays it.
                amount = min(-acct.cash, reserved)
                if amount:
                    self._post(f"m:{parent.id}", f"m:{acct.id}", amount)
                    self._credit(parent, -amount)
                    self._credit(acct, amount)
                if reserved > amount:
                    self._iso_carry[order_id] = reserved - amount
            elif pos is None and acct.cash > 0:
                back = acct.cash
                self._post(f"m:{acct.id}", f"m:{parent.id}", back)
                self._credit(acct, -back)
                self._credit(parent, back)
            return
        equity, im, _ = self.valuation(acct)
        need = im - equity
        amount = min(max(0, need), reserved)
        if amount:
            self._post(f"m:{parent.id}", f"m:{acct.id}", amount)
            self._credit(parent, -amount)
            self._credit(acct, amount)
        if reserved > amount:
            self._iso_carry[order_id] = reserved - amount

    # ---------------------------------------------------------- marks and the index

    def set_mark(self, symbol: str, mark: int) -> list[str]:
        """Publish a mark; return the accounts it pushes below maintenance (sorted).

        Only accounts whose band the mark crosses are evaluated; the healthy
        ones among them get a new band.
        """
        assert mark > 0
        self.refresh_bands()
        self.marks[symbol] = mark
        self.version += 1
        candidates = set(self.liq_index[symbol].crossed(mark, self.epochs))
        candidates.update(self.short_option_accounts)
        unsafe: list[str] = []
        for account_id in sorted(candidates):
            acct = self.accounts[account_id]
            if self.health(acct) < 0:
                unsafe.append(account_id)
            else:
                self._band(acct)
        return unsafe

    def refresh_bands(self) -> None:
        """Re-band every account whose collateral or positions changed since the last call."""
        for account_id in sorted(self.dirty):
            acct = self.accounts.get(account_id)
            if acct is not None:
                self._band(acct)
        self.dirty.clear()

    def _band(self, acct: Account) -> None:
        """Index the account's safe band on each instrument it holds (see docs/margin.md)."""
        epoch = self.epochs[acct.id] = self.epochs[acct.id] + 1
        held = [(s, p) for s, p in acct.positions.items() if p.size]
        if not held:
            return
        equity, _, mm = self.valuation(acct)
        headroom = max(0, equity - mm)
        exposure = 0
        for symbol, pos in held:
            spec = self.specs[symbol]
            top = 0 if spec.is_option else spec.tiers[-1].mm_ppm
            exposure += -(-abs(pos.size) * self.marks[symbol] * (PPM + top) //
                          (PPM * spec.contracts_per_unit))
        for symbol, pos in held:
            mark = self.marks[symbol]
            width = mark * headroom // exposure if exposure else 0
            hi = mark + width
            ceiling = tier_ceiling_price(self.specs[symbol], pos.size, mark)
            if ceiling is not None:
                hi = min(hi, ceiling)
            self.liq_index[symbol].push(acct.id, epoch, mark - width, hi)
        for symbol, _ in held:
            self.liq_index[symbol].maybe_rebuild(self.epochs, len(self.holders[symbol]))

    # ---------------------------------------------------------- liquidation support

    def bankruptcy_limit(self, acct: Account, symbol: str, extra: int) -> int:
        """Return the worst price at which closing ``symbol`` leaves equity + ``extra`` >= 0.

        The account's equity is attributed to its positions by notional.
        """
        spec = self.specs[symbol]
        pos = acct.positions[symbol]
        equity, _, _ = self.valuation(acct)
        gross = sum(abs(p.size) * self.marks[s] // self.specs[s].contracts_per_unit
                    for s, p in acct.positions.items() if p.size)
        mark = self.marks[symbol]
        share = (equity + extra) * (abs(pos.size) * mark // spec.contracts_per_unit) // max(1, gross)
        move = share * spec.contracts_per_unit // abs(pos.size)
        tick = spec.tick_size
        if pos.size > 0:  # a sell: never below the bankruptcy price, so round up
            return max(tick, -(-(mark - move) // tick) * tick)
        return max(tick, (mark + move) // tick * tick)

    def cover_shortfall(self, acct: Account) -> None:
        """Let the insurance fund bring an account's negative collateral back towards zero."""
        if acct.cash >= 0:
            return
        amount = min(-acct.cash, self.insurance)
        if amount:
            self._post(INSURANCE, f"m:{acct.id}", amount)
            self.insurance -= amount
            self._credit(acct, amount)
            self.events.append(InsuranceUsed(self.seq, acct.id, amount))

    def write_off(self, acct: Account) -> None:
        """Record what nobody could absorb, once: the platform's bad-debt account takes it.

        Called after the insurance fund and the deleveraged counterparties;
        the user's collateral ends at zero, never below, and the loss stays
        visible in its own ledger account (``bad_debt``) and one event.
        """
        if acct.cash >= 0 or any(p.size for p in acct.positions.values()):
            return
        amount = -acct.cash
        self._post(BAD_DEBT, f"m:{acct.id}", amount)
        self.bad_debt -= amount
        self._credit(acct, amount)
        self.events.append(BadDebt(self.seq, acct.id, amount))

    def settle_losses(self, acct: Account, closed: dict[str, int] | None = None) -> None:
        """Socialise a flat account's negative collateral: insurance fund, then ADL, then write-off."""
        if acct.cash >= 0:
            return
        self.cover_shortfall(acct)
        if acct.cash < 0 and closed:
            self._charge_counterparties(acct, closed)
        self.write_off(acct)

    def deleverage(self, acct: Account) -> None:
        """Close every remaining position of a bankrupt account against ranked counterparties.

        Closing happens at mark; the insurance fund then covers the shortfall;
        what it cannot cover is charged to the counterparties pro rata to the
        notional they were deleveraged (economically they get the bankruptcy
        price), and only what they cannot absorb is written off.
        """
        closed: dict[str, int] = {}
        for symbol in sorted(acct.positions):
            pos = acct.positions.get(symbol)
            if pos is None or pos.size == 0:
                continue
            for cp_id, qty in self._adl_queue(symbol, acct.id, pos.size):
                cp = self.accounts[cp_id]
                self.transfer_position(symbol, cp, acct, qty, self.marks[symbol])
                self.moved.add((cp_id, symbol))
                notional = abs(qty) * self.marks[symbol] // self.specs[symbol].contracts_per_unit
                closed[cp_id] = closed.get(cp_id, 0) + notional
                self.events.append(Deleveraged(self.seq, symbol, acct.id, cp_id, abs(qty),
                                               self.marks[symbol], 0))
        self.settle_losses(acct, closed)

    def _adl_queue(self, symbol: str, account_id: str, size: int) -> list[tuple[str, int]]:
        """Return (counterparty, signed qty it takes) by ranking until ``size`` is matched.

        Binance's ranking: with PnL% = unrealised PnL / |cost| and effective
        leverage = notional / equity, a profitable position scores
        PnL% * leverage, a losing one PnL% / leverage; highest first, ties by
        account id (see docs/margin.md). Equity is approximated by collateral
        plus this position's PnL, so the scan is O(1) per holder.
        """
        spec = self.specs[symbol]
        mark = self.marks[symbol]
        ranked: list[tuple[int, str]] = []
        for cp_id in self.holders[symbol]:
            cp = self.accounts[cp_id]
            pos = cp.positions[symbol]
            if cp_id == account_id or (pos.size > 0) == (size > 0):
                continue
            pnl = position_value(spec, pos.size, pos.cost, mark) - (pos.cost if spec.is_option else 0)
            notional = max(1, abs(pos.size) * mark // spec.contracts_per_unit)
            # Equity ~ collateral + this position's PnL: O(1) per holder (no revaluation of
            # the holder's other positions), as the scan runs over every holder.
            ranked.append((-adl_score(pnl, pos.cost, notional, cp.cash + pnl), cp_id))
        ranked.sort()
        out: list[tuple[str, int]] = []
        remaining = abs(size)
        for _, cp_id in ranked:
            take = min(remaining, abs(self.accounts[cp_id].positions[symbol].size))
            out.append((cp_id, take if size > 0 else -take))
            remaining -= take
            if remaining == 0:
                break
        assert remaining == 0, f"ADL found {abs(size) - remaining} of {abs(size)} on {symbol}"
        return out

    def _charge_counterparties(self, acct: Account, closed: dict[str, int]) -> None:
        for _ in range(MAX_ADL_PASSES):
            need = -acct.cash
            able = {cp: n for cp, n in closed.items() if self.valuation(self.accounts[cp])[0] > 0}
            if need <= 0 or not able:
                break
            for cp_id, share in allocate(need, able).items():
                cp = self.accounts[cp_id]
                # Never past the counterparty's own collateral: ADL must not make it negative.
                charge = min(share, self.valuation(cp)[0], max(0, cp.cash))
                if charge > 0:
                    self._post(f"m:{cp_id}", f"m:{acct.id}", charge)
                    self._credit(cp, -charge)
                    self._credit(acct, charge)
                    self.events.append(Deleveraged(self.seq, "*", acct.id, cp_id, 0, 0, charge))

    # ---------------------------------------------------------- funding and settlement

    def fund(self, symbol: str, rate_ppm: int, ts_ms: int) -> int:
        """Pay one funding interval: longs pay shorts when the rate is positive; zero-sum."""
        spec = self.specs[symbol]
        mark = self.marks[symbol]
        longs = sorted(a for a in self.holders[symbol] if self.accounts[a].positions[symbol].size > 0)
        shorts = sorted(a for a in self.holders[symbol] if self.accounts[a].positions[symbol].size < 0)
        payers, payees = (longs, shorts) if rate_ppm > 0 else (shorts, longs)
        rate = abs(rate_ppm)
        total = 0
        for account_id in payers:
            acct = self.accounts[account_id]
            amount = abs(acct.positions[symbol].size) * mark // spec.contracts_per_unit * rate // PPM
            if amount:
                self._post(f"m:{account_id}", CLEARING, amount)
                self._credit(acct, -amount)
                total += amount
        weights = {a: abs(self.accounts[a].positions[symbol].size) for a in payees}
        for account_id, amount in allocate(total, weights).items():
            if amount:
                self._post(CLEARING, f"m:{account_id}", amount)
                self._credit(self.accounts[account_id], amount)
        self.events.append(FundingPaid(self.seq, symbol, rate_ppm, mark, total, ts_ms))
        return total

    def settle(self, symbol: str, price: int, ts_ms: int) -> None:
        """Close every position of an expired instrument at ``price`` and stop trading it."""
        spec = self.specs[symbol]
        assert price % spec.tick_size == 0, f"settlement price {price} is off the tick grid"
        self.trading[symbol] = False
        self.marks[symbol] = price
        self.version += 1
        holders = sorted(self.holders[symbol])
        for account_id in holders:
            acct = self.accounts[account_id]
            pos = acct.positions[symbol]
            if spec.is_option:
                payoff = pos.size * intrinsic_value(spec, price) // spec.contracts_per_unit
                self._move(CLEARING, f"m:{account_id}", payoff)
                self.clearing -= payoff
                self._credit(acct, payoff)
                pos.realised += payoff - pos.cost
                pos.size = pos.cost = 0
                acct.cache_version = -1
                self.holders[symbol].discard(account_id)
                if pos.idle():
                    del acct.positions[symbol]
            else:
                self._fill(acct, symbol, -pos.size, price)
        assert not self.holders[symbol]
        self.events.append(Settled(self.seq, symbol, price, len(holders), ts_ms))

    # ---------------------------------------------------------- ledger holds and checks

    def drain(self) -> tuple[list[Posting], list[RiskEvent]]:
        """Re-band changed accounts, adjust margin holds, and hand out postings and events."""
        for account_id in sorted(self.touched):
            acct = self.accounts.get(account_id)
            if acct is not None:
                self._adjust_hold(acct)
        self.touched.clear()
        self.refresh_bands()
        postings, events = self.postings, self.events
        self.postings, self.events = [], []
        return postings, events

    def _adjust_hold(self, acct: Account) -> None:
        """Mirror the margin in use as one pending transfer m:<acct> -> h:<acct>."""
        if acct.positions or acct.order_im:
            used = (self.valuation(acct)[1] if acct.positions else 0) + acct.order_im
        else:
            used = 0
        target = min(used, max(0, acct.cash))
        if target == acct.hold:
            return
        ns = self.ns
        if acct.hold_id is not None:
            acct.hold_n += 1
            self.postings.append((f"{ns}.hv.{acct.id}.{acct.hold_n}", VOID, f"m:{acct.id}",
                                  f"h:{acct.id}", 0, acct.hold_id))
            acct.hold_id = None
        if target > 0:
            acct.hold_n += 1
            acct.hold_id = f"{ns}.h.{acct.id}.{acct.hold_n}"
            self.postings.append((acct.hold_id, PENDING, f"m:{acct.id}", f"h:{acct.id}", target, None))
        acct.hold = target

    # ---------------------------------------------------------- state (snapshots, state hash)

    def state(self) -> ClearingState:
        """Return the canonical state; only valid between batches (everything drained)."""
        assert not (self.postings or self.events or self.dirty or self.touched), (
            "clearing state taken with undrained postings, events or accounts")
        assert self.liquidating is None
        epochs = self.epochs
        return ClearingState(
            namespace=self.ns, seq=self.seq, n=self._n, version=self.version,
            clearing=self.clearing, fees=self.fees, insurance=self.insurance,
            external_in=self.external_in,
            accounts=[_account_state(self.accounts[a]) for a in sorted(self.accounts)],
            epochs=dict(sorted(epochs.items())), marks=dict(sorted(self.marks.items())),
            index_of=dict(sorted(self.index_of.items())), trading=dict(sorted(self.trading.items())),
            holders={s: sorted(h) for s, h in sorted(self.holders.items())},
            orders=[ReservationState(s, o, r.account, r.payer, r.side, r.qty, r.im, r.price, r.reduce_only)
                    for (s, o), r in sorted(self.orders.items())],
            liq_index=[LiquidationIndexState(
                s, [BandEntry(*e) for e in sorted(ix.lo) if epochs.get(e[2]) == e[1]],
                [BandEntry(*e) for e in sorted(ix.hi) if epochs.get(e[2]) == e[1]])
                for s, ix in sorted(self.liq_index.items())],
            short_option_accounts=sorted(self.short_option_accounts),
            bad_debt=self.bad_debt,
        )

    @classmethod
    def from_state(cls, specs: dict[str, InstrumentSpec], state: ClearingState) -> Clearinghouse:
        """Rebuild a clearing house from ``state()`` output (instruments new to ``specs`` start empty)."""
        unknown = set(state.trading) - set(specs)
        if unknown:
            raise ValueError(f"state holds instruments {sorted(unknown)} that are not configured")
        ch = cls(specs, state.namespace)
        ch.seq, ch._n, ch.version = state.seq, state.n, state.version
        ch.clearing, ch.fees, ch.insurance = state.clearing, state.fees, state.insurance
        ch.external_in = state.external_in
        ch.bad_debt = state.bad_debt
        for a in state.accounts:
            acct = ch.accounts[a.id] = Account(a.id, a.parent)
            acct.cash, acct.order_im, acct.epoch = a.cash, a.order_im, a.epoch
            acct.hold, acct.hold_id, acct.hold_n = a.hold, a.hold_id, a.hold_n
            acct.leverage = dict(a.leverage)
            for p in a.positions:
                pos = acct.positions[p.symbol] = Position(p.symbol)
                pos.size, pos.cost, pos.realised = p.size, p.cost, p.realised
                pos.open_buy, pos.open_sell, pos.order_im = p.open_buy, p.open_sell, p.order_im
        ch.epochs = dict(state.epochs)
        ch.marks = dict(state.marks)
        ch.index_of = dict(state.index_of)
        ch.trading.update(state.trading)
        for symbol, holders in state.holders.items():
            ch.holders[symbol] = set(holders)
        for r in state.orders:
            ch.orders[(r.symbol, r.order_id)] = OrderReservation(r.account, r.payer, r.side, r.qty, r.im,
                                                                 r.price, r.reduce_only)
            ch.order_index.setdefault((r.account, r.symbol), set()).add(r.order_id)
            if r.reduce_only:
                ch.reduce_only_index.setdefault((r.account, r.symbol), set()).add(r.order_id)
        for ix in state.liq_index:
            index = ch.liq_index[ix.symbol]
            # Sorted lists are valid heaps.
            index.lo = [(e.key, e.epoch, e.account) for e in ix.lo]
            index.hi = [(e.key, e.epoch, e.account) for e in ix.hi]
        ch.short_option_accounts = set(state.short_option_accounts)
        return ch

    def check_invariants(self) -> None:
        """Assert the platform identities (programmer errors if they fail)."""
        total_cost = 0
        for acct in self.accounts.values():
            for symbol, pos in acct.positions.items():
                if not self.specs[symbol].is_option:
                    total_cost += pos.cost
        # Option premiums move buyer -> seller and settlements net to zero per instrument,
        # so only futures cost shows up in the clearing account.
        assert self.clearing == -total_cost, f"clearing {self.clearing} != -sum(cost) {-total_cost}"
        cash = sum(a.cash for a in self.accounts.values())
        assert cash + self.clearing + self.fees + self.insurance + self.bad_debt == self.external_in, (
            "collateral not conserved")
        assert self.bad_debt <= 0 and self.insurance >= 0
        for symbol, holders in self.holders.items():
            assert sum(self.accounts[a].positions[symbol].size for a in holders) == 0, symbol
        assert self.reduce_only_index == {
            key: ro for key, ids in self.order_index.items()
            if (ro := {i for i in ids if self.orders[(key[1], i)].reduce_only})}, "reduce-only index"


def _account_state(acct: Account) -> AccountState:
    return AccountState(acct.id, acct.parent, acct.cash, acct.order_im, acct.epoch, acct.hold,
                        acct.hold_id, acct.hold_n,
                        [PositionState(s, p.size, p.cost, p.realised, p.open_buy, p.open_sell, p.order_im)
                         for s, p in sorted(acct.positions.items())],
                        dict(sorted(acct.leverage.items())))


def _linear_im(spec: InstrumentSpec, notional: int, leverage_ppm: int) -> int:
    """``linear_im`` with the first tier inline (the common case; same integer)."""
    t0 = spec.tiers[0]
    if notional <= t0.max_notional:
        rate = t0.im_ppm if t0.im_ppm >= leverage_ppm else leverage_ppm
        return -(-notional * rate // PPM)
    return linear_im(spec, notional, leverage_ppm)


def _linear_mm(spec: InstrumentSpec, notional: int) -> int:
    """``linear_mm`` with the first tier inline (the common case; same integer)."""
    t0 = spec.tiers[0]
    if notional <= t0.max_notional:
        return notional * t0.mm_ppm // PPM
    return linear_mm(spec, notional)


def intrinsic_value(spec: InstrumentSpec, price: int) -> int:
    """Return an option's intrinsic value per underlying unit at ``price``."""
    assert spec.strike is not None
    if spec.option_type == "call":
        return max(0, price - spec.strike)
    return max(0, spec.strike - price)


def adl_score(pnl: int, cost: int, notional: int, equity: int) -> int:
    """Return Binance's ADL ranking score: PnL% * leverage if profitable, PnL% / leverage if not.

    PnL% = ``pnl / |cost|`` and effective leverage = ``notional / equity``, in ppm of PnL%.
    """
    pnl_ppm = pnl * PPM // max(1, abs(cost))
    notional, equity = max(1, notional), max(1, equity)
    return pnl_ppm * notional // equity if pnl_ppm >= 0 else pnl_ppm * equity // notional


def allocate(total: int, weights: dict[str, int]) -> dict[str, int]:
    """Split ``total`` by ``weights`` exactly (largest remainder; ties by key)."""
    weight = sum(weights.values())
    if total <= 0 or weight <= 0:
        return {}
    shares = {k: total * w // weight for k, w in weights.items()}
    rest = total - sum(shares.values())
    order = sorted(weights, key=lambda k: (-(total * weights[k] % weight), k))
    for k in order[:rest]:
        shares[k] += 1
    return shares


def isolated_parent(account_id: str) -> str | None:
    """Return the cross account an isolated sub-account belongs to, or None."""
    if ISOLATED_SEP in account_id:
        return account_id.split(ISOLATED_SEP, 1)[0]
    return None


def isolated_account(account_id: str, symbol: str) -> str:
    """Return the id of ``account_id``'s isolated sub-account for ``symbol``."""
    return f"{account_id}{ISOLATED_SEP}{symbol}"


__all__ = ["Account", "Clearinghouse", "Posting", "allocate", "linear_margin"]
