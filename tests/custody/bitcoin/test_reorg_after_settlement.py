"""Deposits and withdrawals reorged out after settlement: freeze, alert, correction (docs/wallets.md)."""

from __future__ import annotations

from sqlalchemy import select

from custody import freezes
from custody.ledger.entry import AccountKind
from custody.ledger.models import LedgerTransfer
from custody.security_log import SecurityEvent
from custody.wallets.deposit_watcher import CORRECTION_ACTOR, SHORTFALL_OWNER, DepositStatus
from custody.wallets.models import ChainDeposit, ChainTransaction, OutgoingReorg
from custody.wallets.outgoing_reorg import CORRECTION_ACTOR as OUTGOING_CORRECTION_ACTOR
from custody.wallets.outgoing_reorg import ReorgStatus
from custody.wallets.wallet import Temperature
from custody.wallets.withdrawal_executor import TxStatus

from .helpers import DESTINATION, BtcHarness


def _credit_then_double_spend(btc: BtcHarness, owner: str, amount_sat: int) -> None:
    btc.chain.faucet_send(btc.deposit_address(owner), amount_sat)
    btc.chain.mine(1)
    height = btc.chain.height
    btc.chain.mine(2)
    btc.runtime.watcher.tick()
    assert btc.user_balance(owner, "BTC") == amount_sat
    btc.chain.invalidate(height, drop_transactions=True)  # the competing branch double-spent it
    btc.chain.mine(4)


def _deposits(btc: BtcHarness) -> list[ChainDeposit]:
    with btc.runtime.sessions() as session:
        return list(session.scalars(select(ChainDeposit)))


def _alerts(btc: BtcHarness, action: str) -> list[SecurityEvent]:
    with btc.runtime.sessions() as session:
        return list(session.scalars(select(SecurityEvent).where(SecurityEvent.action == action)))


def _entries(btc: BtcHarness, prefix: str) -> list[LedgerTransfer]:
    with btc.runtime.sessions() as session:
        return list(session.scalars(select(LedgerTransfer).where(LedgerTransfer.id.startswith(prefix))))


def test_deposit_reorged_after_credit_freezes_alerts_and_books_correction(btc: BtcHarness) -> None:
    _credit_then_double_spend(btc, "bob", 80_000)
    report = btc.runtime.watcher.tick()
    assert report.reorg_depth >= 1
    assert btc.user_balance("bob", "BTC") == 0
    [row] = _deposits(btc)
    assert row.status == DepositStatus.REVERSED
    with btc.runtime.sessions() as session:
        assert freezes.is_frozen(session, "bob")
        [frozen] = freezes.active(session, "bob")
    assert frozen.raised_by == "service:deposit-watcher" and row.txid in frozen.reason
    [alert] = _alerts(btc, "deposit.reorged_after_credit")
    assert (alert.subject, alert.outcome) == (row.id, "alert")
    corrections = _entries(btc, f"{row.id}:a0:")
    reversal = [t for t in corrections if t.id.endswith(":reversal")]
    assert len(reversal) == 2 and {t.actor for t in reversal} == {CORRECTION_ACTOR}
    assert btc.wallet_balance(Temperature.DEPOSIT) == 0
    btc.assert_ledger_balanced()
    btc.assert_reconciled()


def test_deposit_reorged_after_credit_twice_ticked_books_and_alerts_once(btc: BtcHarness) -> None:
    _credit_then_double_spend(btc, "bob", 80_000)
    btc.runtime.watcher.tick()
    btc.runtime.watcher.tick()
    assert len(_alerts(btc, "deposit.reorged_after_credit")) == 1
    assert len([t for t in _entries(btc, "dep:") if t.id.endswith(":reversal")]) == 2
    assert btc.user_balance("bob", "BTC") == 0


def test_deposit_reorged_after_owner_spent_part_books_shortfall_claim(btc: BtcHarness) -> None:
    btc.chain.faucet_send(btc.deposit_address("carol"), 90_000)
    btc.chain.mine(1)
    height = btc.chain.height
    btc.chain.mine(2)
    btc.runtime.watcher.tick()
    btc.hold("carol", "BTC", 60_000, "carol-spends")  # e.g. a withdrawal in flight
    btc.chain.invalidate(height, drop_transactions=True)
    btc.chain.mine(4)
    report = btc.runtime.watcher.tick()
    [row] = _deposits(btc)
    assert row.status == DepositStatus.SHORTFALL
    assert report.alerts and "shortfall of 60000 BTC" in report.alerts[0]
    claim = btc.ledger.find_account(SHORTFALL_OWNER, "BTC", AccountKind.EXTERNAL)
    assert claim is not None and claim.balance.debits_posted == 60_000
    carol = btc.ledger.find_account("carol", "BTC", AccountKind.USER_AVAILABLE)
    assert carol is not None and carol.balance.credit_balance_available == 0
    assert carol.balance.credit_balance_posted == 60_000  # exactly the hold still pending
    assert {t.actor for t in _entries(btc, f"{row.id}:a0:correction:")} == {CORRECTION_ACTOR}
    assert len(_alerts(btc, "deposit.reorg_shortfall")) == 1
    assert btc.wallet_balance(Temperature.DEPOSIT) == 0
    btc.assert_ledger_balanced()
    btc.assert_reconciled()


