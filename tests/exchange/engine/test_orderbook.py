"""Behaviour of the matching core, one rule per test."""

from typing import Any

import pytest
from engine_projection import final_book, project

from exchange.engine.codes import ResultCode
from exchange.engine.instrument import Instrument
from exchange.engine.messages import (
    Amend,
    BestBidOffer,
    BookRequest,
    Cancel,
    CancelAll,
    Command,
    DepthSnapshot,
    DepthUpdate,
    Event,
    NewOrder,
    PriceUpdate,
    Rejected,
    SetReference,
    Side,
    Trade,
)
from exchange.engine.orderbook import CorruptState, OrderBook

PLAIN = Instrument()


def run(book: OrderBook, *cmds: Command) -> list[Event]:
    """Apply commands, checking invariants after each; return all events."""
    events: list[Event] = []
    for cmd in cmds:
        events += book.submit(cmd)
        book.validate_internal_state()
    return events


def core(events: list[Event]) -> list[tuple[Any, ...]]:
    return [p for p in map(project, events) if p is not None]


def limit(id: str, side: Side, price: int, qty: int, account: str = "a", **kw: Any) -> NewOrder:
    return NewOrder(id, account, side, qty, type="limit", price=price, **kw)


def market(id: str, side: Side, qty: int, account: str = "t", **kw: Any) -> NewOrder:
    return NewOrder(id, account, side, qty, type="market", **kw)


def trades(events: list[Event]) -> list[tuple[str, str, int, int]]:
    return [(e.maker, e.taker, e.price, e.qty) for e in events if isinstance(e, Trade)]


def rejection(events: list[Event]) -> ResultCode:
    [r] = [e for e in events if isinstance(e, Rejected)]
    return ResultCode(r.code)


def assert_unchanged(book: OrderBook, cmd: Command, code: ResultCode) -> None:
    """A rejected command emits exactly one rejection and changes nothing else."""
    before = book.state()
    events = run(book, cmd)
    assert [type(e) for e in events] == [Rejected]
    assert rejection(events) is code
    after = book.state()
    assert after.bids == before.bids and after.asks == before.asks
    assert after.stops == before.stops and after.next_oid == before.next_oid
    assert after.reference_price == before.reference_price


# ------------------------------------------------------------ limit orders


def test_limit_order_without_cross_rests_in_price_time_priority() -> None:
    book = OrderBook(PLAIN)
    run(book, limit("b1", "buy", 100, 1), limit("b2", "buy", 101, 1), limit("b3", "buy", 100, 2),
        limit("s1", "sell", 105, 1))
    assert final_book(book) == [("b2", "buy", 101, 1), ("b1", "buy", 100, 1),
                                ("b3", "buy", 100, 2), ("s1", "sell", 105, 1)]
    assert (book.best_bid(), book.best_ask()) == (101, 105)


def test_aggressive_limit_fills_across_many_levels_at_maker_prices() -> None:
    book = OrderBook(PLAIN)
    run(book, *[limit(f"s{p}", "sell", p, 2, account=f"m{p}") for p in range(100, 110)])
    events = run(book, limit("t", "buy", 104, 11, account="t"))
    assert trades(events) == [("s100", "t", 100, 2), ("s101", "t", 101, 2), ("s102", "t", 102, 2),
                              ("s103", "t", 103, 2), ("s104", "t", 104, 2)]
    assert final_book(book)[0] == ("t", "buy", 104, 1)
    assert book.best_ask() == 105


def test_partial_fill_of_maker_keeps_its_priority() -> None:
    book = OrderBook(PLAIN)
    run(book, limit("s1", "sell", 100, 5), limit("s2", "sell", 100, 5))
    run(book, limit("t1", "buy", 100, 3, account="t"))
    events = run(book, limit("t2", "buy", 100, 3, account="t"))
    assert trades(events) == [("s1", "t2", 100, 2), ("s2", "t2", 100, 1)]


