"""Scale-out order entry: margin reserved before the append, kept true from the events stream."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scaleout_helpers import Stack, fund, margin_ledger, wait_for
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from custody.db import make_engine
from custody.ledger.models import LedgerTransfer
from exchange.engine.instrument import Instrument
from exchange.engine.messages import Cancel, NewOrder
from exchange.engine.orderbook import OrderBook
from exchange.stream.cluster import LocalCluster
from exchange.stream.gateway import Gateway
from exchange.stream.margin import (
    DuplicateOrder,
    MarginBook,
    MarginRefused,
    Position,
    initial_margin,
)
from exchange.stream.wire import CommandEvents, EventBatch

IM_PPM = 100_000  # 10 %, as the Stack's margin worker


@pytest.fixture
def pg(postgres_url: str) -> Iterator[str]:
    yield postgres_url


@pytest.fixture
def market() -> str:
    return "M" + uuid.uuid4().hex[:10].upper()


@pytest.fixture
def stack(nats_cluster: LocalCluster, pg: str, market: str) -> Iterator[tuple[Stack, str]]:
    margin, engine = margin_ledger(pg)
    s = Stack(nats_cluster.urls, market, margin, tick=5).start()
    try:
        yield s, pg
    finally:
        s.close()
        engine.dispose()


def _gateway(urls: list[str], market: str, url: str) -> tuple[Gateway, Engine]:
    margin, engine = margin_ledger(url)
    return Gateway(urls, {market}, margin, im_ppm=IM_PPM, wait_s=30.0).start(), engine


def _order(oid: str, account: str, side: str, qty: int, price: int) -> NewOrder:
    return NewOrder(id=oid, account=account, side=side, qty=qty, price=price)  # type: ignore[arg-type]


def test_gateway_two_gateways_racing_cannot_exceed_free_margin(
        nats_cluster: LocalCluster, stack: tuple[Stack, str], market: str) -> None:
    s, url = stack
    fund(s.ledger, "alice", 1_000)  # room for exactly 10 orders of 100 initial margin
    (g1, e1), (g2, e2) = _gateway(nats_cluster.urls, market, url), _gateway(nats_cluster.urls, market, url)
    try:
        orders = [(g1 if i % 2 else g2, _order(f"o{i}", "alice", "buy", 10, 100)) for i in range(16)]

        def place(pair: tuple[Gateway, NewOrder]) -> str:
            try:
                placed = pair[0].place(market, pair[1])
            except MarginRefused:
                return "refused"
            assert placed.events is not None
            return "placed"

        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(place, orders))
        assert outcomes.count("placed") == 10
        assert outcomes.count("refused") == 6
        assert s.ledger.free("alice") == 0
        # A refused order never entered the stream.
        assert len(s.bodies()) == 10
    finally:
        g1.close()
        g2.close()
        e1.dispose()
        e2.dispose()


def test_gateway_fill_moves_hold_to_position_margin_and_reads_are_event_fed(
        nats_cluster: LocalCluster, stack: tuple[Stack, str], market: str) -> None:
    s, url = stack
    fund(s.ledger, "alice", 1_000)
    fund(s.ledger, "bob", 1_000)
    g, engine = _gateway(nats_cluster.urls, market, url)
    try:
        maker = g.place(market, _order("b1", "bob", "sell", 8, 100))  # holds 80
        assert maker.events is not None and type(maker.events[0]).__name__ == "Accepted"
        assert s.ledger.free("bob") == 920
        taker = g.place(market, _order("a1", "alice", "buy", 5, 100))
        assert taker.events is not None and any(type(e).__name__ == "Trade" for e in taker.events)
        # The gateway's own event-fed state answers at once: the response came after it.
        assert g.positions("alice") == {market: Position(5, 500)}
        assert g.positions("bob") == {market: Position(-5, 500)}
        assert g.open_orders("bob") == [{"symbol": market, "id": "b1", "side": "sell",
                                         "price": 100, "open_qty": 3}]
        assert g.depth(market, 5)["asks"] == [[100, 3]]
        # The margin worker settles: alice's hold is gone, 50 is position margin; bob keeps
        # 30 on hold for the 3 resting plus 50 for his position.
        wait_for(lambda: s.written() == 2, "the margin worker")
        assert s.ledger.free("alice") == 950
        assert s.ledger.free("bob") == 920
        bob_in_use = s.ledger.ledger.balance(s.ledger.accounts("bob")[1])
        assert (bob_in_use.credits_posted, bob_in_use.credits_pending) == (50, 30)
        # The book refuses an off-tick price: the hold is released.
        refused = g.place(market, _order("a2", "alice", "buy", 1, 101))
        assert refused.events is not None and type(refused.events[-1]).__name__ == "Rejected"
        wait_for(lambda: s.written() == 3, "the margin worker")
        assert s.ledger.free("alice") == 950
        # Reusing a finished order's id is refused before anything is appended.
        with pytest.raises(DuplicateOrder):
            g.place(market, _order("a2", "alice", "buy", 1, 100))
        with pytest.raises(DuplicateOrder):
            g.place(market, _order("a2", "alice", "buy", 1, 101))
        assert len(s.bodies()) == 3
    finally:
        g.close()
        engine.dispose()


def _transfers(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(LedgerTransfer)).scalar_one())
    finally:
        engine.dispose()


def test_margin_worker_restarted_replays_stream_and_writes_each_posting_once(
        nats_cluster: LocalCluster, stack: tuple[Stack, str], market: str) -> None:
    s, url = stack
    for who in ("alice", "bob"):
        fund(s.ledger, who, 10_000)
    g, engine = _gateway(nats_cluster.urls, market, url)
    try:
        for i in range(6):
            g.place(market, _order(f"s{i}", "bob", "sell", 3, 100 + 5 * (i % 2)))
            g.place(market, _order(f"b{i}", "alice", "buy", 2, 105))
        wait_for(lambda: s.written() == 12, "the margin worker to write everything")
        before = _transfers(url)
        first = s.stop_margin_worker()
        s.start_margin()
        wait_for(lambda: s.written() == 12, "the restarted margin worker to replay")
        second = s.stop_margin_worker()
        assert _transfers(url) == before
        assert first.book.positions == second.book.positions
        assert first.book.orders == second.book.orders
        assert first.book.positions  # trades happened: the replay had work to do
        s.start_margin()
    finally:
        g.close()
        engine.dispose()


def test_margin_worker_restarted_from_checkpoint_equals_full_replay_and_skips_the_head(
        nats_cluster: LocalCluster, stack: tuple[Stack, str], market: str) -> None:
    s, url = stack
    for who in ("alice", "bob"):
        fund(s.ledger, who, 10_000)
    g, engine = _gateway(nats_cluster.urls, market, url)
    try:
        s.stop_margin_worker()
        s.start_margin(checkpoint_every=3)
        for i in range(6):
            g.place(market, _order(f"s{i}", "bob", "sell", 3, 100 + 5 * (i % 2)))
            g.place(market, _order(f"b{i}", "alice", "buy", 2, 105))
        wait_for(lambda: s.written() == 12, "the margin worker to write everything")
        s.stop_margin_worker()  # stores its final checkpoint
        # More commands while no margin worker runs; then it resumes from its checkpoint.
        g.place(market, _order("b6", "alice", "buy", 4, 100))
        g.cancel(market, "s1", "bob")
        g.place(market, _order("s6", "bob", "sell", 9, 100))
        s.start_margin(checkpoint_every=3)
        wait_for(lambda: s.written() == 15, "the resumed margin worker")
        resumed = s.stop_margin_worker()
        assert resumed.batches <= 3  # only the tail was folded
        after_resume = _transfers(url)
        # A worker without checkpoint replays all 15 commands: the same fold, nothing new written.
        s.start_margin(checkpoint_every=0)
        wait_for(lambda: s.written() == 15, "the replaying margin worker")
        full = s.stop_margin_worker()
        assert full.batches >= 1 and _transfers(url) == after_resume
        assert resumed.book.orders == full.book.orders
        assert resumed.book.positions == full.book.positions
        assert resumed.book.position_margin == full.book.position_margin
        assert resumed.book.positions and resumed.book.orders  # there was state to carry over
        s.start_margin()
    finally:
        g.close()
        engine.dispose()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["buy", "sell"]),
                          st.integers(1, 9), st.integers(98, 102),
                          st.sampled_from(["GTC", "IOC"])), min_size=1, max_size=40))
def test_margin_book_any_flow_holds_match_open_orders_and_positions(
        flow: list[tuple[str, str, int, int, str]]) -> None:
    book = OrderBook(Instrument("P"))
    fold = MarginBook(IM_PPM)
    holds: dict[str, int] = {}  # hold id -> amount, as the ledger would have them
    in_use: dict[str, int] = {}
    for seq, (who, side, qty, price, tif) in enumerate(flow, 1):
        oid = f"o{seq}"
        holds[f"im.{oid}"] = initial_margin(price, qty, IM_PPM)
        book.process(NewOrder(id=oid, account=who, side=side, qty=qty, price=price,  # type: ignore[arg-type]
                              tif=tif))  # type: ignore[arg-type]
        for p in fold.apply(EventBatch("P", seq, seq, [CommandEvents(seq, book.take_events())])):
            if p.kind.value == "void":
                assert p.pending_id is not None
                del holds[p.pending_id]  # every void names a live hold
            elif p.kind.value == "pending":
                holds[p.id] = p.amount
            else:
                in_use[p.account] = in_use.get(p.account, 0) + (-p.amount if p.release else p.amount)
    # Every resting order has exactly one hold, for its remaining quantity at its price.
    live = {o.hold: initial_margin(o.price, o.remaining, IM_PPM) for o in fold.orders.values()}
    assert holds == live
    assert {o.id for o in book.orders.values()} == {oid for _, oid in fold.orders}
    for account in ("a", "b", "c"):
        cost = sum(p.cost for (a, _), p in fold.positions.items() if a == account)
        assert in_use.get(account, 0) == -(-cost * IM_PPM // 1_000_000)
    assert sum(p.size for p in fold.positions.values()) == 0


def test_margin_book_cancel_refused_before_its_order_arrives_keeps_the_hold() -> None:
    # The cancel overtook its order in the stream: the book refuses it (unknown_order), and
    # the hold of the order still on its way must stay for when it is accepted.
    book = OrderBook(Instrument("P"))
    fold = MarginBook(IM_PPM)
    book.process(Cancel(id="x1", account="a"))
    refused = fold.apply(EventBatch("P", 1, 1, [CommandEvents(1, book.take_events())]))
    assert refused == []
    book.process(NewOrder(id="x1", account="a", side="buy", qty=2, price=100))
    fold.apply(EventBatch("P", 2, 2, [CommandEvents(2, book.take_events())]))
    assert fold.orders[("P", "x1")].hold == "im.x1"
    # A refused duplicate of the live x1 leaves its hold alone; a new order the book
    # refuses (FOK, nothing to fill it) releases its own, tolerating a hold already gone.
    book.process(NewOrder(id="x1", account="a", side="buy", qty=1, price=100))
    assert fold.apply(EventBatch("P", 3, 3, [CommandEvents(3, book.take_events())])) == []
    book.process(NewOrder(id="x2", account="a", side="buy", qty=2, price=101, tif="FOK"))
    postings = fold.apply(EventBatch("P", 4, 4, [CommandEvents(4, book.take_events())]))
    assert [(p.id, p.pending_id, p.tolerant) for p in postings] == [("imv.P.4.r", "im.x2", True)]


def test_margin_reserve_many_decides_each_hold_in_order_like_reserve(pg: str) -> None:
    from exchange.stream.margin import HoldRequest

    margin, engine = margin_ledger(pg)
    try:
        fund(margin, "alice", 100)
        fund(margin, "bob", 50)
        out = margin.reserve_many([
            HoldRequest("alice", "a:o1", 60, "M"), HoldRequest("alice", "a:o2", 50, "M"),
            HoldRequest("bob", "b:o3", 50, "M"), HoldRequest("alice", "a:o4", 40, "M"),
            HoldRequest("alice", "a:o1", 60, "M"), HoldRequest("alice", "a:o1", 61, "M")])
        assert [type(r).__name__ if isinstance(r, Exception) else r for r in out] == [
            True, "MarginRefused", True, True, False, "DuplicateOrder"]
        assert (margin.free("alice"), margin.free("bob")) == (0, 0)
        # Holds placed by an earlier group: found again (retry), or refused (other fields).
        again = margin.reserve_many([HoldRequest("bob", "b:o3", 50, "M"),
                                     HoldRequest("bob", "b:o3", 50, "OTHER-MARKET"),
                                     HoldRequest("bob", "b:o5", 1, "M")])
        assert [type(r).__name__ if isinstance(r, Exception) else r for r in again] == [
            False, "DuplicateOrder", "MarginRefused"]
        assert margin.reserve("bob", "b:o3", 50, "M") is False  # the single path agrees
    finally:
        engine.dispose()


@pytest.mark.parametrize("seed", [1, 2])
def test_margin_reserve_many_random_flow_equals_one_by_one_reserve(pg: str, seed: int) -> None:
    import random

    from exchange.stream.margin import HoldRequest

    margin, engine = margin_ledger(pg)
    rng = random.Random(seed)
    try:
        for who in ("ga", "gb", "sa", "sb"):
            fund(margin, who, 500)
        flow = [(rng.choice("ab"), f"o{rng.randrange(25)}", rng.randrange(1, 80))
                for _ in range(30)]
        grouped: list[object] = []
        for start in range(0, len(flow), 7):
            grouped += margin.reserve_many([HoldRequest(f"g{w}", f"g{w}:{o}", amt, "M")
                                            for w, o, amt in flow[start:start + 7]])
        single: list[object] = []
        for w, o, amt in flow:
            try:
                single.append(margin.reserve(f"s{w}", f"s{w}:{o}", amt, "M"))
            except Exception as exc:  # compared by kind below
                single.append(exc)

        def kind(r: object) -> object:
            return type(r).__name__ if isinstance(r, Exception) else r
        assert [kind(r) for r in grouped] == [kind(r) for r in single]
        assert margin.free("ga") == margin.free("sa") and margin.free("gb") == margin.free("sb")
    finally:
        engine.dispose()


def test_hold_batchers_of_two_processes_racing_never_exceed_free_margin(pg: str) -> None:
    from exchange.stream.margin import HoldBatcher

    (m1, e1), (m2, e2) = margin_ledger(pg), margin_ledger(pg)
    fund(m1, "alice", 1_000)
    b1, b2 = HoldBatcher(m1), HoldBatcher(m2)
    try:
        def reserve(i: int) -> str:
            try:
                (b1 if i % 2 else b2).reserve("alice", f"alice:r{i}", 100, "M")
            except MarginRefused:
                return "refused"
            return "placed"

        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(reserve, range(24)))
        assert outcomes.count("placed") == 10 and outcomes.count("refused") == 14
        assert m1.free("alice") == 0
    finally:
        b1.close()
        b2.close()
        e1.dispose()
        e2.dispose()
