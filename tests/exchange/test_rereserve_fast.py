"""Issue 17: the inlined reservation arithmetic equals the reference computation exactly.

``Clearinghouse.rereserve`` (after every fill) and ``_reservation`` (every new
order) inline the first risk-limit tier for linear instruments. The reference
below is the code they replaced, verbatim, through ``linear_im``/``linear_mm``:
after random positions, orders, leverage settings, marks and fills, both give
the same reservation for every order, the same ``order_im`` and the same set of
accounts whose ledger hold must be adjusted.
"""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.engine.messages import NewOrder
from exchange.instruments import PPM, InstrumentSpec, load_instruments
from exchange.margin.position import Position
from exchange.margin.requirement import linear_im, linear_mm
from exchange.risk.clearing import Account, Clearinghouse
from exchange.risk.codes import RiskCode

BTC = 60_000_000_000
USDC = 1_000_000
PERP = "BTC-PERP"
CALL = "BTC-27MAR26-60000-C"
ACCOUNTS = ("a", "b", "c")


def reference_reservation(ch: Clearinghouse, acct: Account, spec: InstrumentSpec, pos: Position, side: int,
                          qty: int, price: int, closable: int, gross: int) -> tuple[int, int, int, int]:
    """The pre-issue-17 ``_reservation`` (linear branch through linear_im / linear_mm)."""
    mark = ch.marks[spec.symbol]
    cpu = spec.contracts_per_unit
    closing = min(qty, closable)
    opening = qty - closing
    loss = -(-max(0, side * (price - mark)) * qty // cpu)
    fee = -(-qty * price * max(spec.taker_fee_ppm, 0) // (cpu * PPM))
    if spec.is_option:
        open_im = -(-opening * ch._unit_im(spec, side > 0, mark) // cpu)
        freed = closing * ch._unit_mm(spec, side < 0, mark) // cpu
    else:
        lev = acct.leverage.get(spec.symbol, 0)
        im_price = max(price, mark)
        open_im = 0
        if opening:
            open_im = (linear_im(spec, (gross + opening) * im_price // cpu, lev)
                       - linear_im(spec, gross * im_price // cpu, lev))
        freed = 0
        if closing:
            freed = (linear_mm(spec, closable * mark // cpu)
                     - linear_mm(spec, (closable - closing) * mark // cpu))
    reserve = max(0, open_im - freed + loss + fee)
    return reserve, opening, closable - closing, gross + opening


def reference_rereserve(ch: Clearinghouse, account_id: str, symbol: str) -> None:
    """The pre-issue-17 ``rereserve``, verbatim but for the reference reservation."""
    ids = ch.order_index.get((account_id, symbol))
    acct = ch.accounts.get(account_id)
    if not ids or acct is None or symbol not in ch.marks:
        return
    spec = ch.specs[symbol]
    pos = acct.positions[symbol]
    orders = sorted((not ch.orders[(symbol, i)].reduce_only, i) for i in ids)
    state = {1: [max(0, -pos.size), max(0, pos.size)], -1: [max(0, pos.size), max(0, -pos.size)]}
    for _, order_id in orders:
        res = ch.orders[(symbol, order_id)]
        closable, gross = state[res.side]
        im, _, closable, gross = reference_reservation(ch, acct, spec, pos, res.side, res.qty, res.price,
                                                       closable, gross)
        state[res.side] = [closable, gross]
        if im != res.im:
            ch.accounts[res.payer].order_im += im - res.im
            res.im = im
            ch.touched.add(res.payer)


def snapshot(ch: Clearinghouse) -> tuple[object, ...]:
    return (sorted((k, r.im, r.qty) for k, r in ch.orders.items()),
            sorted((a.id, a.order_im) for a in ch.accounts.values()), sorted(ch.touched))


order_st = st.tuples(
    st.sampled_from(ACCOUNTS),
    st.sampled_from((1, -1)),
    # Up to 40,000 contracts: 2.4M USDC of notional, so whole positions cross tier edges.
    st.one_of(st.integers(1, 50), st.integers(1, 40_000)),
    st.integers(-600, 600),  # price offset from the mark in ticks (the band is +-10 %)
    st.booleans(),
    st.booleans(),  # market order (worst price: the band edge)
)
fill_st = st.tuples(st.sampled_from(ACCOUNTS), st.sampled_from(ACCOUNTS),
                    st.integers(-40_000, 40_000).filter(bool), st.integers(-500, 500))


def build(symbol: str, orders: list[tuple[str, int, int, int, bool, bool]],
          leverage: dict[str, int], cash: int) -> Clearinghouse:
    specs = dict(load_instruments().instruments)
    ch = Clearinghouse(specs)
    spec = specs[symbol]
    mark = BTC if not spec.is_option else 2_000_000_000
    ch.marks[symbol] = mark
    ch.set_index("BTC", BTC)
    for name in (*ACCOUNTS, "mm"):
        ch.deposit(name, cash * USDC)
    for name, lev in leverage.items():
        if not spec.is_option:
            assert ch.set_leverage(name, symbol, lev)[0] == RiskCode.OK
    for n, (account, side, qty, offset, reduce_only, market) in enumerate(orders):
        price = None if market else max(spec.tick_size, mark + offset * spec.tick_size // 10)
        ch.check_new(symbol, NewOrder(id=f"o{n}", account=account, side="buy" if side > 0 else "sell",
                                      qty=qty, price=price, type="market" if market else "limit",
                                      reduce_only=reduce_only))
    return ch


@settings(max_examples=150, deadline=None)
@given(
    symbol=st.sampled_from((PERP, "ETH-PERP", CALL)),
    orders=st.lists(order_st, max_size=25),
    fills=st.lists(fill_st, min_size=1, max_size=6),
    leverage=st.dictionaries(st.sampled_from(ACCOUNTS), st.integers(1, 50), max_size=2),
    cash=st.sampled_from((1_000, 100_000, 10_000_000)),
    mark_move=st.integers(-900, 900),
)
def test_rereserve_after_random_fills_equals_the_reference(
        symbol: str, orders: list[tuple[str, int, int, int, bool, bool]],
        fills: list[tuple[str, str, int, int]], leverage: dict[str, int], cash: int,
        mark_move: int) -> None:
    ch = build(symbol, orders, leverage, cash)
    spec = ch.specs[symbol]
    for buyer, seller, qty, offset in fills:
        price = max(spec.tick_size, ch.marks[symbol] + offset * spec.tick_size)
        if buyer != seller:
            ch.transfer_position(symbol, ch.accounts[buyer], ch.accounts[seller], qty, price)
        ch.touched.clear()
        ref = copy.deepcopy(ch)
        for account in sorted({buyer, seller}):
            ch.rereserve(account, symbol)
            reference_rereserve(ref, account, symbol)
        assert snapshot(ch) == snapshot(ref)
    # A mark move re-prices every reservation: both still agree, on every account.
    ch.marks[symbol] = max(spec.tick_size, ch.marks[symbol] + mark_move * spec.tick_size)
    ch.version += 1
    ch.touched.clear()
    ref = copy.deepcopy(ch)
    for account in ACCOUNTS:
        ch.rereserve(account, symbol)
        reference_rereserve(ref, account, symbol)
    assert snapshot(ch) == snapshot(ref)


@settings(max_examples=300, deadline=None)
@given(
    symbol=st.sampled_from((PERP, "ETH-PERP", CALL)),
    size=st.integers(-60_000, 60_000),
    side=st.sampled_from((1, -1)),
    qty=st.integers(1, 60_000),
    offset=st.integers(-600, 600),
    closable=st.integers(0, 60_000),
    gross=st.integers(0, 100_000),
    leverage=st.one_of(st.none(), st.integers(1, 50)),
)
def test_reservation_of_a_new_order_equals_the_reference(
        symbol: str, size: int, side: int, qty: int, offset: int, closable: int, gross: int,
        leverage: int | None) -> None:
    ch = build(symbol, [], {"a": leverage} if leverage is not None else {}, 1_000)
    spec = ch.specs[symbol]
    acct = ch.accounts["a"]
    pos = Position(symbol)
    pos.size = size
    price = max(spec.tick_size, ch.marks[symbol] + offset * spec.tick_size)
    assert ch._reservation(acct, spec, pos, side, qty, price, closable, gross) == reference_reservation(
        ch, acct, spec, pos, side, qty, price, closable, gross)


venue_cmd_st = st.one_of(
    st.tuples(st.just("place"), st.sampled_from(ACCOUNTS), st.sampled_from(("buy", "sell")),
              st.integers(1, 30), st.integers(-20, 20), st.booleans(), st.booleans()),
    st.tuples(st.just("cancel"), st.integers(0, 60)),
    st.tuples(st.just("amend"), st.integers(0, 60), st.integers(1, 30)),
)


@settings(max_examples=60, deadline=None)
@given(cmds=st.lists(venue_cmd_st, max_size=40))
def test_reduce_only_index_after_random_venue_commands_equals_a_scan(cmds: list[tuple]) -> None:  # type: ignore[type-arg]
    from exchange.engine.messages import Amend

    from .helpers import venue

    v = venue(accounts={name: 5_000 * USDC for name in ACCOUNTS})
    ch = v.clearing
    spec = v.specs[PERP]
    for n, cmd in enumerate(cmds):
        if cmd[0] == "place":
            _, account, side, qty, offset, reduce_only, market = cmd
            price = None if market else BTC + offset * spec.tick_size
            v.place(PERP, NewOrder(id=f"o{n}", account=account, side=side, qty=qty, price=price,
                                   type="market" if market else "limit", reduce_only=reduce_only))
        elif cmd[0] == "cancel":
            v.cancel(PERP, f"o{cmd[1]}", None)
        else:
            v.amend(PERP, Amend(f"o{cmd[1]}", qty=cmd[2]))
        scan = {key: ro for key, ids in ch.order_index.items()
                if (ro := {i for i in ids if ch.orders[(key[1], i)].reduce_only})}
        assert ch.reduce_only_index == scan
        ch.check_invariants()
    # A snapshot restores the same index.
    v.drain()
    assert Clearinghouse.from_state(ch.specs, ch.state()).reduce_only_index == ch.reduce_only_index