def test_exact_fill_empties_level_and_rests_nothing() -> None:
    book = OrderBook(PLAIN)
    run(book, limit("s1", "sell", 100, 5))
    events = run(book, limit("t", "buy", 100, 5, account="t"))
    assert trades(events) == [("s1", "t", 100, 5)]
    assert final_book(book) == [] and book.best_ask() is None


def test_ioc_remainder_is_cancelled_with_reason_ioc() -> None:
    book = OrderBook(PLAIN)
    run(book, limit("s1", "sell", 100, 2))
    events = run(book, limit("t", "buy", 101, 5, account="t", tif="IOC"))
    assert core(events)[-1] == ("cancelled", "t", 3, "ioc")
    assert final_book(book) == []


@pytest.mark.parametrize(
    ("cmd", "code"),
    [
        (limit("x", "buy", 101, 2), ResultCode.BAD_TICK),
        (limit("x", "buy", 100, 3), ResultCode.BAD_LOT),
        (limit("x", "buy", 100, 0), ResultCode.BAD_QTY),
        (limit("x", "buy", 100, 1000), ResultCode.BAD_QTY),
        (limit("x", "buy", 0, 2), ResultCode.BAD_PRICE),
        (NewOrder("x", "a", "buy", 2, type="limit"), ResultCode.BAD_PRICE),
        (NewOrder("x", "a", "buy", 2, type="market", price=100), ResultCode.BAD_PRICE),
        (NewOrder("x", "a", "buy", 2, type="market", tif="POST_ONLY"), ResultCode.BAD_ORDER_TYPE),
        (NewOrder("x", "a", "up", 2, type="limit", price=100), ResultCode.BAD_SIDE),  # type: ignore[arg-type]
        (NewOrder("", "a", "buy", 2, type="limit", price=100), ResultCode.BAD_ID),
        (NewOrder("x", "a", "buy", 2, type="limit", price=100, tif="GTD"), ResultCode.BAD_ORDER_TYPE),  # type: ignore[arg-type]
        (limit("x", "buy", 100, 2, reduce_only=True), ResultCode.REDUCE_ONLY_UNAVAILABLE),
        (limit("b1", "buy", 90, 2), ResultCode.DUPLICATE_ORDER_ID),
        (Cancel("nope"), ResultCode.UNKNOWN_ORDER),
        (Cancel("b1", account="other"), ResultCode.UNKNOWN_ORDER),
        (Amend("b1"), ResultCode.INVALID_COMMAND),
        (Amend("b1", price=91), ResultCode.BAD_TICK),
        (Amend("b1", qty=3), ResultCode.BAD_LOT),
        (Amend("nope", qty=2), ResultCode.UNKNOWN_ORDER),
    ],
)
def test_invalid_command_is_rejected_with_code_and_changes_nothing(
    cmd: Command, code: ResultCode
) -> None:
    book = OrderBook(Instrument(tick_size=2, lot_size=2, min_qty=2, max_qty=100))
    run(book, limit("b1", "buy", 100, 4), limit("s1", "sell", 110, 4))
    assert_unchanged(book, cmd, code)


def test_rejection_message_says_what_the_value_was() -> None:
    book = OrderBook(Instrument(tick_size=5))
    [event] = run(book, limit("x", "buy", 1003, 1))
    assert isinstance(event, Rejected)
    assert event.reason == "bad_tick" and "1003" in event.message and "5" in event.message


def test_duplicate_id_is_allowed_again_after_the_order_is_gone() -> None:
    book = OrderBook(PLAIN)
    run(book, limit("o1", "buy", 100, 1), Cancel("o1"))
    assert core(run(book, limit("o1", "buy", 100, 1)))[0] == ("accepted", "o1")


# ------------------------------------------------------- band and markets


def test_limit_outside_band_is_rejected() -> None:
    book = OrderBook(Instrument(band_bps=100, reference_price=10_000))  # +-100 around 10000
    assert_unchanged(book, limit("x", "buy", 10_101, 1), ResultCode.OUTSIDE_BAND)
    assert_unchanged(book, limit("x", "sell", 9_899, 1), ResultCode.OUTSIDE_BAND)
    assert core(run(book, limit("y", "buy", 10_100, 1)))[0] == ("accepted", "y")


