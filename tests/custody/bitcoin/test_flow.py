"""End to end on the embedded regtest chain: deposits with reorgs, hot withdrawals, consolidation."""

from __future__ import annotations

import threading

from custody.chains.bitcoin.utxo import UtxoSet
from custody.wallets.deposit_watcher import DepositStatus
from custody.wallets.models import ChainDeposit
from custody.wallets.wallet import Temperature
from custody.wallets.withdrawal_executor import TxStatus

from .helpers import DESTINATION, BtcHarness


def _deposit_rows(btc: BtcHarness) -> list[ChainDeposit]:
    with btc.runtime.sessions() as session:
        return list(session.query(ChainDeposit).all())


def test_deposit_confirm_reorg_reconfirm_credits_once(btc: BtcHarness) -> None:
    address = btc.deposit_address("alice")
    btc.chain.faucet_send(address, 150_000)
    btc.chain.mine(1)
    height = btc.chain.height
    btc.runtime.watcher.tick()
    assert btc.user_balance("alice", "BTC") == 0
    [row] = _deposit_rows(btc)
    assert row.status == DepositStatus.SEEN
    btc.assert_reconciled()
    # The block holding the deposit is replaced; the transaction returns to the mempool and is re-mined.
    btc.chain.invalidate(height)
    btc.chain.mine(2)
    report = btc.runtime.watcher.tick()
    assert report.reorg_depth >= 1
    btc.chain.mine(2)
    btc.runtime.watcher.tick()
    assert btc.user_balance("alice", "BTC") == 150_000
    [row] = _deposit_rows(btc)
    assert (row.status, row.attempt) == (DepositStatus.CREDITED, 1)
    assert btc.wallet_balance(Temperature.DEPOSIT) == 150_000
    btc.assert_ledger_balanced()
    btc.assert_reconciled()
    # A second tick with nothing new changes nothing (idempotent ids).
    btc.runtime.watcher.tick()
    assert btc.user_balance("alice", "BTC") == 150_000


def test_deposit_reorged_out_after_credit_is_reversed(btc: BtcHarness) -> None:
    address = btc.deposit_address("bob")
    btc.chain.faucet_send(address, 80_000)
    btc.chain.mine(1)
    height = btc.chain.height
    btc.chain.mine(2)
    btc.runtime.watcher.tick()
    assert btc.user_balance("bob", "BTC") == 80_000
    btc.chain.invalidate(height, drop_transactions=True)  # the competing branch double-spent it
    btc.chain.mine(4)
    btc.runtime.watcher.tick()
    assert btc.user_balance("bob", "BTC") == 0
    [row] = _deposit_rows(btc)
    assert row.status == DepositStatus.REVERSED
    with btc.runtime.sessions() as session:
        assert UtxoSet.holdings(session, "bitcoin") == {}
    btc.assert_ledger_balanced()
    btc.assert_reconciled()


def test_withdrawal_with_change_posts_hold_and_books_fee(btc: BtcHarness) -> None:
    btc.fund_hot([500_000])
    btc.deposit("carol", 300_000)
    hot_before = btc.wallet_balance(Temperature.HOT)
    hold = btc.hold("carol", "BTC", 120_000, "hold-carol-1")
    view = btc.runtime.executor.execute("w1", "BTC", 120_000, DESTINATION, hold)
    assert view.status is TxStatus.BROADCAST
    btc.settle(5)
    view = btc.runtime.executor.get("wd:w1")
    assert view.status is TxStatus.CONFIRMED
    assert btc.chain.utxo_balance(DESTINATION) == 120_000
    assert btc.user_balance("carol", "BTC") == 180_000
    assert view.fee_paid_minor is not None and view.fee_paid_minor > 0
    assert btc.wallet_balance(Temperature.HOT) == hot_before - 120_000 - view.fee_paid_minor
    with btc.runtime.sessions() as session:
        holdings = UtxoSet.holdings(session, "bitcoin")
    hot = btc.wallet(Temperature.HOT)
    assert holdings[hot.id] == btc.wallet_balance(Temperature.HOT)  # the change came back to us
    btc.assert_ledger_balanced()
    btc.assert_reconciled()


def test_concurrent_withdrawals_never_spend_the_same_coin(btc: BtcHarness) -> None:
    btc.fund_hot([200_000, 210_000, 220_000])
    btc.deposit("dave", 1_000_000)
    holds = [btc.hold("dave", "BTC", 150_000, f"hold-d-{i}") for i in range(4)]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            btc.runtime.executor.execute(f"c{i}", "BTC", 150_000, DESTINATION, holds[i])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    views = [btc.runtime.executor.get(f"wd:c{i}") for i in range(4)]
    signed = [v for v in views if v.txid is not None]
    # Three coins of ~200k each pay three 150k withdrawals; the fourth waits for coins.
    assert len(signed) == 3
    assert [v.status for v in views].count(TxStatus.QUEUED) == 1
    with btc.runtime.sessions() as session:
        locks = [UtxoSet.locked_by(session, v.id) for v in signed]
    spent = [coin.id for coins in locks for coin in coins]
    assert len(spent) == len(set(spent)) == 3
    btc.settle(5)
    assert (
        sorted(v.status for v in (btc.runtime.executor.get(f"wd:c{i}") for i in range(4))).count(
            TxStatus.CONFIRMED
        )
        >= 3
    )
    btc.assert_ledger_balanced()
    btc.assert_reconciled()


def test_dust_withdrawal_fails_and_returns_the_hold(btc: BtcHarness) -> None:
    btc.deposit("erin", 50_000)
    hold = btc.hold("erin", "BTC", 100, "hold-erin")
    view = btc.runtime.executor.execute("dust", "BTC", 100, DESTINATION, hold)
    assert view.status is TxStatus.FAILED
    assert "dust" in view.note
    assert btc.user_balance("erin", "BTC") == 50_000
    btc.assert_ledger_balanced()


def test_withdrawal_waits_without_fee_estimate_and_clamps_to_cap(btc: BtcHarness) -> None:
    btc.fund_hot([300_000])
    btc.deposit("frank", 200_000)
    btc.chain.fee_rate_sat_vb = None
    hold = btc.hold("frank", "BTC", 50_000, "hold-frank")
    view = btc.runtime.executor.execute("f1", "BTC", 50_000, DESTINATION, hold)
    assert view.status is TxStatus.QUEUED and "fee estimate" in view.note
    btc.chain.fee_rate_sat_vb = 10_000  # far above the cap
    view = btc.runtime.executor.advance("wd:f1")
    assert view.status is TxStatus.BROADCAST
    rate = btc.runtime.spender.fees.cap_sat_vb
    assert btc.runtime.spender.fee_rate() == rate


def test_stuck_withdrawal_is_replaced_by_fee_and_the_replacement_settles(btc: BtcHarness) -> None:
    btc.fund_hot([400_000])
    btc.deposit("gina", 200_000)
    hold = btc.hold("gina", "BTC", 100_000, "hold-gina")
    first = btc.runtime.executor.execute("g1", "BTC", 100_000, DESTINATION, hold)
    assert first.status is TxStatus.BROADCAST
    btc.chain.mine(3, include_mempool=False)
    btc.runtime.executor.tick()
    attempts = btc.runtime.executor.attempts("wd:g1")
    assert len(attempts) == 2
    assert btc.chain.mempool_txids() == [attempts[1]]  # the original was replaced (BIP125)
    btc.settle(5)
    view = btc.runtime.executor.get("wd:g1")
    assert view.status is TxStatus.CONFIRMED and view.mined_txid == attempts[1]
    btc.assert_ledger_balanced()
    btc.assert_reconciled()