def test_deposit_reorged_before_confirmation_voided_without_freeze(btc: BtcHarness) -> None:
    btc.chain.faucet_send(btc.deposit_address("dave"), 50_000)
    btc.chain.mine(1)
    height = btc.chain.height
    btc.runtime.watcher.tick()
    btc.chain.invalidate(height, drop_transactions=True)
    btc.chain.mine(2)
    btc.runtime.watcher.tick()
    with btc.runtime.sessions() as session:
        assert not freezes.is_frozen(session, "dave")
    assert _alerts(btc, "deposit.reorged_after_credit") == []


def _withdrawal_settled_then_double_spent(btc: BtcHarness) -> int:
    """Pay carol's 120k withdrawal, settle it, then take its block out; return the fee it paid."""
    btc.fund_hot([500_000])
    btc.deposit("carol", 300_000)
    hold = btc.hold("carol", "BTC", 120_000, "hold-carol-w")
    btc.runtime.executor.execute("cw", "BTC", 120_000, DESTINATION, hold)
    btc.settle(5)
    view = btc.runtime.executor.get("wd:cw")
    assert view.status is TxStatus.CONFIRMED and view.fee_paid_minor
    assert btc.chain.utxo_balance(DESTINATION) == 120_000
    with btc.runtime.sessions() as session:
        tx = session.get(ChainTransaction, "wd:cw")
        assert tx is not None and tx.mined_height is not None
        mined_height = tx.mined_height
    depth = btc.chain.height - mined_height + 1
    btc.chain.invalidate(mined_height, drop_transactions=True)
    btc.chain.mine(depth + 1)
    assert btc.chain.utxo_balance(DESTINATION) == 0
    return view.fee_paid_minor


def _outgoing(btc: BtcHarness) -> list[OutgoingReorg]:
    with btc.runtime.sessions() as session:
        return list(session.scalars(select(OutgoingReorg)))


def test_withdrawal_reorged_after_settlement_freezes_alerts_and_books_correction(btc: BtcHarness) -> None:
    fee = _withdrawal_settled_then_double_spent(btc)
    hot_settled = btc.wallet_balance(Temperature.HOT)
    report, _ = btc.runtime.tick()
    [row] = _outgoing(btc)
    assert (row.id, row.status, row.fee_reversed_minor) == ("wd:cw:r0", ReorgStatus.REVERSED, fee)
    assert any("left the bitcoin chain" in a for a in report.alerts)
    with btc.runtime.sessions() as session:
        [frozen] = freezes.active(session, "carol")
    assert frozen.id == "reorg-out:wd:cw:r0"
    [alert] = _alerts(btc, "withdrawal.reorged_after_settlement")
    assert (alert.subject, alert.outcome) == ("wd:cw:r0", "alert")
    assert {t.actor for t in _entries(btc, "wd:cw:r0:")} == {OUTGOING_CORRECTION_ACTOR}
    assert btc.wallet_balance(Temperature.HOT) == hot_settled + 120_000 + fee
    assert btc.withdrawals_in_flight() == 120_000
    assert btc.user_balance("carol", "BTC") == 180_000
    btc.assert_ledger_balanced()
    btc.assert_reconciled()


def test_withdrawal_reorged_after_settlement_mined_again_settles_once(btc: BtcHarness) -> None:
    fee = _withdrawal_settled_then_double_spent(btc)
    hot_settled = btc.wallet_balance(Temperature.HOT)
    btc.runtime.tick()
    btc.settle(5)
    btc.settle(2)
    [row] = _outgoing(btc)
    assert row.status == ReorgStatus.RESETTLED and row.resettled_txid == row.txid
    assert row.resettle_fee_minor == fee
    assert btc.chain.utxo_balance(DESTINATION) == 120_000
    assert {t.id for t in _entries(btc, "wd:cw:r0:")} == {
        "wd:cw:r0:reserve:reversal", "wd:cw:r0:gas:reversal", "wd:cw:r0:resettle", "wd:cw:r0:gas"}
    assert btc.wallet_balance(Temperature.HOT) == hot_settled
    assert btc.withdrawals_in_flight() == 0
    assert len(_alerts(btc, "withdrawal.reorged_after_settlement")) == 1
    btc.assert_ledger_balanced()
    btc.assert_reconciled()
