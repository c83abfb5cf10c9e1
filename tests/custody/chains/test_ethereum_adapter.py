"""The Ethereum adapter on the embedded chain: addresses, balances, blocks, token decimals."""

from __future__ import annotations

import pytest

from custody.chains.adapter import ChainCode, ChainError
from custody.chains.ethereum.devchain import EmbeddedChain

GOOD = "0x52908400098527886E0F7030069857D2E4169EE7"


@pytest.fixture(scope="module")
def chain() -> EmbeddedChain:
    return EmbeddedChain()


def test_normalize_address_accepts_lowercase_and_checksummed(chain: EmbeddedChain) -> None:
    adapter = chain.adapter()
    assert adapter.normalize_address(GOOD.lower()) == GOOD
    assert adapter.normalize_address(GOOD) == GOOD


@pytest.mark.parametrize("bad", ["0x52908400098527886E0F7030069857D2E4169Ee7", "0x1234", "hello", "",
                                 "52908400098527886E0F7030069857D2E4169EE7zz"])
def test_normalize_address_bad_checksum_or_shape_is_invalid_address(chain: EmbeddedChain, bad: str) -> None:
    with pytest.raises(ChainError) as info:
        chain.adapter().normalize_address(bad)
    assert info.value.code is ChainCode.INVALID_ADDRESS


def test_token_has_six_decimals_and_transfers_show_in_blocks(chain: EmbeddedChain) -> None:
    adapter = chain.adapter()
    out = chain.web3.eth.call({"to": adapter.token_address("USDC"), "data": "0x313ce567"})
    assert int.from_bytes(out, "big") == 6
    chain.mint(GOOD, 1_234_567)
    block = adapter.block(adapter.head_height())
    assert [(t.asset, t.recipient, t.amount_minor) for t in block.transfers] == [("USDC", GOOD, 1_234_567)]
    assert adapter.balance(GOOD, "USDC") == 1_234_567
