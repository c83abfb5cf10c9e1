"""A settled withdrawal or sweep reorganised out of the embedded Ethereum chain (docs/wallets.md)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from custody import freezes, withdrawal_halts
from custody.chains.ethereum.devchain import EmbeddedChain
from custody.ledger.entry import AccountKind
from custody.ledger.models import LedgerTransfer
from custody.security_log import SecurityEvent
from custody.wallets.models import OutgoingReorg
from custody.wallets.outgoing_reorg import CORRECTION_ACTOR, ReorgStatus
from custody.wallets.wallet import Temperature
from custody.wallets.withdrawal_executor import TxStatus

from .helpers import ETH, Harness, make_harness

DESTINATION = "0x00000000000000000000000000000000000000aa"


@pytest.fixture
def harness(database_url: str, keystore, clock) -> Harness:  # type: ignore[no-untyped-def]
    """On SQLite and PostgreSQL."""
    return make_harness(EmbeddedChain(), database_url, keystore, clock)


def _funded(harness: Harness) -> None:
    harness.chain.send_eth(harness.deposit_address("alice"), 5 * ETH)
    harness.chain.mine(4)
    harness.runtime.watcher.tick()
    harness.runtime.treasury.consolidate("ETH")
    harness.settle()


def _settled_then_reorged(harness: Harness) -> None:
    """Withdraw 1 ETH for alice, settle it, then revert the chain to before it."""
    _funded(harness)
    snapshot = harness.chain.snapshot()
    hold = harness.hold("alice", "ETH", ETH, "hold-w1")
    harness.runtime.executor.execute("w1", "ETH", ETH, DESTINATION, hold)
    harness.settle()
    assert harness.runtime.executor.get("wd:w1").status is TxStatus.CONFIRMED
    assert harness.chain.adapter().balance(DESTINATION, "ETH") == ETH
    harness.chain.revert(snapshot)
    harness.chain.mine(2)
    assert harness.chain.adapter().balance(DESTINATION, "ETH") == 0


def _reorgs(harness: Harness) -> list[OutgoingReorg]:
    with harness.runtime.wallets._sessions() as session:
        return list(session.scalars(select(OutgoingReorg).order_by(OutgoingReorg.id)))


def _events(harness: Harness, action: str) -> list[SecurityEvent]:
    with harness.runtime.wallets._sessions() as session:
        return list(session.scalars(select(SecurityEvent).where(SecurityEvent.action == action)))


def _entries(harness: Harness, prefix: str) -> list[LedgerTransfer]:
    with harness.runtime.wallets._sessions() as session:
        return list(session.scalars(select(LedgerTransfer).where(LedgerTransfer.id.startswith(prefix))))


def _in_flight(harness: Harness) -> int:
    account = harness.ledger.find_account("platform", "ETH", AccountKind.WITHDRAWALS_IN_FLIGHT)
    return 0 if account is None else account.balance.credit_balance_posted


def test_settled_withdrawal_reorged_out_freezes_alerts_and_books_correction(harness: Harness) -> None:
    _settled_then_reorged(harness)
    hot_settled = harness.wallet_balance(Temperature.HOT, "ETH")
    fee = harness.runtime.executor.get("wd:w1").fee_paid_minor
    assert fee is not None and fee > 0
    report, _ = harness.runtime.tick()
    [row] = _reorgs(harness)
    assert (row.id, row.status, row.ledger_synced) == ("wd:w1:r0", ReorgStatus.REVERSED, True)
    with harness.runtime.wallets._sessions() as session:
        [frozen] = freezes.active(session, "alice")
    assert frozen.id == "reorg-out:wd:w1:r0" and row.txid in frozen.reason
    [alert] = _events(harness, "withdrawal.reorged_after_settlement")
    assert (alert.subject, alert.outcome) == ("wd:w1:r0", "alert")
    assert any("left the ethereum chain" in a for a in report.alerts)
    corrections = _entries(harness, "wd:w1:r0:")
    assert {t.id for t in corrections} == {"wd:w1:r0:reserve:reversal", "wd:w1:r0:gas:reversal"}
    assert {t.actor for t in corrections} == {CORRECTION_ACTOR}
    # The coins never left on the best chain: the hot wallet has the amount and the fee back, the
    # amount is owed again in withdrawals_in_flight, and alice's debit stands.
    assert harness.wallet_balance(Temperature.HOT, "ETH") == hot_settled + ETH + fee
    assert _in_flight(harness) == ETH
    assert harness.user_balance("alice", "ETH") == 4 * ETH
    harness.assert_ledger_balanced()
    harness.assert_reconciled()


def test_reorged_withdrawal_mined_again_settles_exactly_once(harness: Harness) -> None:
    _settled_then_reorged(harness)
    hot_settled = harness.wallet_balance(Temperature.HOT, "ETH")
    harness.runtime.tick()  # detects; the next ticks re-broadcast the same signed transaction
    for _ in range(3):
        harness.settle(4)
    [row] = _reorgs(harness)
    assert row.status == ReorgStatus.RESETTLED and row.ledger_synced
    assert harness.chain.adapter().balance(DESTINATION, "ETH") == ETH  # paid once, by the same tx
    assert row.resettled_txid == row.txid
    assert {t.id for t in _entries(harness, "wd:w1:r0:")} == {
        "wd:w1:r0:reserve:reversal", "wd:w1:r0:gas:reversal", "wd:w1:r0:resettle", "wd:w1:r0:gas"}
    # The same transaction in another block may pay another base fee: the receipt's fee is booked.
    assert row.resettle_fee_minor is not None and row.resettle_fee_minor > 0
    assert harness.wallet_balance(Temperature.HOT, "ETH") == (
        hot_settled + row.fee_reversed_minor - row.resettle_fee_minor)
    assert _in_flight(harness) == 0
    assert len(_events(harness, "withdrawal.reorged_after_settlement")) == 1
    with harness.runtime.wallets._sessions() as session:
        assert freezes.is_frozen(session, "alice")  # people lift it (custody/freezes.py)
    harness.assert_ledger_balanced()
    harness.assert_reconciled()


def test_reorged_withdrawal_checked_twice_books_and_alerts_once(harness: Harness) -> None:
    _settled_then_reorged(harness)
    harness.runtime.tick()
    harness.runtime.tick()
    assert len(_reorgs(harness)) == 1
    assert len(_events(harness, "withdrawal.reorged_after_settlement")) == 1
    assert len(_entries(harness, "wd:w1:r0:reserve:reversal")) == 1


def test_settled_sweep_reorged_out_halts_the_chain(harness: Harness) -> None:
    _funded(harness)
    harness.runtime.treasury.set_limits("ETH", ETH, 2 * ETH, 3 * ETH)
    snapshot = harness.chain.snapshot()
    sweep = harness.runtime.treasury.rebalance("ETH")
    assert sweep is not None
    harness.settle()
    assert harness.runtime.executor.get(sweep.id).status is TxStatus.CONFIRMED
    cold_swept = harness.wallet_balance(Temperature.COLD, "ETH")
    harness.chain.revert(snapshot)
    harness.chain.mine(2)
    harness.runtime.tick()
    [row] = _reorgs(harness)
    assert row.transaction_id == sweep.id and row.status == ReorgStatus.REVERSED
    with harness.runtime.wallets._sessions() as session:
        halt = withdrawal_halts.halted(session, "ETH")
        assert freezes.active(session) == []
    assert halt is not None and halt.scope == "chain:ethereum" and halt.raised_by == "service:outgoing-reorg"
    assert harness.wallet_balance(Temperature.COLD, "ETH") == cold_swept - row.amount_minor
    harness.assert_ledger_balanced()
    harness.assert_reconciled()
