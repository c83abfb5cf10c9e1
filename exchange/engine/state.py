"""Canonical, serialisable state of one order book (snapshots, state hash)."""

import msgspec

from exchange.engine.instrument import Instrument


class RestingOrderState(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One resting order; lists of these are in time priority."""

    oid: int
    id: str
    account: str
    side: str
    price: int
    qty: int
    post_only: bool
    stp: int
    reduce_only: bool


class StopOrderState(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One untriggered stop order."""

    oid: int
    id: str
    account: str
    side: str
    qty: int
    is_market: bool
    price: int | None
    tif: str
    stp: int
    reduce_only: bool
    trigger: str
    trigger_price: int


class BookState(msgspec.Struct, frozen=True):
    """Everything needed to rebuild a book: bids best first, then asks."""

    instrument: Instrument
    market_data: bool
    event_seq: int
    next_oid: int
    reference_price: int | None
    last_price: int | None
    mark_price: int | None
    bids: list[RestingOrderState]
    asks: list[RestingOrderState]
    stops: list[StopOrderState]
