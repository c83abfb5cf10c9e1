"""Issue 14, finding 3 and position management: reduce-only that stays reduce-only, TP/SL, margin.

* Reduce-only orders never add up to more than the position (checked at
  entry and amend), shrink (resting) or go (stops) as the position shrinks,
  so no sequence of fills can flip a position through them.
* Take-profit / stop-loss attach to the position: one closes it, the other
  goes with it, and neither can open a fresh position.
* Isolated margin can be added and removed, and per-symbol leverage selects
  the initial-margin rate within the tier.
"""

from __future__ import annotations

from exchange.engine.messages import Amend, NewOrder, Rejected
from exchange.risk.codes import RiskCode

from .helpers import BTC, NOW, USDC, ReplicaLedger, agree, move, venue

PERP = "BTC-PERP"


def order(id: str, account: str, side: str, qty: int, price: int | None, **kw: object) -> NewOrder:
    return NewOrder(id=id, account=account, side=side, qty=qty, price=price, **kw)  # type: ignore[arg-type]


def long_position(v, account: str = "b", qty: int = 10) -> None:  # type: ignore[no-untyped-def]
    assert v.place(PERP, order(f"m{account}", "a", "sell", qty, BTC)).code == 0
    assert v.place(PERP, order(f"t{account}", account, "buy", qty, BTC)).code == 0
    assert v.clearing.accounts[account].positions[PERP].size == qty


def size(v, account: str) -> int:  # type: ignore[no-untyped-def]
    pos = v.clearing.accounts[account].positions.get(PERP)
    return 0 if pos is None else pos.size


def test_reduce_only_orders_beyond_the_position_are_refused_so_a_sweep_cannot_flip_it() -> None:
    v = venue(accounts={"a": 50_000 * USDC, "b": 1_000 * USDC, "c": 50_000 * USDC})
    long_position(v)
    assert v.place(PERP, order("r1", "b", "sell", 10, BTC + 100 * USDC, reduce_only=True)).code == 0
    for i in range(2, 6):
        r = v.place(PERP, order(f"r{i}", "b", "sell", 10, BTC + i * 100 * USDC, reduce_only=True))
        assert any(type(e) is Rejected and e.reason == "reduce_only_would_increase" for e in r.events)
    assert v.place(PERP, order("sweep", "c", "buy", 50, BTC + 600 * USDC, tif="IOC")).code == 0
    assert size(v, "b") == 0  # closed, not flipped into a 40-contract short


def test_resting_reduce_only_order_shrinks_with_the_position() -> None:
    v = venue(accounts={"a": 50_000 * USDC, "b": 1_000 * USDC, "c": 50_000 * USDC})
    long_position(v)
    assert v.place(PERP, order("r", "b", "sell", 10, BTC + 200 * USDC, reduce_only=True)).code == 0
    # A plain sell closes 6 of the 10: the reduce-only order must shrink to 4.
    assert v.place(PERP, order("bid", "c", "buy", 6, BTC)).code == 0
    assert v.place(PERP, order("s", "b", "sell", 6, BTC)).code == 0
    assert size(v, "b") == 4
    assert v.books[PERP].orders["r"].qty == 4 and v.clearing.orders[(PERP, "r")].qty == 4
    assert v.place(PERP, order("sweep", "c", "buy", 10, BTC + 200 * USDC, tif="IOC")).code == 0
    assert size(v, "b") == 0


def test_reduce_only_amend_beyond_the_position_is_refused() -> None:
    v = venue(accounts={"a": 50_000 * USDC, "b": 1_000 * USDC})
    long_position(v)
    assert v.place(PERP, order("r", "b", "sell", 5, BTC + 200 * USDC, reduce_only=True)).code == 0
    r = v.amend(PERP, Amend("r", qty=20, account="b"))
    assert r.code == RiskCode.REDUCE_ONLY_EXCEEDS_POSITION
    assert v.books[PERP].orders["r"].qty == 5


def test_reduce_only_stop_is_cancelled_when_the_position_closes_and_never_opens_one() -> None:
    v = venue(accounts={"a": 50_000 * USDC, "b": 1_000 * USDC, "c": 50_000 * USDC})
    long_position(v)
    stop = order("sl", "b", "sell", 10, None, type="stop_market", trigger_price=BTC - 500 * USDC,
                 trigger="mark", reduce_only=True)
    assert v.place(PERP, stop).code == 0 and "sl" in v.books[PERP].stops
    assert v.place(PERP, order("bid", "c", "buy", 10, BTC)).code == 0
    assert v.place(PERP, order("close", "b", "sell", 10, BTC)).code == 0
    assert size(v, "b") == 0 and "sl" not in v.books[PERP].stops
    assert v.place(PERP, order("bid2", "c", "buy", 10, BTC - 600 * USDC)).code == 0
    move(v, "BTC", BTC - 600 * USDC, NOW + 1_000)
    assert size(v, "b") == 0  # the stop, had it fired, would have opened a 10-contract short


