"""Rolling-window withdrawal totals ("velocity") for policy limits.

The policy says which windows it needs (`VelocityWindow`: a scope and a
length); the caller supplies past totals for each, either computed here from
a list of past withdrawals or aggregated by the database. The policy engine
adds the request being decided to those past totals.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MAX_VELOCITY_WINDOW_S = 31 * 24 * 3600
MS_PER_S = 1000


class VelocityScope(enum.StrEnum):
    """Whose withdrawals a window adds up."""

    ACCOUNT = "account"  # This account, all assets (USD and count only).
    ACCOUNT_ASSET = "account_asset"  # This account, this asset.
    PLATFORM = "platform"  # Every account, all assets (USD and count only).
    PLATFORM_ASSET = "platform_asset"  # Every account, this asset.

    @property
    def per_asset(self) -> bool:
        return self in (VelocityScope.ACCOUNT_ASSET, VelocityScope.PLATFORM_ASSET)

    @property
    def per_account(self) -> bool:
        return self in (VelocityScope.ACCOUNT, VelocityScope.ACCOUNT_ASSET)


@dataclass(frozen=True, slots=True, order=True)
class VelocityWindow:
    """A scope and the length of its rolling window, in seconds."""

    scope: VelocityScope
    window_s: int

    def __post_init__(self) -> None:
        assert 1 <= self.window_s <= MAX_VELOCITY_WINDOW_S, f"window_s was {self.window_s}"

    def contains(self, at_ms: int, now_ms: int) -> bool:
        """Return whether an event at `at_ms` falls in the window ending at `now_ms`."""
        return now_ms - self.window_s * MS_PER_S < at_ms <= now_ms


@dataclass(frozen=True, slots=True)
class VelocityTotals:
    """Past withdrawals in one window. `total_minor` is 0 for cross-asset scopes."""

    count: int
    total_usd_cents: int
    total_minor: int = 0

    def __post_init__(self) -> None:
        assert self.count >= 0 and self.total_usd_cents >= 0 and self.total_minor >= 0, self


@dataclass(frozen=True, slots=True)
class PastWithdrawal:
    """A withdrawal that counts toward limits (requested and not cancelled or blocked)."""

    account_id: str
    asset: str
    amount_minor: int
    amount_usd_cents: int
    at_ms: int


def velocity_totals(
    history: Iterable[PastWithdrawal],
    windows: Iterable[VelocityWindow],
    *,
    account_id: str,
    asset: str,
    now_ms: int,
) -> dict[VelocityWindow, VelocityTotals]:
    """Sum `history` into each window for a request by `account_id` in `asset`."""
    records = tuple(history)
    return {window: _totals(records, window, account_id, asset, now_ms) for window in set(windows)}


def _totals(
    records: tuple[PastWithdrawal, ...],
    window: VelocityWindow,
    account_id: str,
    asset: str,
    now_ms: int,
) -> VelocityTotals:
    count = total_usd_cents = total_minor = 0
    for record in records:
        if window.scope.per_account and record.account_id != account_id:
            continue
        if window.scope.per_asset and record.asset != asset:
            continue
        if not window.contains(record.at_ms, now_ms):
            continue
        count += 1
        total_usd_cents += record.amount_usd_cents
        total_minor += record.amount_minor
    # Minor units of different assets cannot be added meaningfully.
    return VelocityTotals(count, total_usd_cents, total_minor if window.scope.per_asset else 0)


VelocityInput = Mapping[VelocityWindow, VelocityTotals]
