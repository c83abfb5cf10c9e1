"""Issue 14, findings 1, 4 and 5: margin that prices the fill, whole-position tiers, losses socialised.

Each test failed before the fix it names (the pre-trade check ignored the
loss of trading away from the mark, charged a new tier only on the added
notional, let an isolated fill sweep the parent's wallet, made maintenance
jump at a tier edge, and left shortfalls as negative balances reported twice).
"""

from __future__ import annotations

from exchange.engine.messages import NewOrder, Trade
from exchange.margin.requirement import linear_margin, maintenance_amounts
from exchange.risk.codes import RiskCode
from exchange.risk.events import BadDebt, Deleveraged, InsuranceUsed, LiquidationStarted

from .helpers import BTC, NOW, USDC, ReplicaLedger, agree, equity, move, venue

PERP = "BTC-PERP"
TICK = 100_000


def order(id: str, account: str, side: str, qty: int, price: int | None, **kw: object) -> NewOrder:
    return NewOrder(id=id, account=account, side=side, qty=qty, price=price, **kw)  # type: ignore[arg-type]


def test_colluding_buy_far_above_the_mark_is_refused_and_nobody_pays() -> None:
    v = venue(accounts={"x": 1_000 * USDC, "y": 1_000 * USDC, "honest": 50_000 * USDC,
                        "mm": 50_000 * USDC})
    replica = ReplicaLedger()
    # The honest trader is short: the one ADL would pick if x went bankrupt.
    assert v.place(PERP, order("h1", "mm", "buy", 500, BTC)).code == 0
    assert v.place(PERP, order("h2", "honest", "sell", 500, BTC)).code == 0
    agree(v, replica)
    insurance, honest = v.clearing.insurance, equity(v, "honest")
    high = BTC * 109 // 100  # 65,400: inside the 10 % band
    assert v.place(PERP, order("y1", "y", "sell", 500, high)).code == 0
    r = v.place(PERP, order("x1", "x", "buy", 500, high))
    # 500 contracts = 0.5 BTC bought 5,400 above the mark: a 2,700 USDC loss on 1,000 of equity.
    assert r.code == RiskCode.INSUFFICIENT_MARGIN and "loss of its price" in r.message
    assert not any(type(e) is Trade for e in r.events)
    agree(v, replica)
    assert v.clearing.insurance == insurance and equity(v, "honest") == honest
    assert equity(v, "x") + equity(v, "y") <= 2_000 * USDC


def test_colluding_sell_far_below_the_mark_to_close_is_refused() -> None:
    v = venue(accounts={"x": 1_500 * USDC, "y": 5_000 * USDC, "mm": 50_000 * USDC})
    assert v.place(PERP, order("m", "mm", "sell", 1000, BTC)).code == 0
    assert v.place(PERP, order("x", "x", "buy", 1000, BTC)).code == 0  # x long 1 BTC at 40x
    low = BTC * 91 // 100
    assert v.place(PERP, order("y", "y", "buy", 1000, low)).code == 0
    # Closing at -9 % would realise 5,400 of loss on ~1,470 of equity: refused even though
    # it only reduces the position (closing orders must stay above maintenance margin).
    r = v.place(PERP, order("x2", "x", "sell", 1000, low, reduce_only=True))
    assert r.code == RiskCode.INSUFFICIENT_MARGIN
    assert v.clearing.accounts["x"].positions[PERP].size == 1000


def test_fill_at_the_order_price_never_leaves_equity_below_initial_margin() -> None:
    v = venue(accounts={"x": 5_000 * USDC, "y": 5_000 * USDC})
    high = BTC * 105 // 100
    assert v.place(PERP, order("y1", "y", "sell", 500, high)).code == 0
    r = v.place(PERP, order("x1", "x", "buy", 500, high))
    assert r.code == 0 and any(type(e) is Trade for e in r.events)
    eq, im, _ = v.clearing.valuation(v.clearing.accounts["x"])
    assert eq >= im


