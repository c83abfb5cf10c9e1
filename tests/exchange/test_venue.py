"""Behaviour of the venue: pre-trade risk, fees, reduce-only, liquidation, funding, expiry."""

from __future__ import annotations

import pytest

from exchange.engine.messages import Amend, NewOrder, Rejected, Trade
from exchange.risk.codes import RiskCode
from exchange.risk.events import Deleveraged, InsuranceUsed, LiquidationOrder, LiquidationStarted

from .helpers import BTC, NOW, USDC, ReplicaLedger, agree, equity, move, venue

PERP = "BTC-PERP"


def order(id: str, account: str, side: str, qty: int, price: int | None = BTC, **kw: object) -> NewOrder:
    return NewOrder(id=id, account=account, side=side, qty=qty, price=price, **kw)  # type: ignore[arg-type]


def trade(v, maker: str, taker: str, qty: int, price: int = BTC, symbol: str = PERP) -> None:
    r1 = v.place(symbol, order(f"m{maker}{v.clearing.seq}", maker, "sell", qty, price))
    assert r1.code == 0, r1.message
    r2 = v.place(symbol, order(f"t{v.clearing.seq}{taker}", taker, "buy", qty, price))
    assert r2.code == 0, r2.message
    assert any(type(e) is Trade for e in r2.events)


def test_order_without_enough_margin_is_rejected_with_2001_and_reserves_nothing() -> None:
    v = venue(accounts={"a": 100 * USDC})
    # 1 BTC notional (1000 contracts) needs 2 % = 1,200 USDC initial margin.
    r = v.place(PERP, order("o1", "a", "buy", 1000, BTC - 1_000_000_000))
    assert r.code == RiskCode.INSUFFICIENT_MARGIN and "needs initial margin" in r.message
    assert not v.clearing.orders and v.clearing.accounts["a"].order_im == 0
    assert v.books[PERP].orders == {}


def test_order_within_margin_rests_and_reserves_initial_margin_plus_fee() -> None:
    v = venue(accounts={"a": 2_000 * USDC})
    r = v.place(PERP, order("o1", "a", "buy", 1000, BTC))
    assert r.code == 0
    # 60,000 notional * (2 % + 0.05 % taker fee) = 1,230 USDC
    assert v.clearing.accounts["a"].order_im == 1_230 * USDC
    v.cancel(PERP, "o1", "a")
    assert v.clearing.accounts["a"].order_im == 0 and not v.clearing.orders


def test_trade_charges_taker_fee_and_pays_maker_rebate_from_fees() -> None:
    v = venue(accounts={"m": 10_000 * USDC, "t": 10_000 * USDC})
    replica = ReplicaLedger()
    trade(v, "m", "t", 1000)
    agree(v, replica)
    ch = v.clearing
    assert ch.accounts["t"].cash == 10_000 * USDC - 30 * USDC  # 0.05 % of 60,000
    assert ch.accounts["m"].cash == 10_000 * USDC + 6 * USDC  # 0.01 % rebate
    assert ch.fees == 24 * USDC


def test_closing_at_a_profit_realises_pnl_through_clearing() -> None:
    v = venue(accounts={"a": 10_000 * USDC, "b": 10_000 * USDC, "c": 10_000 * USDC})
    replica = ReplicaLedger()
    trade(v, "a", "b", 1000)  # b long 1 BTC at 60,000
    move(v, "BTC", BTC + 1_000 * USDC, NOW + 1000)
    trade(v, "c", "a", 0 + 1000, BTC + 1_000 * USDC)  # a buys back: a closes short at 61,000
    agree(v, replica)
    a = v.clearing.accounts["a"]
    assert "BTC-PERP" not in a.positions or a.positions[PERP].size == 0
    # a: rebate 6 (maker) - 1,000 loss - taker fee 30.5
    assert a.cash == 10_000 * USDC + 6 * USDC - 1_000 * USDC - 30_500_000
    assert v.clearing.clearing == -sum(p.cost for x in v.clearing.accounts.values()
                                       for p in x.positions.values())


