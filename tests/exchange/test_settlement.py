"""Issue 14, findings 2 and 7, and the stale-index check: settlement prices and index freshness.

* With no index in the settlement window the old fallback read the option's
  own mark (its premium) as the underlying: now settlement waits, halted,
  until an index exists.
* The settlement average ignored the index in force when the window opened,
  so one late tick set the price: now that value counts for as long as it was
  in force.
* An index is re-checked for staleness at every use: risk-increasing orders
  are refused on a stale one.
"""

from __future__ import annotations

from exchange.engine.messages import NewOrder
from exchange.prices import Twap
from exchange.risk.codes import RiskCode
from exchange.risk.events import SettlementDelayed

from .helpers import BTC, NOW, USDC, ReplicaLedger, agree, move, venue

PUT = "BTC-27MAR26-50000-P"
FUT = "BTC-27MAR26"
PERP = "BTC-PERP"


def order(id: str, account: str, side: str, qty: int, price: int | None, **kw: object) -> NewOrder:
    return NewOrder(id=id, account=account, side=side, qty=qty, price=price, **kw)  # type: ignore[arg-type]


def test_option_expiring_on_a_stale_index_is_halted_not_settled_on_its_own_premium() -> None:
    v = venue(accounts={"seller": 100_000 * USDC, "buyer": 20_000 * USDC})
    replica = ReplicaLedger()
    premium = v.clearing.marks[PUT]
    assert v.place(PUT, order("s", "seller", "sell", 10, premium)).code == 0
    assert v.place(PUT, order("b", "buyer", "buy", 10, premium)).code == 0
    agree(v, replica)
    expiry = v.specs[PUT].expiry_ms
    assert expiry is not None
    cash = {a: v.clearing.accounts[a].cash for a in ("seller", "buyer")}
    # The last index is from January: nothing in the window, nothing fresh at expiry.
    assert v.expire(PUT, expiry) == RiskCode.SETTLEMENT_PENDING
    _, events = v.drain()
    assert [e.symbol for e in events if type(e) is SettlementDelayed] == [PUT]
    assert not v.settlement_history or all(e.symbol != PUT for e in v.settlement_history)
    assert v.clearing.accounts["buyer"].positions[PUT].size == 10  # nothing moved
    assert {a: v.clearing.accounts[a].cash for a in cash} == cash
    assert v.place(PUT, order("late", "buyer", "buy", 1, premium)).code == RiskCode.INSTRUMENT_NOT_TRADING
    v.advance(expiry + 1_000)  # still no index: still pending, no second event for it
    _, events = v.drain()
    assert not any(type(e) is SettlementDelayed and e.symbol == PUT for e in events)
    # The first fresh index after expiry settles it: 48,000 puts the 50,000 put 2,000 in the money.
    move(v, "BTC", 48_000 * USDC, expiry + 60_000)
    v.advance(expiry + 60_000)
    agree(v, replica)
    settled = {e.symbol: e.price for e in v.settlement_history}
    assert settled[PUT] == 48_000 * USDC
    # 10 contracts of 0.1 BTC, 2,000 USDC each in the money.
    assert v.clearing.accounts["buyer"].cash == cash["buyer"] + 2_000 * USDC
    assert PUT not in v.clearing.accounts["buyer"].positions


def test_settlement_average_counts_the_index_in_force_when_the_window_opens() -> None:
    v = venue(accounts={"a": 100_000 * USDC, "b": 100_000 * USDC})
    spec = v.specs[FUT]
    assert spec.expiry_ms is not None
    start, end = spec.expiry_ms - spec.settlement_window_ms, spec.expiry_ms
    move(v, "BTC", BTC, start - 1_000)  # in force for its 10 s of freshness: 9 s inside the window
    move(v, "BTC", 70_000 * USDC, end - 1_000)  # one late tick, in force for the last second
    v.advance(end)
    settled = {e.symbol: e.price for e in v.settlement_history}
    # (60,000 * 9 s + 70,000 * 1 s) / 10 s; the old average took the late tick alone (70,000).
    assert settled[FUT] == 61_000 * USDC


def test_twap_weights_each_index_for_the_time_it_was_in_force_and_no_longer() -> None:
    twap = Twap(window_start_ms=1_000_000, expiry_ms=2_800_000)
    twap.sample(900_000, 100)  # before the window, stale long before it opens: no weight
    twap.sample(1_500_000, 200)
    twap.sample(2_000_000, 400)
    assert twap.price(hold_ms=10_000) == 300  # 10 s each
    assert twap.price() == (100 * 500_000 + 200 * 500_000 + 400 * 800_000) // 1_800_000  # unbounded
    empty = Twap(window_start_ms=1_000_000, expiry_ms=2_800_000)
    empty.sample(900_000, 100)
    assert empty.price(hold_ms=10_000) is None


def test_stale_index_refuses_risk_increasing_orders_but_lets_positions_close() -> None:
    v = venue(accounts={"a": 10_000 * USDC, "b": 10_000 * USDC, "c": 10_000 * USDC})
    assert v.place(PERP, order("m", "a", "sell", 100, BTC)).code == 0
    assert v.place(PERP, order("t", "b", "buy", 100, BTC)).code == 0
    later_ns = (NOW + 180_000) * 1_000_000  # three minutes after the last quotes
    r = v.place(PERP, order("o", "c", "buy", 10, BTC, ts=later_ns))
    assert r.code == RiskCode.INDEX_STALE and "stale" in r.message
    assert v.place(PERP, order("c1", "a", "buy", 100, BTC, ts=later_ns, reduce_only=True)).code == 0
    # The same order with fresh quotes passes.
    move(v, "BTC", BTC, NOW + 180_000)
    assert v.place(PERP, order("o2", "c", "buy", 10, BTC - 100 * USDC, ts=later_ns)).code == 0