def test_isolated_buy_far_above_mark_cannot_sweep_the_parent_wallet() -> None:
    v = venue(accounts={"p": 2_000 * USDC, "y": 5_000 * USDC})
    iso = "p:iso:BTC-PERP"
    high = BTC * 109 // 100
    assert v.place(PERP, order("y1", "y", "sell", 500, high)).code == 0
    r = v.place(PERP, order("i1", iso, "buy", 500, high))
    assert r.code == RiskCode.INSUFFICIENT_MARGIN
    assert v.clearing.accounts["p"].cash == 2_000 * USDC


def test_isolated_fill_draws_no_more_than_its_order_reserved() -> None:
    v = venue(accounts={"p": 10_000 * USDC, "a": 50_000 * USDC})
    replica = ReplicaLedger()
    iso = "p:iso:BTC-PERP"
    assert v.place(PERP, order("m1", "a", "sell", 1000, BTC)).code == 0
    assert v.place(PERP, order("t1", iso, "buy", 1000, BTC)).code == 0
    parent_after_open = v.clearing.accounts["p"].cash
    move(v, "BTC", BTC - 300 * USDC, NOW + 1_000)  # the sub-account drops below its IM, above MM
    sub = v.clearing.accounts[iso]
    eq, im, mm = v.clearing.valuation(sub)
    assert mm <= eq < im
    # A small closing trade used to top the sub-account up to IM from the parent's cash.
    assert v.place(PERP, order("m2", "a", "buy", 1, BTC - 300 * USDC)).code == 0
    assert v.place(PERP, order("t2", iso, "sell", 1, BTC - 300 * USDC)).code == 0
    agree(v, replica)
    assert v.clearing.accounts["p"].cash == parent_after_open


def test_order_crossing_a_tier_is_charged_the_new_rate_on_the_whole_position() -> None:
    v = venue(accounts={"big": 22_000 * USDC, "mm": 10_000_000 * USDC})
    assert v.place(PERP, order("m1", "mm", "sell", 17_000, BTC)).code == 0
    assert v.place(PERP, order("b1", "big", "buy", 16_500, BTC)).code == 0  # 990,000 USDC: tier 1
    acct = v.clearing.accounts["big"]
    before = acct.cash
    # 500 more crosses 1,000,000: the whole position would need 5 % IM (51,000 USDC). Charging
    # 5 % on the added 30,000 only (1,515 with the fee) accepted it and left the account
    # below the new tier's maintenance at an unchanged mark.
    r = v.place(PERP, order("b2", "big", "buy", 500, BTC))
    assert r.code == RiskCode.INSUFFICIENT_MARGIN
    assert acct.positions[PERP].size == 16_500 and acct.cash == before
    assert v.clearing.health(acct) >= 0


def test_long_at_a_tier_edge_is_not_liquidated_by_a_favourable_move() -> None:
    v = venue(accounts={"big": 20_500 * USDC, "mm": 10_000_000 * USDC})
    assert v.place(PERP, order("m1", "mm", "sell", 16_600, BTC)).code == 0
    assert v.place(PERP, order("b1", "big", "buy", 16_600, BTC)).code == 0  # 996,000 USDC
    v.drain()
    move(v, "BTC", BTC + 250 * USDC, NOW + 1_000)  # notional 1,000,150: the next tier
    _, events = v.drain()
    assert not any(type(e) is LiquidationStarted and e.account == "big" for e in events)
    acct = v.clearing.accounts["big"]
    assert acct.positions[PERP].size == 16_600 and v.clearing.health(acct) > 0


def test_maintenance_is_continuous_across_tier_edges() -> None:
    spec = venue(accounts={}).specs[PERP]
    cum = maintenance_amounts(spec.tiers)
    assert cum[0] == 0
    for tier in spec.tiers[:-1]:
        edge = tier.max_notional * spec.contracts_per_unit // BTC  # contracts at the edge at 60,000
        below = linear_margin(spec, edge, BTC)[1]
        above = linear_margin(spec, edge + 1, BTC)[1]
        assert 0 <= above - below <= BTC // spec.contracts_per_unit  # one contract's notional at most


