"""Commands into and events out of the engine: immutable msgspec Structs.

Commands are a tagged union on `op`, events a tagged union on `type`, so the
same classes decode the replay JSONL input and encode its output. Structs
are not validated on construction in Python; the engine validates every
field it relies on and rejects with a result code.
"""

from typing import Literal

import msgspec

Side = Literal["buy", "sell"]
OrderType = Literal["limit", "market", "stop_limit", "stop_market"]
TimeInForce = Literal["GTC", "IOC", "FOK", "POST_ONLY"]
StpMode = Literal["cancel_taker", "cancel_maker", "cancel_both"]
PriceKind = Literal["last", "mark"]


class _Command(
    msgspec.Struct,
    frozen=True,
    tag_field="op",
    forbid_unknown_fields=True,
    omit_defaults=True,
    gc=False,
):
    pass


class NewOrder(_Command, frozen=True, tag="new"):
    """Place an order. `id` is the client order id, unique among live orders.

    `type` market and stop_market carry no `price`; stop_limit and
    stop_market need `trigger_price` and trigger on `trigger` prices.
    `ts` is the edge's timestamp (ns); the engine copies it onto trades.
    """

    id: str
    account: str
    side: Side
    qty: int
    type: OrderType = "limit"
    price: int | None = None
    tif: TimeInForce = "GTC"
    stp: StpMode | None = None
    reduce_only: bool = False
    trigger_price: int | None = None
    trigger: PriceKind = "last"
    ts: int = 0


class Cancel(_Command, frozen=True, tag="cancel"):
    """Cancel a live order (resting or untriggered stop) by client order id.

    When `account` is given it must own the order, otherwise the order is
    reported unknown.
    """

    id: str
    account: str | None = None
    ts: int = 0


class Amend(_Command, frozen=True, tag="amend"):
    """Change the open quantity and/or the price of a resting order.

    `qty` is the new open (remaining) quantity. Reducing it at the same
    price keeps time priority; a price change or a larger quantity moves the
    order to the back of its (new) level, and a new price that crosses the
    book trades like a new order.
    """

    id: str
    qty: int | None = None
    price: int | None = None
    account: str | None = None
    ts: int = 0


class CancelAll(_Command, frozen=True, tag="cancel_all"):
    """Cancel every live order of `account` (resting first, then stops)."""

    account: str
    ts: int = 0


class PriceUpdate(_Command, frozen=True, tag="price"):
    """Publish a last or mark price; it triggers stops watching that kind."""

    kind: PriceKind
    price: int
    ts: int = 0


class SetReference(_Command, frozen=True, tag="reference"):
    """Set the reference price for the price band explicitly."""

    price: int
    ts: int = 0


class BookRequest(_Command, frozen=True, tag="book"):
    """Ask for an L2 snapshot of the top `depth` levels per side."""

    depth: int = 10
    ts: int = 0


class Malformed(_Command, frozen=True, tag="malformed"):
    """An input line the edge could not parse; the engine rejects it.

    It goes through the engine (and the journal) so rejected lines consume
    a sequence number identically on replay.
    """

    line: int
    error: str
    id: str | None = None
    ts: int = 0


Command = (
    NewOrder | Cancel | Amend | CancelAll | PriceUpdate | SetReference | BookRequest | Malformed
)


class _Event(msgspec.Struct, frozen=True, tag_field="type", gc=False):
    pass


class Accepted(_Event, frozen=True, tag="accepted"):
    """A new order passed validation (trades, rest or cancel follow)."""

    seq: int
    id: str
    oid: int
    account: str
    side: Side
    qty: int
    price: int | None


class Trade(_Event, frozen=True, tag="trade"):
    """A fill at the maker's price."""

    seq: int
    maker: str
    taker: str
    price: int
    qty: int
    taker_side: Side
    maker_account: str
    taker_account: str
    ts: int


class Cancelled(_Event, frozen=True, tag="cancelled"):
    """An order left the book; `qty` is what remained unfilled."""

    seq: int
    id: str
    qty: int
    reason: str


class Rejected(_Event, frozen=True, tag="rejected"):
    """A command was refused and changed nothing."""

    seq: int
    id: str | None
    code: int
    reason: str
    message: str


class Amended(_Event, frozen=True, tag="amended"):
    """An amend took effect; `qty` is the new open quantity."""

    seq: int
    id: str
    price: int
    qty: int
    priority_kept: bool


class Triggered(_Event, frozen=True, tag="triggered"):
    """A stop order triggered and now runs as a market or limit order."""

    seq: int
    id: str
    kind: PriceKind
    trigger_price: int
    price: int


class PriceSet(_Event, frozen=True, tag="price"):
    """A price update or reference command was applied."""

    seq: int
    kind: str
    price: int


class DepthUpdate(_Event, frozen=True, tag="depth"):
    """An L2 level changed; `qty` 0 and `count` 0 mean the level is gone."""

    seq: int
    side: Side
    price: int
    qty: int
    count: int


class BestBidOffer(_Event, frozen=True, tag="bbo"):
    """The top of book changed."""

    seq: int
    bid_price: int | None
    bid_qty: int
    ask_price: int | None
    ask_qty: int


class DepthSnapshot(_Event, frozen=True, tag="book"):
    """L2 snapshot: levels as [price, qty, count], best first.

    Apply `depth` events with a larger `seq` on top of it.
    """

    seq: int
    bids: list[tuple[int, int, int]]
    asks: list[tuple[int, int, int]]


Event = (
    Accepted
    | Trade
    | Cancelled
    | Rejected
    | Amended
    | Triggered
    | PriceSet
    | DepthUpdate
    | BestBidOffer
    | DepthSnapshot
)
