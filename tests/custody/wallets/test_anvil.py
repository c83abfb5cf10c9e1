"""On a real node (anvil): deposits confirmed, reorged and re-applied; withdrawals, sweeps, restarts."""

from __future__ import annotations

import pytest

from custody.chains.ethereum.devchain import AnvilChain
from custody.wallets.deposit_watcher import DepositStatus
from custody.wallets.models import ChainDeposit
from custody.wallets.wallet import Temperature
from custody.wallets.withdrawal_executor import TxStatus

from .helpers import ETH, USDC, Harness, make_harness


@pytest.fixture
def harness(anvil: AnvilChain, sqlite_url: str, keystore, clock) -> Harness:
    return make_harness(anvil, sqlite_url, keystore, clock)


def _deposits(harness: Harness) -> list[ChainDeposit]:
    with harness.runtime.wallets._sessions() as session:
        return list(session.query(ChainDeposit).order_by(ChainDeposit.id))


def test_reorg_voids_unconfirmed_deposit_and_reapplies_when_it_returns(harness: Harness) -> None:
    chain = harness.chain
    address = harness.deposit_address("alice")
    snapshot = chain.snapshot()
    chain.set_automine(False)
    eth_tx = chain.send_eth(address, 3 * ETH)
    token_tx = chain.mint(address, 250 * USDC)
    raw = [chain.web3.eth.get_raw_transaction(tx) for tx in (eth_tx, token_tx)]
    chain.mine(1)
    harness.runtime.watcher.tick()
    assert {d.status for d in _deposits(harness)} == {DepositStatus.SEEN}
    harness.assert_reconciled()

    chain.revert(snapshot)  # the block holding both deposits is gone
    chain.mine(2)
    report = harness.runtime.watcher.tick()
    assert report.reorg_depth >= 1
    assert {d.status for d in _deposits(harness)} == {DepositStatus.VOIDED}
    assert harness.user_balance("alice", "ETH") == 0
    harness.assert_ledger_balanced()
    harness.assert_reconciled()

    for tx in raw:  # the same transactions are mined again in a later block
        chain.web3.eth.send_raw_transaction(tx)
    chain.mine(1)
    harness.runtime.watcher.tick()
    assert [d.attempt for d in _deposits(harness)] == [1, 1]
    chain.mine(3)
    harness.runtime.watcher.tick()
    assert harness.user_balance("alice", "ETH") == 3 * ETH
    assert harness.user_balance("alice", "USDC") == 250 * USDC
    harness.assert_ledger_balanced()
    harness.assert_reconciled()


def test_watcher_restart_never_double_credits(harness: Harness) -> None:
    address = harness.deposit_address("bob")
    harness.chain.send_eth(address, ETH)
    harness.runtime.watcher.tick()
    restarted = harness.restart()
    harness.chain.mine(5)
    for _ in range(3):
        restarted.runtime.watcher.tick()
        harness.restart().runtime.watcher.tick()
    assert restarted.user_balance("bob", "ETH") == ETH
    restarted.assert_ledger_balanced()


def _funded_hot(harness: Harness) -> Harness:
    address = harness.deposit_address("alice")
    harness.chain.send_eth(address, 10 * ETH)
    harness.chain.mint(address, 2_000 * USDC)
    harness.chain.mine(4)
    harness.runtime.watcher.tick()
    for asset in ("ETH", "USDC"):
        harness.runtime.treasury.consolidate(asset)
        harness.settle()
    assert harness.wallet_balance(Temperature.HOT, "USDC") == 2_000 * USDC
    return harness


DESTINATION = "0x00000000000000000000000000000000000000bb"