def test_shortfall_goes_to_insurance_then_write_off_once_never_a_negative_balance() -> None:
    v = venue(insurance=30 * USDC, accounts={"a": 10 * USDC})
    ch = v.clearing
    ch.begin()
    acct = ch.accounts["a"]
    # A flat account left 100 USDC short (e.g. a gap between two marks), nobody to deleverage.
    ch._credit(acct, -110 * USDC)
    ch.clearing += 110 * USDC
    ch._post("m:a", "clearing", 110 * USDC)
    ch.settle_losses(acct)
    ch.settle_losses(acct)  # a second call finds nothing left to record
    _, events = v.drain()
    assert [type(e) for e in events].count(BadDebt) == 1
    assert [e.amount for e in events if type(e) is InsuranceUsed] == [30 * USDC]
    assert [e.amount for e in events if type(e) is BadDebt] == [70 * USDC]
    assert acct.cash == 0 and ch.insurance == 0 and ch.bad_debt == -70 * USDC


def test_gap_liquidation_leaves_no_negative_balance_and_reports_no_bad_debt_when_adl_absorbs() -> None:
    v = venue(insurance=0, accounts={"short": 50_000 * USDC, "lev": 1_500 * USDC})
    replica = ReplicaLedger()
    assert v.place(PERP, order("s", "short", "sell", 1000, BTC)).code == 0
    assert v.place(PERP, order("l", "lev", "buy", 1000, BTC)).code == 0
    agree(v, replica)
    move(v, "BTC", BTC - 3_000 * USDC, NOW + 1_000)
    postings, events = v.drain()
    replica.apply(postings)
    assert any(type(e) is Deleveraged and e.charge > 0 for e in events)
    assert not any(type(e) is BadDebt for e in events)
    assert v.clearing.accounts["lev"].cash == 0 and v.clearing.bad_debt == 0
    agree(v, replica)


def test_liquidation_fill_is_never_worse_than_bankruptcy_beyond_the_cap() -> None:
    v = venue(insurance=1_000_000 * USDC, accounts={"lev": 1_500 * USDC, "mm": 50_000 * USDC,
                                                    "bid": 500_000 * USDC})
    assert v.place(PERP, order("m", "mm", "sell", 1000, BTC)).code == 0
    assert v.place(PERP, order("l", "lev", "buy", 1000, BTC)).code == 0
    # Only a deep bid: the full stage may not sell into it at the fund's expense.
    assert v.place(PERP, order("b", "bid", "buy", 1000, BTC - 5_000 * USDC)).code == 0
    v.drain()
    move(v, "BTC", BTC - 1_600 * USDC, NOW + 1_000)
    _, events = v.drain()
    fund_paid = sum(e.amount for e in events if type(e) is InsuranceUsed)
    # The cap: the liquidation fee rate (0.5 %) of the position's ~58,400 notional.
    assert fund_paid <= 58_400 * USDC * 5_000 // 1_000_000 + USDC


def test_limit_price_outside_the_band_around_the_mark_is_refused_even_after_walking_the_reference() -> None:
    v = venue(accounts={"x": 50_000 * USDC, "y": 50_000 * USDC})
    # Walk the engine's band (it follows the last trade) up twice, 9 % each time.
    price = BTC
    for i in range(2):
        price = price * 109 // 100 // TICK * TICK
        r1 = v.place(PERP, order(f"y{i}", "y", "sell", 10, price))
        r2 = v.place(PERP, order(f"x{i}", "x", "buy", 10, price))
        if r1.code or r2.code:
            break
    # The second step is 18.8 % above the 60,000 mark: outside its 10 % band.
    assert r1.code == RiskCode.PRICE_OUTSIDE_MARK_BAND and "of the mark" in r1.message
    assert v.books[PERP].reference_price is not None and v.books[PERP].reference_price <= BTC * 110 // 100
