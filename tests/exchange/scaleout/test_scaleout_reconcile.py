"""Stuck margin holds (a failed append never retried) are voided by the reconciler, race-free."""

from __future__ import annotations

import asyncio
import time
import uuid

import nats
import pytest
from scaleout_helpers import IM_PPM, Stack, fund, margin_ledger, ready_topology, wait_for

from exchange.engine.messages import NewOrder
from exchange.stream.cluster import LocalCluster
from exchange.stream.gateway import Gateway
from exchange.stream.margin import DuplicateOrder, MarginBook, hold_id, initial_margin
from exchange.stream.publisher import CommandPublisher, StreamCode, StreamRefused
from exchange.stream.reconcile import HoldReconciler

GRACE_MS = 5_000  # far above an append on a loaded machine: a live append is never beaten


def _order(oid: str, qty: int = 5) -> NewOrder:
    return NewOrder(id=oid, account="alice", side="buy", qty=qty, price=100,
                    ts=time.time_ns())


def test_reconciler_failed_append_hold_voided_and_late_append_refused_by_engine(
        nats_cluster: LocalCluster, postgres_url: str) -> None:
    symbol = "R" + uuid.uuid4().hex[:8].upper()
    margin, engine = margin_ledger(postgres_url)
    fund(margin, "alice", 1_000)
    # The market's stream does not exist yet: every append fails (injected, for real).
    gw = Gateway(nats_cluster.urls, {symbol}, margin, im_ppm=IM_PPM, wait_s=30.0).start()
    stack: Stack | None = None
    try:
        with pytest.raises(StreamRefused) as refused:
            gw.place(symbol, _order("alice:lost"))
        assert refused.value.code is StreamCode.STREAM_UNAVAILABLE
        assert margin.free("alice") == 950  # the hold stays: the client may retry
        # The stream comes up with its engine and a margin worker that reconciles.
        stack = Stack(nats_cluster.urls, symbol, margin, tick=5, void_stuck_after_ms=GRACE_MS).start()
        wait_for(lambda: margin.free("alice") == 1_000, "the reconciler to void the stuck hold")
        assert margin.hold_resolved("alice:lost")
        assert stack.worker.reconciler is not None and stack.worker.reconciler.stats.tombstones >= 1
        # The slow gateway's append lands after the tombstone: the engine refuses the order.
        late = NewOrder(id="alice:lost", account="alice", side="buy", qty=5, price=100)

        async def append() -> int:
            return (await CommandPublisher(stack.js, {symbol}).append(symbol, "alice:lost", late)).seq
        seq = asyncio.run_coroutine_threadsafe(append(), stack.loop).result(60)
        wait_for(lambda: stack.written() >= seq, "the margin worker after the late append")
        assert (symbol, "alice:lost") not in stack.worker.book.orders
        assert margin.free("alice") == 1_000
        # A client retry through a gateway is refused: the id was used.
        with pytest.raises(DuplicateOrder):
            gw.place(symbol, _order("alice:lost"))
        # A resting order's hold is never voided, however old.
        placed = gw.place(symbol, _order("alice:rests", qty=2))
        assert placed.events is not None and type(placed.events[0]).__name__ == "Accepted"
        wait_for(lambda: stack.written() >= placed.seq, "the margin worker")
        scans = stack.worker.reconciler.stats.scans
        time.sleep(GRACE_MS / 1000)
        wait_for(lambda: stack.worker.reconciler.stats.scans >= scans + 3, "three more scans")  # type: ignore[union-attr]
        assert margin.free("alice") == 980
        assert not margin.hold_resolved("alice:rests")
        assert not stack.margin.done()
    finally:
        gw.close()
        if stack is not None:
            stack.close()
        engine.dispose()


def test_reconciler_tombstone_after_unprocessed_order_in_stream_voids_nothing(
        nats_cluster: LocalCluster, postgres_url: str) -> None:
    """The order is in the stream but its engine is down: the tombstone behind it loses."""
    symbol = "R" + uuid.uuid4().hex[:8].upper()
    margin, engine = margin_ledger(postgres_url)
    fund(margin, "alice", 1_000)
    stack: Stack | None = None
    try:
        async def setup() -> int:
            nc = await nats.connect(servers=nats_cluster.urls)
            try:
                js = nc.jetstream()
                await ready_topology(js, [symbol])
                assert margin.reserve("alice", "alice:queued", initial_margin(100, 5, IM_PPM), symbol)
                pub = CommandPublisher(js, {symbol})
                await pub.append(symbol, "alice:queued", _order("alice:queued"))
                # No engine and no fold yet: the reconciler cannot tell the order is there.
                reconciler = HoldReconciler(margin, pub, MarginBook(IM_PPM), [symbol], grace_ms=0)
                return await reconciler.run_once(int(time.time() * 1000) + 1)
            finally:
                await nc.close()
        assert asyncio.run(setup()) == 1
        stack = Stack(nats_cluster.urls, symbol, margin, tick=5).start()
        wait_for(lambda: stack.written() >= 2, "the margin worker")
        # The order came first in the stream: it rests, with its hold.
        assert (symbol, "alice:queued") in stack.worker.book.orders
        assert margin.free("alice") == 950 and not margin.hold_resolved("alice:queued")
        assert hold_id("alice:queued") == stack.worker.book.orders[(symbol, "alice:queued")].hold
    finally:
        if stack is not None:
            stack.close()
        engine.dispose()