def test_band_follows_last_trade_and_reference_command() -> None:
    book = OrderBook(Instrument(band_bps=100, reference_price=10_000))
    run(book, limit("s", "sell", 10_050, 1), limit("b", "buy", 10_050, 1, account="b"))
    assert book.reference_price == 10_050
    assert core(run(book, limit("x", "buy", 10_150, 1)))[0] == ("accepted", "x")
    run(book, SetReference(20_000))
    assert_unchanged(book, limit("z", "buy", 10_150, 1), ResultCode.OUTSIDE_BAND)


def test_market_order_never_sweeps_beyond_band() -> None:
    book = OrderBook(Instrument(band_bps=100, reference_price=10_000))
    run(book, limit("s1", "sell", 10_050, 1), limit("s2", "sell", 10_100, 1),
        SetReference(10_000), )
    # Put an ask beyond the band by moving the reference, then moving it back.
    run(book, SetReference(10_100), limit("s3", "sell", 10_150, 1), SetReference(10_000))
    events = run(book, market("m", "buy", 5))
    assert trades(events) == [("s1", "m", 10_050, 1), ("s2", "m", 10_100, 1)]
    assert core(events)[-1] == ("cancelled", "m", 3, "market_protection")
    assert final_book(book) == [("s3", "sell", 10_150, 1)]


def test_market_order_without_band_sweeps_book_and_cancels_rest() -> None:
    book = OrderBook(PLAIN)
    run(book, limit("b1", "buy", 99, 1), limit("b2", "buy", 50, 1))
    events = run(book, market("m", "sell", 3))
    assert trades(events) == [("b1", "m", 99, 1), ("b2", "m", 50, 1)]
    assert core(events)[-1] == ("cancelled", "m", 1, "market_no_liquidity")


def test_market_order_protection_uses_best_price_when_no_reference() -> None:
    book = OrderBook(Instrument(band_bps=100))
    run(book, limit("s1", "sell", 1000, 1), limit("s2", "sell", 1010, 1), limit("s3", "sell", 1011, 1))
    events = run(book, market("m", "buy", 3))
    assert trades(events) == [("s1", "m", 1000, 1), ("s2", "m", 1010, 1)]


# ------------------------------------------------------------- FOK, post-only


def test_fok_fills_exactly_at_the_boundary() -> None:
    book = OrderBook(PLAIN)
    run(book, limit("s1", "sell", 100, 3), limit("s2", "sell", 101, 4), limit("s3", "sell", 102, 9))
    events = run(book, limit("f", "buy", 101, 7, account="t", tif="FOK"))
    assert trades(events) == [("s1", "f", 100, 3), ("s2", "f", 101, 4)]
    assert final_book(book) == [("s3", "sell", 102, 9)]


def test_fok_one_lot_short_is_rejected_and_changes_nothing() -> None:
    book = OrderBook(PLAIN)
    run(book, limit("s1", "sell", 100, 3), limit("s2", "sell", 101, 4), limit("s3", "sell", 102, 9))
    assert_unchanged(book, limit("f", "buy", 101, 8, account="t", tif="FOK"),
                     ResultCode.FOK_UNFILLABLE)


def test_fok_does_not_count_own_orders_under_stp() -> None:
    book = OrderBook(PLAIN)
    run(book, limit("own", "sell", 100, 5, account="t"), limit("s2", "sell", 100, 2))
    cmd = limit("f", "buy", 100, 3, account="t", tif="FOK", stp="cancel_maker")
    assert_unchanged(book, cmd, ResultCode.FOK_UNFILLABLE)
    cmd = limit("f", "buy", 100, 2, account="t", tif="FOK", stp="cancel_maker")
    assert core(run(book, cmd))[1:] == [("cancelled", "own", 5, "stp"), ("trade", "s2", "f", 100, 2)]


def test_market_fok_respects_protection_limit() -> None:
    book = OrderBook(Instrument(band_bps=100, reference_price=1000))
    run(book, limit("s1", "sell", 1010, 1), SetReference(1100), limit("s2", "sell", 1100, 1),
        SetReference(1000))
    assert_unchanged(book, market("m", "buy", 2, tif="FOK"), ResultCode.FOK_UNFILLABLE)


