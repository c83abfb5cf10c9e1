"""End to end on the embedded py-evm chain: deposit, confirm, consolidate, withdraw, sweep, reconcile."""

from __future__ import annotations

import pytest

from custody.chains.ethereum.devchain import EmbeddedChain
from custody.wallets.wallet import Temperature
from custody.wallets.withdrawal_executor import TxStatus

from .helpers import ETH, USDC, Harness, make_harness


@pytest.fixture
def harness(database_url: str, keystore, clock) -> Harness:
    """On SQLite and PostgreSQL."""
    return make_harness(EmbeddedChain(), database_url, keystore, clock)


def test_deposit_is_credited_only_after_confirmations(harness: Harness) -> None:
    address = harness.deposit_address("alice")
    harness.chain.send_eth(address, 2 * ETH)
    harness.chain.mint(address, 500 * USDC)
    harness.runtime.watcher.tick()
    assert harness.user_balance("alice", "ETH") == 0
    harness.assert_reconciled()
    harness.chain.mine(3)
    harness.runtime.watcher.tick()
    assert harness.user_balance("alice", "ETH") == 2 * ETH
    assert harness.user_balance("alice", "USDC") == 500 * USDC
    harness.assert_ledger_balanced()
    harness.assert_reconciled()


def test_full_flow_consolidate_withdraw_sweep_reconcile(harness: Harness) -> None:
    address = harness.deposit_address("alice")
    harness.chain.send_eth(address, 5 * ETH)
    harness.chain.mint(address, 1_000 * USDC)
    harness.chain.mine(4)
    harness.runtime.watcher.tick()
    for asset in ("ETH", "USDC"):
        harness.runtime.treasury.consolidate(asset)
        harness.settle()
    assert harness.wallet_balance(Temperature.HOT, "USDC") == 1_000 * USDC
    assert harness.wallet_balance(Temperature.HOT, "ETH") > 4 * ETH
    harness.assert_reconciled()

    destination = "0x00000000000000000000000000000000000000aa"
    hold = harness.hold("alice", "USDC", 100 * USDC, "hold-w1")
    view = harness.runtime.executor.execute("w1", "USDC", 100 * USDC, destination, hold)
    assert view.status in (TxStatus.SIGNED, TxStatus.BROADCAST, TxStatus.MINED)
    harness.settle()
    assert harness.runtime.executor.get("wd:w1").status is TxStatus.CONFIRMED
    assert harness.chain.adapter().balance(destination, "USDC") == 100 * USDC
    assert harness.user_balance("alice", "USDC") == 900 * USDC
    assert harness.ledger.get_transfer("wd:w1:hold:post").pending_id == "hold-w1"

    harness.runtime.treasury.set_limits("USDC", 100 * USDC, 300 * USDC, 500 * USDC)
    sweep = harness.runtime.treasury.rebalance("USDC")
    assert sweep is not None
    harness.settle()
    assert harness.wallet_balance(Temperature.HOT, "USDC") == 300 * USDC
    assert harness.wallet_balance(Temperature.COLD, "USDC") == 600 * USDC
    harness.assert_ledger_balanced()
    harness.assert_reconciled()
