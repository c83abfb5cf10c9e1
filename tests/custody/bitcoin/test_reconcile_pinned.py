"""Bitcoin reconciliation reads chain and ledger at one height: a block mined mid-run is not drift."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from custody.chains.adapter import ChainCode, ChainError
from custody.chains.bitcoin.regtest import RegtestChain
from custody.wallets.wallet import Temperature
from custody.wallets.withdrawal_executor import TxStatus

from .helpers import DESTINATION, BtcHarness


class _MovingBackend:
    """The regtest node, running ``hook`` once just before the reconciler's UTXO-set scan answers."""

    def __init__(self, chain: RegtestChain, hook: Callable[[], None]) -> None:
        self._chain = chain
        self._hook: Callable[[], None] | None = hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chain, name)

    def scantxoutset(self, action: str, scanobjects: list[Any]) -> dict[str, Any]:
        hook, self._hook = self._hook, None
        if hook is not None:
            hook()
        return self._chain.scantxoutset(action, scanobjects)


def _move_during_next_scan(btc: BtcHarness, hook: Callable[[], None]) -> None:
    btc.runtime.adapter.backend = _MovingBackend(btc.chain, hook)


def _lines(report: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(line["temperature"], line["asset"]): line for line in report.lines}


def _busy_world(btc: BtcHarness) -> tuple[int, str]:
    """A funded hot wallet, a broadcast withdrawal in the mempool and a deposit one block short."""
    btc.fund_hot([400_000])
    btc.deposit("alice", 300_000)
    hold = btc.hold("alice", "BTC", 120_000, "hold-alice")
    assert btc.runtime.executor.execute("w1", "BTC", 120_000, DESTINATION, hold).status is TxStatus.BROADCAST
    btc.chain.faucet_send(btc.deposit_address("bob"), 70_000)
    btc.chain.mine(2, include_mempool=False)  # bob's deposit waits in the mempool too
    btc.runtime.watcher.tick()
    height = btc.chain.height
    btc.assert_reconciled()
    return height, btc.deposit_address("carol")


def test_bitcoin_reconcile_block_mined_mid_run_spending_and_paying_us_reports_no_drift(
    btc: BtcHarness,
) -> None:
    height, carol = _busy_world(btc)

    def block_mid_run() -> None:
        # Mined after the ledger side was read: it spends our hot coin (the withdrawal), pays change
        # and two deposits to us, and the watcher even scans it and credits what it can.
        btc.chain.faucet_send(carol, 55_000)
        btc.chain.mine(1)
        btc.runtime.watcher.tick()
        btc.runtime.executor.tick()

    _move_during_next_scan(btc, block_mid_run)
    report = btc.runtime.reconciler.run()
    assert report.status == "ok", [line for line in report.lines if line["status"] != "ok"]
    assert report.height == height
    assert btc.chain.height == height + 1
    btc.assert_reconciled()  # and at the new height, once nothing moves


def test_bitcoin_reconcile_several_blocks_mid_run_roll_back_to_the_reconciled_height(btc: BtcHarness) -> None:
    height, carol = _busy_world(btc)

    def blocks_mid_run() -> None:
        btc.chain.mine(1)  # the withdrawal and bob's deposit
        btc.chain.faucet_send(carol, 55_000)
        btc.chain.mine(4)
        btc.runtime.watcher.tick()
        btc.runtime.executor.tick()

    hot = btc.wallet(Temperature.HOT)
    held_at_height = sum(btc.chain.utxo_balance(a.address) for a in btc.runtime.wallets.addresses(hot.id))
    _move_during_next_scan(btc, blocks_mid_run)
    report = btc.runtime.reconciler.run()
    assert report.status == "ok", [line for line in report.lines if line["status"] != "ok"]
    assert report.height == height
    # At the reconciled height the withdrawal had not spent the hot coin, nor paid change back.
    assert int(_lines(report)[("hot", "BTC")]["on_chain"]) == held_at_height > 0
    held_now = sum(btc.chain.utxo_balance(a.address) for a in btc.runtime.wallets.addresses(hot.id))
    assert held_now != held_at_height
    btc.settle(4)
    btc.assert_reconciled()


def test_bitcoin_reconcile_real_drift_is_still_reported_when_a_block_lands_mid_run(btc: BtcHarness) -> None:
    height, carol = _busy_world(btc)
    # Coins sent to the hot wallet from outside the platform: on chain, in no ledger entry.
    btc.chain.faucet_send(btc.hot_address(), 33_000)
    btc.chain.mine(1)
    btc.runtime.watcher.tick()
    reconciled_at = btc.chain.height

    def block_mid_run() -> None:
        btc.chain.faucet_send(carol, 55_000)
        btc.chain.mine(1)
        btc.runtime.watcher.tick()

    _move_during_next_scan(btc, block_mid_run)
    report = btc.runtime.reconciler.run()
    assert report.status == "discrepancy" and report.height == reconciled_at
    lines = _lines(report)
    assert int(lines[("hot", "BTC")]["difference"]) == 33_000
    assert lines[("deposit", "BTC")]["status"] == "ok"
    assert lines[("cold", "BTC")]["status"] == "ok"
    assert reconciled_at == height + 1


def test_bitcoin_reconcile_reorg_under_the_scanned_block_is_an_error_not_a_number(btc: BtcHarness) -> None:
    height, _ = _busy_world(btc)

    def reorg_mid_run() -> None:
        btc.chain.invalidate(height, drop_transactions=True)
        btc.chain.mine(2, include_mempool=False)

    _move_during_next_scan(btc, reorg_mid_run)
    with pytest.raises(ChainError) as info:
        btc.runtime.reconciler.run()
    assert info.value.code is ChainCode.NODE_UNAVAILABLE
    assert "reorganised" in info.value.message
