"""Whole-unit amounts as the operator reads them: integer arithmetic only, never a float."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from signer.display import gwei, iso_ms, time_left, whole_units


def test_whole_units_reads_like_the_issue_examples() -> None:
    assert whole_units(125 * 10**16, 18, "ETH") == "1.25 ETH"
    assert whole_units(2_500 * 10**6, 6, "USDC") == "2,500 USDC"
    assert whole_units(120_000, 8, "BTC") == "0.0012 BTC"
    assert whole_units(0, 8, "BTC") == "0 BTC"
    assert whole_units(1, 18, "ETH") == "0.000000000000000001 ETH"
    assert gwei(1_500_000_000) == "1.5 gwei"


@given(st.integers(0, 2**256 - 1), st.integers(0, 36))
def test_whole_units_round_trips_to_the_exact_minor_amount(amount: int, decimals: int) -> None:
    text = whole_units(amount, decimals, "X").removesuffix(" X").replace(",", "")
    whole, _, fraction = text.partition(".")
    assert int(whole) * 10**decimals + int((fraction or "0").ljust(decimals, "0") or "0") == amount


def test_expiry_is_iso_utc_with_time_left() -> None:
    assert iso_ms(1_700_003_600_000) == "2023-11-14T23:13:20Z"
    assert time_left(1_700_003_600_000, 1_700_000_000_000) == "1 h 0 min left"
    assert time_left(1_700_000_600_000, 1_700_000_000_000) == "10 min left"
    assert time_left(1_700_000_000_000, 1_700_000_000_000) == "EXPIRED"
