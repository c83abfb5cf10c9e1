"""The pure deposit-cap rule: what is credited within 24h never exceeds the tier's cap."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from policies.kyc import TIERS, deposit_cap_refusal, tier_limits

amounts = st.lists(st.integers(min_value=0, max_value=10**12), max_size=30)


@given(tier=st.sampled_from(TIERS), deposits=amounts)
def test_deposit_cap_credited_total_never_exceeds_cap_property(tier: int, deposits: list[int]) -> None:
    credited = 0
    for amount in deposits:
        if deposit_cap_refusal(tier, credited, amount) is None:
            credited += amount
    cap = tier_limits(tier).deposit_daily_usd_cents
    assert cap is None or credited <= cap


def test_deposit_cap_exactly_at_cap_is_credited_one_cent_over_is_held() -> None:
    assert deposit_cap_refusal(1, 0, 1_000_000) is None
    refusal = deposit_cap_refusal(1, 1, 1_000_000)
    assert refusal is not None and "tier 1 cap of 1000000" in refusal


def test_deposit_cap_tier_zero_holds_any_nonzero_deposit() -> None:
    assert deposit_cap_refusal(0, 0, 1) is not None
    assert deposit_cap_refusal(0, 0, 0) is None


def test_deposit_cap_unpriced_is_held_unless_tier_has_no_cap() -> None:
    assert deposit_cap_refusal(2, 0, None) is not None
    assert deposit_cap_refusal(4, 0, None) is None
