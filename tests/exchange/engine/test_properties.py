"""Properties of random command streams (hypothesis)."""

import msgspec
from engine_streams import INSTRUMENT, streams
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.engine.messages import (
    Accepted,
    Amended,
    Cancelled,
    Command,
    Event,
    Trade,
)
from exchange.engine.orderbook import OrderBook

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)


def run_checked(book: OrderBook, stream: list[Command]) -> list[Event]:
    out: list[Event] = []
    for cmd in stream:
        out += book.submit(cmd)
        book.validate_internal_state()  # includes: never crossed
    return out


@PROPERTY_SETTINGS
@given(streams)
def test_random_streams_keep_book_uncrossed_and_consistent(stream: list[Command]) -> None:
    book = OrderBook(INSTRUMENT, market_data=True)
    run_checked(book, stream)
    bid, ask = book.best_bid(), book.best_ask()
    assert bid is None or ask is None or bid < ask


@PROPERTY_SETTINGS
@given(streams)
def test_quantity_is_conserved_for_every_order(stream: list[Command]) -> None:
    """ordered (incl. amends) = filled + cancelled + resting, for every order."""
    book = OrderBook(INSTRUMENT)
    open_qty: dict[str, int] = {}
    for event in run_checked(book, stream):
        if isinstance(event, Accepted):
            assert event.id not in open_qty
            open_qty[event.id] = event.qty
        elif isinstance(event, Trade):
            for oid in (event.maker, event.taker):
                open_qty[oid] -= event.qty
                assert open_qty[oid] >= 0
                if open_qty[oid] == 0:
                    del open_qty[oid]
        elif isinstance(event, Cancelled):
            assert open_qty.pop(event.id) == event.qty
        elif isinstance(event, Amended):
            assert event.id in open_qty
            open_qty[event.id] = event.qty
    live = {o.id: o.qty for o in book.orders.values()} | {s.id: s.qty for s in book.stops.values()}
    assert open_qty == live


@PROPERTY_SETTINGS
@given(streams, st.data())
def test_replay_and_snapshot_restore_are_deterministic(
    stream: list[Command], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(stream)))
    first, second = OrderBook(INSTRUMENT), OrderBook(INSTRUMENT)
    events_a = run_checked(first, stream)
    events_b = run_checked(second, stream[:cut])
    restored = OrderBook.from_state(msgspec.msgpack.decode(
        msgspec.msgpack.encode(second.state()), type=type(second.state())))
    assert restored.state_hash() == second.state_hash()
    events_b += run_checked(restored, stream[cut:])
    assert msgspec.json.encode(events_a) == msgspec.json.encode(events_b)
    assert first.state_hash() == restored.state_hash()
