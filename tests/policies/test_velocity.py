from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from policies.velocity import (
    PastWithdrawal,
    VelocityScope,
    VelocityTotals,
    VelocityWindow,
    velocity_totals,
)

from .helpers import NOW_MS

HOUR_S = 3_600


def past(account: str, asset: str, minor: int, usd: int, ago_ms: int) -> PastWithdrawal:
    return PastWithdrawal(account, asset, minor, usd, NOW_MS - ago_ms)


HISTORY = [
    past("acct-1", "BTC", 10, 100, 1_000),
    past("acct-1", "ETH", 20, 200, 2_000),
    past("acct-2", "BTC", 30, 300, 3_000),
    past("acct-1", "BTC", 40, 400, HOUR_S * 1000),  # Exactly one window ago: outside.
    past("acct-1", "BTC", 50, 500, -1),  # In the future: outside.
]


def totals(scope: VelocityScope) -> VelocityTotals:
    window = VelocityWindow(scope, HOUR_S)
    return velocity_totals(HISTORY, [window], account_id="acct-1", asset="BTC", now_ms=NOW_MS)[window]


def test_velocity_account_scope_sums_all_assets_of_account() -> None:
    assert totals(VelocityScope.ACCOUNT) == VelocityTotals(2, 300, 0)


def test_velocity_account_asset_scope_sums_one_asset_of_account() -> None:
    assert totals(VelocityScope.ACCOUNT_ASSET) == VelocityTotals(1, 100, 10)


def test_velocity_platform_scope_sums_every_account() -> None:
    assert totals(VelocityScope.PLATFORM) == VelocityTotals(3, 600, 0)


def test_velocity_platform_asset_scope_sums_one_asset_of_every_account() -> None:
    assert totals(VelocityScope.PLATFORM_ASSET) == VelocityTotals(2, 400, 40)


def test_velocity_window_excludes_its_start_and_includes_now() -> None:
    window = VelocityWindow(VelocityScope.ACCOUNT, 1)
    assert window.contains(NOW_MS, NOW_MS)
    assert window.contains(NOW_MS - 999, NOW_MS)
    assert not window.contains(NOW_MS - 1000, NOW_MS)


@given(
    st.lists(st.integers(0, 10_000_000), max_size=30),
    st.integers(1, 3_600),
    st.integers(1, 3_600),
)
def test_velocity_longer_window_never_sums_less(ages_ms: list[int], short_s: int, extra_s: int) -> None:
    history = [past("acct-1", "BTC", 1, 1, age) for age in ages_ms]
    short = VelocityWindow(VelocityScope.ACCOUNT, short_s)
    long = VelocityWindow(VelocityScope.ACCOUNT, short_s + extra_s)
    result = velocity_totals(history, [short, long], account_id="acct-1", asset="BTC", now_ms=NOW_MS)
    assert result[short].count <= result[long].count
    assert result[short].total_usd_cents <= result[long].total_usd_cents
