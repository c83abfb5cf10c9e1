"""Project engine events onto the reference matcher's tuple vocabulary."""

from typing import Any

from exchange.engine.messages import (
    Accepted,
    Amended,
    Cancelled,
    Event,
    PriceSet,
    Rejected,
    Trade,
    Triggered,
)
from exchange.engine.orderbook import OrderBook


def project(e: Event) -> tuple[Any, ...] | None:
    """Return the comparable core of an event (None for market data)."""
    if isinstance(e, Accepted):
        return ("accepted", e.id)
    if isinstance(e, Trade):
        return ("trade", e.maker, e.taker, e.price, e.qty)
    if isinstance(e, Cancelled):
        return ("cancelled", e.id, e.qty, e.reason)
    if isinstance(e, Rejected):
        return ("rejected", e.id, e.reason)
    if isinstance(e, Amended):
        return ("amended", e.id, e.price, e.qty, e.priority_kept)
    if isinstance(e, Triggered):
        return ("triggered", e.id)
    if isinstance(e, PriceSet):
        return ("price", e.kind, e.price)
    return None


def final_book(book: OrderBook) -> list[tuple[str, str, int, int]]:
    """Return resting orders (id, side, price, qty): bids best first, then asks."""
    state = book.state()
    return [(o.id, o.side, o.price, o.qty) for o in [*state.bids, *state.asks]]