def test_take_profit_closes_the_position_and_cancels_the_stop_loss() -> None:
    v = venue(accounts={"a": 50_000 * USDC, "b": 1_000 * USDC, "c": 50_000 * USDC})
    replica = ReplicaLedger()
    long_position(v)
    code, message = v.set_tpsl("b", PERP, BTC + 500 * USDC, BTC - 500 * USDC)
    assert code == 0, message
    assert v.place(PERP, order("bid", "c", "buy", 10, BTC + 500 * USDC)).code == 0
    move(v, "BTC", BTC + 600 * USDC, NOW + 1_000)  # take-profit: sold into c's bid
    agree(v, replica)
    assert size(v, "b") == 0 and ("b", PERP) not in v.tpsl
    assert v.place(PERP, order("bid2", "c", "buy", 10, BTC - 600 * USDC)).code == 0
    move(v, "BTC", BTC - 600 * USDC, NOW + 2_000)  # the stop-loss went with it: nothing opens
    assert size(v, "b") == 0
    agree(v, replica)


def test_tpsl_follows_the_position_size_and_goes_when_it_is_closed() -> None:
    v = venue(accounts={"a": 50_000 * USDC, "b": 1_000 * USDC, "c": 50_000 * USDC})
    long_position(v)
    assert v.set_tpsl("b", PERP, None, BTC - 500 * USDC)[0] == 0
    assert v.place(PERP, order("bid", "c", "buy", 4, BTC)).code == 0
    assert v.place(PERP, order("s", "b", "sell", 4, BTC)).code == 0  # 6 left
    assert v.place(PERP, order("bid2", "c", "buy", 20, BTC - 600 * USDC)).code == 0
    move(v, "BTC", BTC - 600 * USDC, NOW + 1_000)
    assert size(v, "b") == 0  # closed the 6 it had then, not 10
    assert v.set_tpsl("b", PERP, None, BTC - 900 * USDC)[0] == RiskCode.INVALID_AMOUNT  # nothing to attach to


def test_tpsl_on_the_wrong_side_of_the_mark_is_refused() -> None:
    v = venue(accounts={"a": 50_000 * USDC, "b": 1_000 * USDC})
    long_position(v)
    assert v.set_tpsl("b", PERP, BTC - 100 * USDC, None)[0] == RiskCode.INVALID_AMOUNT
    assert v.set_tpsl("b", PERP, None, BTC + 100 * USDC)[0] == RiskCode.INVALID_AMOUNT
    assert ("b", PERP) not in v.tpsl


def test_isolated_margin_added_and_removed_down_to_initial_margin() -> None:
    v = venue(accounts={"a": 50_000 * USDC, "p": 10_000 * USDC})
    replica = ReplicaLedger()
    iso = "p:iso:BTC-PERP"
    assert v.place(PERP, order("m", "a", "sell", 1000, BTC)).code == 0
    assert v.place(PERP, order("t", iso, "buy", 1000, BTC)).code == 0
    sub = v.clearing.accounts[iso]
    assert v.adjust_isolated_margin("p", PERP, 500 * USDC)[0] == 0
    agree(v, replica)
    cash = sub.cash
    eq, im, _ = v.clearing.valuation(sub)
    code, _ = v.adjust_isolated_margin("p", PERP, -(eq - im + 1))
    assert code == RiskCode.POSITION_MARGIN_LOCKED and sub.cash == cash
    assert v.adjust_isolated_margin("p", PERP, -(eq - im))[0] == 0
    assert v.adjust_isolated_margin("p", PERP, 10**9 * USDC)[0] == RiskCode.INSUFFICIENT_FREE_COLLATERAL
    agree(v, replica)
    assert v.clearing.valuation(sub)[0] == v.clearing.valuation(sub)[1]


def test_leverage_selects_the_initial_margin_rate_and_refuses_what_the_account_cannot_carry() -> None:
    v = venue(accounts={"a": 50_000 * USDC, "b": 2_000 * USDC})
    assert v.set_leverage("b", PERP, 10)[0] == 0
    # 10x: 10 % IM on 60,000 = 6,000 USDC, more than b has.
    r = v.place(PERP, order("o", "b", "buy", 1000, BTC))
    assert r.code == RiskCode.INSUFFICIENT_MARGIN
    assert v.set_leverage("b", PERP, 50)[0] == 0
    assert v.place(PERP, order("m", "a", "sell", 1000, BTC)).code == 0
    assert v.place(PERP, order("o", "b", "buy", 1000, BTC)).code == 0
    assert v.clearing.valuation(v.clearing.accounts["b"])[1] == 1_200 * USDC
    assert v.set_leverage("b", PERP, 5)[0] == RiskCode.INSUFFICIENT_MARGIN  # 12,000 IM: refused
    assert v.set_leverage("b", PERP, 51)[0] == RiskCode.INVALID_LEVERAGE
    assert v.set_leverage("b", PERP, 0)[0] == RiskCode.INVALID_LEVERAGE
    assert v.set_leverage("b", "BTC-27MAR26-60000-C", 5)[0] == RiskCode.INVALID_LEVERAGE