def test_reduce_only_is_enforced_through_the_position_hook() -> None:
    v = venue(accounts={"a": 10_000 * USDC, "b": 10_000 * USDC})
    trade(v, "a", "b", 1000)  # b long 1000
    r = v.place(PERP, order("r1", "b", "buy", 10, BTC, reduce_only=True))
    assert any(type(e) is Rejected and e.reason == "reduce_only_would_increase" for e in r.events)
    r = v.place(PERP, order("r2", "b", "sell", 500, BTC + 100_000_000, reduce_only=True))
    assert not any(type(e) is Rejected for e in r.events)
    assert v.clearing.orders[(PERP, "r2")].im == 0


def test_amend_to_larger_size_needs_margin_for_the_difference() -> None:
    v = venue(accounts={"a": 1_300 * USDC})
    assert v.place(PERP, order("o1", "a", "buy", 1000, BTC - 1_000 * USDC)).code == 0
    r = v.amend(PERP, Amend("o1", qty=5000, account="a"))
    assert r.code == RiskCode.INSUFFICIENT_MARGIN
    assert v.books[PERP].orders["o1"].qty == 1000
    r = v.amend(PERP, Amend("o1", qty=500, account="a"))
    assert r.code == 0 and v.clearing.orders[(PERP, "o1")].qty == 500
    assert v.clearing.accounts["a"].order_im == v.clearing.orders[(PERP, "o1")].im


def test_crash_liquidates_partially_when_equity_remains() -> None:
    v = venue(accounts={"mm": 200_000 * USDC, "lev": 1_500 * USDC, "bid": 200_000 * USDC})
    replica = ReplicaLedger()
    trade(v, "mm", "lev", 1000)  # lev long 1 BTC with 1,470 USDC: ~41x
    # Liquidity below for the liquidation to hit.
    for i, px in enumerate(range(BTC - 900 * USDC, BTC - 1_500 * USDC, -100 * USDC)):
        assert v.place(PERP, order(f"bid{i}", "bid", "buy", 300, px)).code == 0
    agree(v, replica)
    move(v, "BTC", BTC - 900 * USDC, NOW + 1000)
    agree(v, replica)
    lev = v.clearing.accounts["lev"]
    size = lev.positions[PERP].size if PERP in lev.positions else 0
    assert 0 < size < 1000  # partial
    assert v.clearing.health(lev) >= 0


def test_gap_below_bankruptcy_uses_insurance_then_adl_when_book_is_empty() -> None:
    v = venue(insurance=50 * USDC, accounts={"short": 50_000 * USDC, "lev": 1_500 * USDC,
                                             "short2": 50_000 * USDC})
    replica = ReplicaLedger()
    trade(v, "short", "lev", 600)
    trade(v, "short2", "lev", 400)
    agree(v, replica)
    move(v, "BTC", BTC - 3_000 * USDC, NOW + 1000)  # far past bankruptcy (~ -1,530 USDC)
    postings, events = v.drain()
    replica.apply(postings)
    kinds = {type(e) for e in events}
    assert LiquidationStarted in kinds and LiquidationOrder in kinds
    assert InsuranceUsed in kinds and Deleveraged in kinds
    lev = v.clearing.accounts["lev"]
    assert not any(p.size for p in lev.positions.values()) and lev.cash == 0
    assert v.clearing.insurance == 0
    # All of lev's collateral (1,500 - 30 fee) and the whole fund went to the shorts.
    assert equity(v, "short") + equity(v, "short2") == 100_000 * USDC + 6 * USDC + 1_470 * USDC \
        + 50 * USDC
    agree(v, replica)


def test_funding_is_zero_sum_and_longs_pay_when_perp_trades_above_index() -> None:
    v = venue(accounts={"a": 10_000 * USDC, "b": 10_000 * USDC, "c": 10_000 * USDC})
    replica = ReplicaLedger()
    trade(v, "a", "b", 700)
    trade(v, "a", "c", 301)
    agree(v, replica)
    before = {k: v.clearing.accounts[k].cash for k in "abc"}
    v.fund(PERP, NOW)
    agree(v, replica)
    after = {k: v.clearing.accounts[k].cash for k in "abc"}
    assert sum(after.values()) == sum(before.values())
    assert after["a"] > before["a"] and after["b"] < before["b"] and after["c"] < before["c"]
    assert v.funding_history and v.funding_history[-1].rate_ppm == 100  # interest only


