"""Canonical, serialisable state of the venue (snapshots and ``Venue.state_hash()``).

Everything a replay depends on is here, in a canonical order (sorted keys
and ids) so two venues that went through the same commands encode to the
same bytes whatever order their dicts were filled in. Derived data is left
out: per-account valuation caches, and liquidation-index entries whose
epoch is outdated (they are skipped when popped, so they change nothing).
The venue's diagnostic buffer of recent engine events is not state either.
"""

from __future__ import annotations

import msgspec

from exchange.engine.state import BookState
from exchange.instruments import InstrumentSpec
from exchange.risk.events import FundingPaid, Settled


class PositionState(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One position of one account."""

    symbol: str
    size: int
    cost: int
    realised: int
    open_buy: int
    open_sell: int
    order_im: int


class AccountState(msgspec.Struct, frozen=True, array_like=True):
    """One margin account with its positions (by symbol)."""

    id: str
    parent: str | None
    cash: int
    order_im: int
    epoch: int
    hold: int
    hold_id: str | None
    hold_n: int
    positions: list[PositionState]
    leverage: dict[str, int] = {}  # symbol -> initial-margin rate floor (ppm) from the chosen leverage


class ReservationState(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The initial margin reserved for one live order."""

    symbol: str
    order_id: str
    account: str
    payer: str
    side: int
    qty: int
    im: int
    price: int = 0  # the worst price the order can fill at
    reduce_only: bool = False


class BandEntry(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A live liquidation-index entry: the heap key, the account's epoch and the account."""

    key: int
    epoch: int
    account: str


class LiquidationIndexState(msgspec.Struct, frozen=True):
    """The live band edges of one instrument (lower edges keyed by ``-lo``)."""

    symbol: str
    lo: list[BandEntry]
    hi: list[BandEntry]


class ClearingState(msgspec.Struct, frozen=True):
    """The clearing house between batches (no queued postings or events)."""

    namespace: str
    seq: int
    n: int
    version: int
    clearing: int
    fees: int
    insurance: int
    external_in: int
    accounts: list[AccountState]
    epochs: dict[str, int]
    marks: dict[str, int]
    index_of: dict[str, int]
    trading: dict[str, bool]
    holders: dict[str, list[str]]
    orders: list[ReservationState]
    liq_index: list[LiquidationIndexState]
    short_option_accounts: list[str]
    bad_debt: int = 0


class IndexStateRecord(msgspec.Struct, frozen=True):
    """The last computed index of one underlying."""

    underlying: str
    price: int | None
    fresh_sources: int
    ts_ms: int


class PriceState(msgspec.Struct, frozen=True):
    """Quotes, last index, basis trackers, settlement TWAP samples, premium and funding clocks."""

    quotes: dict[str, dict[str, tuple[int, int]]]
    index_state: list[IndexStateRecord]
    basis: dict[str, tuple[int, bool]]
    twaps: dict[str, list[tuple[int, int]]]
    premium: dict[str, tuple[int, int]]
    next_funding_ms: dict[str, int]


class FillRecord(msgspec.Struct, frozen=True, gc=False):
    """One kept fill of an account (the API's fill history)."""

    symbol: str
    order_id: str
    side: str
    price: int
    qty: int
    seq: int
    ts: int
    liquidity: str


class TpSlRecord(msgspec.Struct, frozen=True, array_like=True):
    """A take-profit / stop-loss pair attached to one position (``side``: 1 long, -1 short)."""

    account: str
    symbol: str
    side: int
    take_profit: int | None
    stop_loss: int | None


class VenueState(msgspec.Struct, frozen=True):
    """Everything needed to rebuild a venue: books, clearing house, prices, histories."""

    now_ms: int
    liq_n: int
    books: dict[str, BookState]
    clearing: ClearingState
    prices: PriceState
    funding_history: list[FundingPaid]
    settlement_history: list[Settled]
    fills: dict[str, list[FillRecord]]
    # Instruments listed at run time (the listing calendar), by symbol; configured ones are not here.
    listed: list[InstrumentSpec] = msgspec.field(default_factory=list)
    # Take-profit / stop-loss attached to positions, by (account, symbol).
    tpsl: list[TpSlRecord] = msgspec.field(default_factory=list)