def test_post_only_that_would_take_is_rejected() -> None:
    book = OrderBook(PLAIN)
    run(book, limit("s1", "sell", 100, 1))
    assert_unchanged(book, limit("p", "buy", 100, 1, tif="POST_ONLY"),
                     ResultCode.POST_ONLY_WOULD_TAKE)
    assert core(run(book, limit("p", "buy", 99, 1, tif="POST_ONLY")))[0] == ("accepted", "p")


# ------------------------------------------------------------------- amend


def test_amend_reducing_qty_keeps_priority() -> None:
    book = OrderBook(PLAIN)
    run(book, limit("b1", "buy", 100, 5), limit("b2", "buy", 100, 5))
    assert core(run(book, Amend("b1", qty=2))) == [("amended", "b1", 100, 2, True)]
    events = run(book, market("m", "sell", 3))
    assert trades(events) == [("b1", "m", 100, 2), ("b2", "m", 100, 1)]


def test_amend_increasing_qty_loses_priority() -> None:
    book = OrderBook(PLAIN)
    run(book, limit("b1", "buy", 100, 5), limit("b2", "buy", 100, 5))
    assert core(run(book, Amend("b1", qty=6))) == [("amended", "b1", 100, 6, False)]
    assert [o[0] for o in final_book(book)] == ["b2", "b1"]


def test_amend_price_change_loses_priority_even_back_to_same_price() -> None:
    book = OrderBook(PLAIN)
    run(book, limit("b1", "buy", 100, 5), limit("b2", "buy", 100, 5))
    run(book, Amend("b1", price=99), Amend("b1", price=100))
    assert [o[0] for o in final_book(book)] == ["b2", "b1"]


def test_amend_to_crossing_price_trades_then_rests_remainder() -> None:
    book = OrderBook(PLAIN)
    run(book, limit("s1", "sell", 101, 2, account="m"), limit("b1", "buy", 100, 5))
    events = run(book, Amend("b1", price=101))
    assert core(events) == [("amended", "b1", 101, 5, False), ("trade", "s1", "b1", 101, 2)]
    assert final_book(book) == [("b1", "buy", 101, 3)]


def test_amend_post_only_to_crossing_price_is_rejected() -> None:
    book = OrderBook(PLAIN)
    run(book, limit("s1", "sell", 101, 2, account="m"), limit("b1", "buy", 100, 5, tif="POST_ONLY"))
    assert_unchanged(book, Amend("b1", price=101), ResultCode.POST_ONLY_WOULD_TAKE)


# ---------------------------------------------------------------- cancels


def test_cancel_reports_remaining_qty() -> None:
    book = OrderBook(PLAIN)
    run(book, limit("s1", "sell", 100, 5), limit("t", "buy", 100, 2, account="t"))
    assert core(run(book, Cancel("s1"))) == [("cancelled", "s1", 3, "user")]
    assert final_book(book) == []


def test_cancel_all_cancels_only_that_account_in_acceptance_order() -> None:
    book = OrderBook(PLAIN)
    run(book, limit("a1", "buy", 100, 1, account="x"), limit("o1", "buy", 100, 1, account="y"),
        limit("a2", "sell", 110, 1, account="x"), limit("a3", "buy", 101, 1, account="x"),
        NewOrder("st", "x", "buy", 1, type="stop_market", trigger_price=120))
    events = run(book, CancelAll("x"))
    assert core(events) == [("cancelled", "a1", 1, "cancel_all"), ("cancelled", "a2", 1, "cancel_all"),
                            ("cancelled", "a3", 1, "cancel_all"), ("cancelled", "st", 1, "cancel_all")]
    assert final_book(book) == [("o1", "buy", 100, 1)]


# -------------------------------------------------------------------- STP


