"""Venue commands: every external input of the venue as an immutable, journalable record.

A tagged union on ``op`` (msgspec Structs), so the venue journal stores them
as JSON and replay decodes them back. ``Venue.execute()`` runs one; the
venue's public methods build and journal the same records, so a live run and
a replay go through identical code. ``Drain`` marks where the shell took the
queued postings: hold adjustments happen at drains, so replaying them at the
same points regenerates the same ledger transfer ids.
"""

from __future__ import annotations

import msgspec

from exchange.engine.messages import Amend, NewOrder
from exchange.instruments import InstrumentSpec


class _VenueCommand(msgspec.Struct, frozen=True, tag_field="op", forbid_unknown_fields=True,
                    omit_defaults=True, gc=False):
    pass


class Deposit(_VenueCommand, frozen=True, tag="deposit"):
    """Move spot balance into exchange collateral."""

    account: str
    amount: int


class Withdraw(_VenueCommand, frozen=True, tag="withdraw"):
    """Move free collateral back to the spot balance."""

    account: str
    amount: int


class SeedInsurance(_VenueCommand, frozen=True, tag="seed_insurance"):
    """Capitalise the insurance fund from the platform wallet."""

    amount: int


class Place(_VenueCommand, frozen=True, tag="place"):
    """An order through pre-trade risk, the book and settlement."""

    symbol: str
    order: NewOrder


class CancelOrder(_VenueCommand, frozen=True, tag="cancel"):
    """Cancel a live order (``account`` given: it must own the order)."""

    symbol: str
    id: str
    account: str | None = None


class CancelAllOrders(_VenueCommand, frozen=True, tag="cancel_all"):
    """Cancel every live order of ``account`` on ``symbol``."""

    symbol: str
    account: str


class AmendOrder(_VenueCommand, frozen=True, tag="amend"):
    """Amend a resting order."""

    symbol: str
    amend: Amend


class Quote(_VenueCommand, frozen=True, tag="quote"):
    """One price source's quote for an underlying."""

    underlying: str
    source: str
    price: int
    ts_ms: int


class Tick(_VenueCommand, frozen=True, tag="tick"):
    """Recompute an index and publish marks (liquidating crossed accounts)."""

    underlying: str
    now_ms: int


class SetMark(_VenueCommand, frozen=True, tag="set_mark"):
    """Publish a mark price directly."""

    symbol: str
    mark: int
    index: int


class Advance(_VenueCommand, frozen=True, tag="advance"):
    """Run the funding intervals and expiries due at ``now_ms``."""

    now_ms: int


class Fund(_VenueCommand, frozen=True, tag="fund"):
    """Settle one funding interval of a perpetual now."""

    symbol: str
    ts_ms: int


class Expire(_VenueCommand, frozen=True, tag="expire"):
    """Expire and settle an instrument now."""

    symbol: str
    now_ms: int


class Liquidate(_VenueCommand, frozen=True, tag="liquidate"):
    """Liquidate an account if it is below maintenance margin."""

    account: str


class ListInstrument(_VenueCommand, frozen=True, tag="list"):
    """List a new instrument (the listing calendar); its whole specification is journaled."""

    spec: InstrumentSpec


class Delist(_VenueCommand, frozen=True, tag="delist"):
    """Remove a settled instrument that has no positions or orders left."""

    symbol: str


class AdjustIsolatedMargin(_VenueCommand, frozen=True, tag="isolated_margin"):
    """Add (``amount`` > 0) or remove (< 0) margin of ``account``'s isolated ``symbol`` position."""

    account: str
    symbol: str
    amount: int


class SetLeverage(_VenueCommand, frozen=True, tag="leverage"):
    """Choose ``account``'s leverage on ``symbol`` (it selects the initial-margin rate)."""

    account: str
    symbol: str
    leverage: int


class SetTpSl(_VenueCommand, frozen=True, tag="tpsl"):
    """Attach take-profit / stop-loss mark prices to a position (None: no such leg)."""

    account: str
    symbol: str
    take_profit: int | None = None
    stop_loss: int | None = None


class SetMarketStatus(_VenueCommand, frozen=True, tag="market_status"):
    """Put a market in a mode: open, cancel_only or halted (exchange/controls.py)."""

    symbol: str
    mode: str
    until_ms: int = 0
    reason: str = ""


class SetBreaker(_VenueCommand, frozen=True, tag="breaker"):
    """Configure (``max_move_bps`` > 0) or remove (0) a market's max-move circuit breaker."""

    symbol: str
    max_move_bps: int
    window_ms: int = 0
    cooldown_ms: int = 0


class ArmDeadman(_VenueCommand, frozen=True, tag="deadman"):
    """Arm, re-arm or (``timeout_ms`` 0) disarm an account's dead man's switch at ``now_ms``."""

    account: str
    timeout_ms: int
    now_ms: int


class Drain(_VenueCommand, frozen=True, tag="drain"):
    """The shell took the queued postings (and the batch before it is complete)."""


VenueCommand = (
    Deposit | Withdraw | SeedInsurance | Place | CancelOrder | CancelAllOrders | AmendOrder | Quote
    | Tick | SetMark | Advance | Fund | Expire | Liquidate | ListInstrument | Delist | Drain
    | AdjustIsolatedMargin | SetLeverage | SetTpSl | SetMarketStatus | SetBreaker | ArmDeadman
)
