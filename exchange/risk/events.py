"""Events of the clearing house: every collateral-moving step is one of these, with a sequence."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RiskEvent:
    """Base: ``seq`` is the clearing-house sequence number the event belongs to."""

    seq: int

    def to_dict(self) -> dict[str, Any]:
        """Return the event as a JSON-ready dict with its type name."""
        return {"type": type(self).__name__, **asdict(self)}


@dataclass(frozen=True, slots=True)
class MarkSet(RiskEvent):
    """A mark price was published for an instrument."""

    symbol: str
    mark: int
    index: int


@dataclass(frozen=True, slots=True)
class LiquidationStarted(RiskEvent):
    """An account fell below maintenance margin."""

    account: str
    equity: int
    maintenance: int
    stage: str  # "partial" or "full"


@dataclass(frozen=True, slots=True)
class LiquidationOrder(RiskEvent):
    """A liquidation order sent into the book with a bankruptcy-price limit."""

    account: str
    symbol: str
    order_id: str
    side: str
    qty: int
    limit: int


@dataclass(frozen=True, slots=True)
class InsuranceUsed(RiskEvent):
    """The insurance fund covered an account's shortfall."""

    account: str
    amount: int


@dataclass(frozen=True, slots=True)
class Deleveraged(RiskEvent):
    """Auto-deleveraging closed ``qty`` of a counterparty against a bankrupt account."""

    symbol: str
    account: str
    counterparty: str
    qty: int
    price: int
    charge: int


@dataclass(frozen=True, slots=True)
class FundingPaid(RiskEvent):
    """A funding interval was settled between longs and shorts."""

    symbol: str
    rate_ppm: int
    mark: int
    total: int
    ts_ms: int


@dataclass(frozen=True, slots=True)
class Settled(RiskEvent):
    """An instrument expired and every position was closed at ``price``."""

    symbol: str
    price: int
    positions: int
    ts_ms: int


@dataclass(frozen=True, slots=True)
class SettlementDelayed(RiskEvent):
    """An instrument expired without an index to settle on: it is halted, positions stay open."""

    symbol: str
    reason: str
    ts_ms: int


@dataclass(frozen=True, slots=True)
class TpSlRefused(RiskEvent):
    """A triggered take-profit/stop-loss could not close the position (the risk check refused)."""

    account: str
    symbol: str
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class BadDebt(RiskEvent):
    """A loss nobody could absorb (never expected; kept visible rather than hidden)."""

    account: str
    amount: int