def stp_book() -> OrderBook:
    book = OrderBook(PLAIN)
    run(book, limit("other", "sell", 100, 1, account="m"), limit("own", "sell", 100, 2, account="t"),
        limit("after", "sell", 101, 5, account="m"))
    return book


def test_stp_cancel_taker_stops_at_own_order() -> None:
    book = stp_book()
    events = run(book, limit("t", "buy", 101, 4, account="t", stp="cancel_taker"))
    assert core(events)[1:] == [("trade", "other", "t", 100, 1), ("cancelled", "t", 3, "stp")]
    assert [o[0] for o in final_book(book)] == ["own", "after"]


def test_stp_cancel_maker_removes_own_order_and_continues() -> None:
    book = stp_book()
    events = run(book, limit("t", "buy", 101, 4, account="t", stp="cancel_maker"))
    assert core(events)[1:] == [("trade", "other", "t", 100, 1), ("cancelled", "own", 2, "stp"),
                                ("trade", "after", "t", 101, 3)]


def test_stp_cancel_both_cancels_maker_and_taker() -> None:
    book = stp_book()
    events = run(book, limit("t", "buy", 101, 4, account="t", stp="cancel_both"))
    assert core(events)[1:] == [("trade", "other", "t", 100, 1), ("cancelled", "own", 2, "stp"),
                                ("cancelled", "t", 3, "stp")]
    assert [o[0] for o in final_book(book)] == ["after"]


def test_without_stp_self_trade_happens() -> None:
    book = stp_book()
    events = run(book, limit("t", "buy", 100, 3, account="t"))
    assert trades(events) == [("other", "t", 100, 1), ("own", "t", 100, 2)]


# ------------------------------------------------------------------ stops


def test_stops_trigger_on_their_price_kind_in_acceptance_order() -> None:
    book = OrderBook(PLAIN)
    run(book, *[limit(f"s{i}", "sell", 100 + i, 1, account="m") for i in range(5)],
        NewOrder("late", "x", "buy", 1, type="stop_market", trigger_price=105),
        NewOrder("early", "y", "buy", 1, type="stop_market", trigger_price=110),
        NewOrder("mark", "z", "buy", 1, type="stop_market", trigger_price=100, trigger="mark"),
        NewOrder("limit", "w", "buy", 1, type="stop_limit", price=103, trigger_price=110))
    events = run(book, PriceUpdate("last", 110))
    assert core(events) == [
        ("price", "last", 110),
        ("triggered", "late"), ("trade", "s0", "late", 100, 1),
        ("triggered", "early"), ("trade", "s1", "early", 101, 1),
        ("triggered", "limit"), ("trade", "s2", "limit", 102, 1),
    ]
    assert list(book.stops) == ["mark"]


def test_sell_stop_triggers_when_price_falls_to_trigger() -> None:
    book = OrderBook(PLAIN)
    run(book, limit("b", "buy", 90, 3, account="m"),
        NewOrder("st", "x", "sell", 2, type="stop_limit", price=95, trigger_price=95, tif="IOC"))
    assert core(run(book, PriceUpdate("last", 96))) == [("price", "last", 96)]
    events = run(book, PriceUpdate("last", 95))
    assert core(events)[1:] == [("triggered", "st"), ("cancelled", "st", 2, "ioc")]


def test_stop_already_triggered_at_entry_is_rejected() -> None:
    book = OrderBook(PLAIN)
    run(book, PriceUpdate("mark", 100))
    cmd = NewOrder("st", "x", "buy", 1, type="stop_market", trigger_price=100, trigger="mark")
    assert_unchanged(book, cmd, ResultCode.BAD_TRIGGER)


def test_stop_can_be_cancelled_but_not_amended() -> None:
    book = OrderBook(PLAIN)
    run(book, NewOrder("st", "x", "buy", 1, type="stop_market", trigger_price=100))
    assert_unchanged(book, Amend("st", qty=2), ResultCode.NOT_AMENDABLE)
    assert core(run(book, Cancel("st"))) == [("cancelled", "st", 1, "user")]


# ------------------------------------------------------------ reduce-only


class OnlySells:
    def allows_reduce_only(self, account: str, side: Side, qty: int) -> bool:
        return side == "sell" and qty <= 3


