"""Destinations are fixed in the text approvals bind (EIP-55 for EVM assets) when they enter."""

from __future__ import annotations

import pytest

from custody.withdrawals.address import canonical_destination
from custody.withdrawals.codes import WithdrawalCode, WithdrawalError

CHECKSUMMED = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"


@pytest.mark.parametrize("asset", ["ETH", "USDC"])
@pytest.mark.parametrize("given", [CHECKSUMMED, CHECKSUMMED.lower(), "0x" + CHECKSUMMED[2:].upper()])
def test_evm_destination_in_any_single_case_is_stored_in_eip55_form(asset: str, given: str) -> None:
    assert canonical_destination(asset, given) == CHECKSUMMED


def test_evm_destination_with_a_wrong_checksum_is_refused_as_a_typo() -> None:
    typo = CHECKSUMMED.replace("5aAeb", "5AAeb")
    with pytest.raises(WithdrawalError) as info:
        canonical_destination("ETH", typo)
    assert info.value.code is WithdrawalCode.ADDRESS_INVALID
    assert "EIP-55" in str(info.value)


@pytest.mark.parametrize(("asset", "given"), [
    ("BTC", "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"),
    ("BTC", CHECKSUMMED.lower()),
    ("ETH", "not-an-evm-address"),
])
def test_other_destinations_are_left_for_their_chain_to_judge(asset: str, given: str) -> None:
    assert canonical_destination(asset, given) == given