def test_crash_between_sign_and_broadcast_sends_exactly_once(harness: Harness) -> None:
    _funded_hot(harness)
    hold = harness.hold("alice", "ETH", ETH, "hold-crash1")
    executor = harness.runtime.executor
    original = executor._broadcast
    executor._broadcast = lambda row: None  # the process dies after signing
    executor.execute("crash1", "ETH", ETH, DESTINATION, hold)
    assert executor.get("wd:crash1").status is TxStatus.SIGNED
    restarted = harness.restart()
    restarted.runtime.executor.execute("crash1", "ETH", ETH, DESTINATION, hold)
    restarted.settle()
    executor._broadcast = original
    view = restarted.runtime.executor.get("wd:crash1")
    assert view.status is TxStatus.CONFIRMED and view.attempts == 1
    assert harness.chain.web3.eth.get_balance(DESTINATION) == ETH
    assert restarted.user_balance("alice", "ETH") == 9 * ETH
    restarted.assert_ledger_balanced()
    restarted.assert_reconciled()


def test_crash_after_broadcast_before_recording_sends_exactly_once(harness: Harness) -> None:
    _funded_hot(harness)
    hold = harness.hold("alice", "USDC", 50 * USDC, "hold-crash2")
    adapter = harness.runtime.executor._adapter
    real = adapter.broadcast

    def broadcast_then_die(raw: bytes) -> str:
        real(raw)
        raise KeyboardInterrupt("killed after broadcast")

    adapter.broadcast = broadcast_then_die  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        harness.runtime.executor.execute("crash2", "USDC", 50 * USDC, DESTINATION, hold)
    restarted = harness.restart()
    restarted.settle()
    view = restarted.runtime.executor.get("wd:crash2")
    assert view.status is TxStatus.CONFIRMED and view.attempts == 1
    assert restarted.runtime.adapter.balance(DESTINATION, "USDC") == 50 * USDC
    assert restarted.user_balance("alice", "USDC") == 1_950 * USDC
    restarted.assert_reconciled()


def test_stuck_transaction_is_replaced_with_same_nonce_and_mined_once(harness: Harness) -> None:
    _funded_hot(harness)
    hold = harness.hold("alice", "ETH", ETH, "hold-stuck")
    chain = harness.chain
    chain.set_automine(False)
    executor = harness.runtime.executor
    real = executor._adapter.broadcast
    executor._adapter.broadcast = lambda raw: "0x"  # type: ignore[method-assign,assignment]  # dropped
    executor.execute("stuck", "ETH", ETH, DESTINATION, hold)
    for _ in range(4):
        chain.mine(1)
        executor.tick()
    executor._adapter.broadcast = real  # type: ignore[method-assign]
    executor.tick()
    chain.set_automine(True)
    harness.settle()
    view = executor.get("wd:stuck")
    assert view.status is TxStatus.CONFIRMED and view.attempts >= 2
    assert chain.web3.eth.get_balance(DESTINATION) == ETH
    harness.assert_ledger_balanced()
    harness.assert_reconciled()


def test_insufficient_hot_balance_is_queued_not_failed(harness: Harness) -> None:
    address = harness.deposit_address("carol")
    harness.chain.send_eth(address, 2 * ETH)
    harness.chain.mine(4)
    harness.runtime.watcher.tick()
    hold = harness.hold("carol", "ETH", ETH, "hold-q")
    view = harness.runtime.executor.execute("queued", "ETH", ETH, DESTINATION, hold)
    assert view.status is TxStatus.QUEUED and "holds 0 wei" in view.note
    harness.runtime.treasury.consolidate("ETH")
    harness.settle()
    assert harness.runtime.executor.get("wd:queued").status is TxStatus.CONFIRMED
    harness.assert_reconciled()


def test_sweep_and_outside_transfer_discrepancy(harness: Harness) -> None:
    _funded_hot(harness)
    harness.runtime.treasury.set_limits("USDC", 100 * USDC, 500 * USDC, 1_000 * USDC)
    harness.runtime.treasury.rebalance("USDC")
    harness.settle()
    assert harness.wallet_balance(Temperature.COLD, "USDC") == 1_500 * USDC
    harness.assert_reconciled()
    harness.chain.send_eth(harness.hot_address(), ETH)  # outside the platform
    harness.chain.mine(1)
    harness.runtime.watcher.tick()
    report = harness.runtime.reconciler.run()
    assert report.status == "discrepancy"
    bad = [line for line in report.lines if line["status"] != "ok"]
    assert [(b["wallet"], b["asset"], b["difference"]) for b in bad] == [("ethereum-hot", "ETH", str(ETH))]