def test_future_expiry_settles_at_twap_and_stops_trading() -> None:
    v = venue(accounts={"a": 10_000 * USDC, "b": 10_000 * USDC})
    fut = "BTC-27MAR26"
    spec = v.specs[fut]
    assert spec.expiry_ms is not None
    trade(v, "a", "b", 100, symbol=fut)
    replica = ReplicaLedger()
    agree(v, replica)
    start = spec.expiry_ms - spec.settlement_window_ms
    move(v, "BTC", BTC, start)
    move(v, "BTC", BTC + 2_000 * USDC, start + spec.settlement_window_ms // 2)
    v.advance(spec.expiry_ms)
    agree(v, replica)
    settled = {e.symbol: e for e in v.settlement_history}
    assert settled[fut].price == BTC + 1_000 * USDC  # half the window at each price
    assert not v.clearing.trading[fut]
    assert v.place(fut, order("late", "a", "buy", 1, BTC)).code == RiskCode.INSTRUMENT_NOT_TRADING
    assert v.clearing.accounts["b"].positions.get(fut) is None


def test_option_buyer_pays_premium_upfront_and_settles_on_intrinsic_value() -> None:
    v = venue(accounts={"seller": 50_000 * USDC, "buyer": 10_000 * USDC})
    call = "BTC-27MAR26-60000-C"
    replica = ReplicaLedger()
    premium_price = v.clearing.marks[call]
    assert v.place(call, order("s", "seller", "sell", 10, premium_price)).code == 0
    assert v.place(call, order("b", "buyer", "buy", 10, premium_price)).code == 0
    agree(v, replica)
    premium = 10 * premium_price // 10
    assert v.clearing.accounts["buyer"].cash == 10_000 * USDC - premium - premium * 500 // 10**6
    spec = v.specs[call]
    assert spec.expiry_ms is not None
    move(v, "BTC", BTC + 5_000 * USDC, spec.expiry_ms - 1000)
    v.advance(spec.expiry_ms)
    agree(v, replica)
    # 10 contracts of 0.1 BTC, 5,000 USDC in the money.
    assert v.clearing.accounts["buyer"].cash == 10_000 * USDC - premium - premium * 500 // 10**6 \
        + 5_000 * USDC


def test_option_seller_needs_margin() -> None:
    v = venue(accounts={"poor": 100 * USDC})
    call = "BTC-27MAR26-60000-C"
    r = v.place(call, order("s", "poor", "sell", 10, v.clearing.marks[call]))
    assert r.code == RiskCode.INSUFFICIENT_MARGIN


def test_isolated_position_is_funded_from_parent_and_returned_when_closed() -> None:
    v = venue(accounts={"a": 10_000 * USDC, "b": 10_000 * USDC})
    replica = ReplicaLedger()
    iso = "b:iso:BTC-PERP"
    assert v.place(PERP, order("m1", "a", "sell", 1000, BTC)).code == 0
    assert v.place(PERP, order("t1", iso, "buy", 1000, BTC)).code == 0
    agree(v, replica)
    sub = v.clearing.accounts[iso]
    assert sub.positions[PERP].size == 1000
    assert sub.cash >= 1_200 * USDC  # initial margin moved from the parent
    assert v.place(PERP, order("m2", "a", "buy", 1000, BTC)).code == 0
    assert v.place(PERP, order("t2", iso, "sell", 1000, BTC)).code == 0
    agree(v, replica)
    assert sub.cash == 0 and not sub.positions


@pytest.mark.parametrize("rate_source", ["premium"])
def test_funding_rate_is_clamped(rate_source: str) -> None:
    v = venue(accounts={})
    v.premium[PERP] = [50_000 * 10, 10]  # 5 % premium per sample
    assert v.funding_rate(PERP) == v.specs[PERP].funding_cap_ppm