def test_reduce_only_asks_the_positions_hook() -> None:
    book = OrderBook(PLAIN, reduce_only_hook=OnlySells())
    assert core(run(book, limit("r1", "sell", 100, 3, reduce_only=True)))[0] == ("accepted", "r1")
    assert_unchanged(book, limit("r2", "buy", 90, 1, reduce_only=True),
                     ResultCode.REDUCE_ONLY_WOULD_INCREASE)


# ------------------------------------------------------------ market data


def test_market_data_emits_coalesced_depth_and_bbo() -> None:
    book = OrderBook(PLAIN, market_data=True)
    run(book, limit("s1", "sell", 100, 2), limit("s2", "sell", 100, 3), limit("b1", "buy", 98, 1))
    events = run(book, limit("t", "buy", 100, 4, account="t"))
    depth = [(e.side, e.price, e.qty, e.count) for e in events if isinstance(e, DepthUpdate)]
    assert depth == [("sell", 100, 1, 1)]
    [bbo] = [e for e in events if isinstance(e, BestBidOffer)]
    assert (bbo.bid_price, bbo.bid_qty, bbo.ask_price, bbo.ask_qty) == (98, 1, 100, 1)
    [snap] = run(book, BookRequest(depth=5))
    assert isinstance(snap, DepthSnapshot)
    assert snap.bids == [(98, 1, 1)] and snap.asks == [(100, 1, 1)]


def test_depth_snapshot_plus_deltas_reconstructs_l2() -> None:
    book = OrderBook(PLAIN, market_data=True)
    snap = book.depth_snapshot(100)
    levels = {("buy", p): q for p, q, _ in snap.bids} | {("sell", p): q for p, q, _ in snap.asks}
    cmds: list[Command] = [limit(f"o{i}", "buy" if i % 2 else "sell", 95 + (i * 7) % 11, 1 + i % 3,
                                 account=f"a{i % 3}") for i in range(60)]
    for e in run(book, *cmds, Cancel("o7"), Amend("o9", qty=1)):
        if isinstance(e, DepthUpdate):
            levels[(e.side, e.price)] = e.qty
    final = book.depth_snapshot(100)
    want = {("buy", p): q for p, q, _ in final.bids} | {("sell", p): q for p, q, _ in final.asks}
    assert {k: v for k, v in levels.items() if v} == want


# -------------------------------------------------- state hash, invariants


def test_state_hash_round_trips_through_state() -> None:
    book = OrderBook(PLAIN)
    run(book, limit("b1", "buy", 100, 5), limit("b2", "buy", 100, 1), limit("s1", "sell", 103, 2),
        NewOrder("st", "x", "buy", 1, type="stop_market", trigger_price=120))
    clone = OrderBook.from_state(book.state())
    clone.validate_internal_state()
    assert clone.state_hash() == book.state_hash()
    run(book, limit("b3", "buy", 100, 1))
    assert clone.state_hash() != book.state_hash()


def test_validate_internal_state_detects_corruption() -> None:
    book = OrderBook(PLAIN)
    run(book, limit("b1", "buy", 100, 5))
    book.bids.levels[100].total += 1
    with pytest.raises(CorruptState, match="total"):
        book.validate_internal_state()


def test_event_sequence_numbers_strictly_increase() -> None:
    book = OrderBook(PLAIN, market_data=True)
    events = run(book, limit("s1", "sell", 100, 5), limit("b1", "buy", 100, 2, account="b"),
                 Cancel("s1"), Cancel("s1"))
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1))


def test_resting_orders_of_one_account_share_one_account_string() -> None:
    book = OrderBook(PLAIN)
    first, second = "".join(["ac", "ct-1"]), "".join(["ac", "ct-1"])
    assert first is not second
    book.process(NewOrder("x", first, "buy", 1, price=100))
    book.process(NewOrder("y", second, "buy", 2, price=99))
    assert book.orders["x"].account is book.orders["y"].account
    assert book.orders["y"].account == "acct-1"
    book.validate_internal_state()
