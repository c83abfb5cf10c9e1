"""The Bitcoin chain in the simulated world: deposits with confirmations, hot withdrawals through the
policy and the dispatcher, cold withdrawals through two of three offline cosigners (PSBT bundles),
consolidation and sweeps, reorgs of unconfirmed and settled blocks, stuck transactions and fee spikes,
all under the invariants; and a broken Bitcoin world is caught with its seed, step and invariant."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select, text

from custody.ledger.entry import AccountKind, TransferKind
from custody.ledger.posting import TransferRequest
from custody.wallets.models import ChainTransaction, ChainTransactionAttempt
from custody.wallets.wallet import Temperature
from strongroom.simulation import actors, runner
from strongroom.simulation.world import BTC, World, btc_destination_of

SAT = actors.SAT_PER_BTC


def _explain(result: runner.RunResult) -> str:
    return json.dumps(result.summary(), indent=1)


def _outcomes(result: runner.RunResult) -> list[str]:
    return [entry["outcome"] for entry in result.trace]


def _btc_withdraw(trader: str, key: str, amount: int, **extra: Any) -> dict[str, Any]:
    return {"op": "withdraw", "trader": trader, "asset": BTC, "amount": amount, "key": key, **extra}


BTC_TICK = {"op": "wallet_tick", "chain": "bitcoin"}
BTC_DISPATCH = {"op": "dispatch", "chain": "bitcoin"}


def _destination_holds(amount: int, trader: str = "trader0") -> Any:
    def inspect(world: World) -> None:
        assert world.btc.utxo_balance(btc_destination_of(trader)) == amount

    return inspect


def test_simulation_bitcoin_hot_withdrawal_is_sent_once_confirmed_and_completed() -> None:
    amount = SAT // 50
    actions = [_btc_withdraw("trader0", "b1", amount), BTC_DISPATCH, BTC_DISPATCH,
               {"op": "btc_mine", "blocks": 3}, BTC_TICK, BTC_DISPATCH, {"op": "audit"}]
    result = runner.run(41, len(actions), actions=actions, inspect=_destination_holds(amount))
    assert result.ok, _explain(result)
    outcomes = _outcomes(result)
    assert outcomes[0] == "201 approved"
    assert outcomes[1] == "dispatched 1 completed 0" and outcomes[2] == "dispatched 0 completed 0"
    assert outcomes[5] == "dispatched 0 completed 1"


def test_simulation_bitcoin_withdrawal_above_the_balance_is_refused_and_changes_nothing() -> None:
    actions = [_btc_withdraw("trader1", "b-big", SAT + 1), BTC_DISPATCH, {"op": "btc_mine", "blocks": 2},
               BTC_TICK]
    result = runner.run(42, len(actions), actions=actions, inspect=_destination_holds(0, "trader1"))
    assert result.ok, _explain(result)
    assert _outcomes(result)[0].startswith("4"), _outcomes(result)[0]
    assert _outcomes(result)[1] == "dispatched 0 completed 0"


COLD_TRACE: list[dict[str, Any]] = [
    {"op": "rebalance", "asset": BTC},  # the hot surplus above 3 BTC goes to the 2-of-3 multisig
    {"op": "btc_mine", "blocks": 3}, BTC_TICK,
    _btc_withdraw("trader0", "c1", SAT // 2, source="cold"),
    {"op": "approve", "trader": "trader0", "key": "c1", "approver": "treasury1"},
    {"op": "approve", "trader": "trader0", "key": "c1", "approver": "treasury2"},
    {"op": "export_bundle", "trader": "trader0", "key": "c1"},
    {"op": "sign_bundle", "trader": "trader0", "key": "c1", "late_ms": 0, "cosigner": 0},
    {"op": "import_bundle", "trader": "trader0", "key": "c1", "which": -1},
    {"op": "sign_bundle", "trader": "trader0", "key": "c1", "late_ms": 0, "cosigner": 0},
    {"op": "sign_bundle", "trader": "trader0", "key": "c1", "late_ms": 0, "cosigner": 2},
    {"op": "import_bundle", "trader": "trader0", "key": "c1", "which": -1},
    {"op": "import_bundle", "trader": "trader0", "key": "c1", "which": 0},
    {"op": "btc_mine", "blocks": 3}, BTC_TICK, {"op": "audit"},
]


def _cold_settled(world: World) -> None:
    assert world.btc.utxo_balance(btc_destination_of("trader0")) == SAT // 2
    wallets = world.svc.btc_runtime.wallets
    cold = wallets.one("bitcoin", Temperature.COLD)
    account = world.svc.ledger.get_account(wallets.wallet_account(cold, BTC))
    # The sweep arrived, the withdrawal and its fee left, the change went to a change address of the
    # multisig: the cold wallet's ledger account is what its addresses hold on chain (the invariants
    # check this too, at the audit).
    held = sum(world.btc.utxo_balance(a.address) for a in wallets.addresses(cold.id))
    assert account.balance.debits_posted - account.balance.credits_posted == held > 0


def test_simulation_bitcoin_cold_withdrawal_needs_two_cosigners_then_settles() -> None:
    result = runner.run(43, len(COLD_TRACE), actions=COLD_TRACE, inspect=_cold_settled)
    assert result.ok, _explain(result)
    outcomes = _outcomes(result)
    assert outcomes[0] == "TransactionView", outcomes[0]
    assert outcomes[3] == "201 pending_approval" and outcomes[5] == "200"
    assert outcomes[6].startswith("exported")
    assert outcomes[7] == "signed"
    assert outcomes[8] == "imported exported"  # one cosigner's signature is not enough
    assert outcomes[9].startswith("refused")  # the same cosigner does not sign twice
    assert outcomes[10] == "signed"
    assert outcomes[11] == "imported broadcast"  # two distinct cosigners: combined and broadcast
    assert outcomes[12] == "imported broadcast"  # importing an older answer again changes nothing
    assert "bundles 1" in outcomes[14]


def test_simulation_bitcoin_deposit_reorged_out_before_confirmation_is_never_credited() -> None:
    amount = SAT // 10
    actions = [{"op": "deposit", "trader": "trader2", "asset": BTC, "amount": amount},
               {"op": "btc_mine", "blocks": 1}, BTC_TICK,
               {"op": "reorg", "chain": "bitcoin", "depth": 1, "drop": True},
               {"op": "btc_mine", "blocks": 3}, BTC_TICK, {"op": "audit"}]

    def not_credited(world: World) -> None:
        account = world.svc.ledger.find_account("trader2", BTC, AccountKind.USER_AVAILABLE)
        assert account is not None and account.balance.credit_balance_posted == SAT  # the bootstrap's only

    result = runner.run(44, len(actions), actions=actions, inspect=not_credited)
    assert result.ok, _explain(result)
    assert "dropping their transactions" in _outcomes(result)[3]


def test_simulation_bitcoin_reorg_of_settled_blocks_that_mines_them_again_credits_once() -> None:
    amount = SAT // 10
    actions = [{"op": "deposit", "trader": "trader2", "asset": BTC, "amount": amount},
               {"op": "btc_mine", "blocks": 3}, BTC_TICK,
               _btc_withdraw("trader3", "w1", SAT // 20), BTC_DISPATCH, {"op": "btc_mine", "blocks": 2},
               BTC_TICK, BTC_DISPATCH,
               {"op": "reorg", "chain": "bitcoin", "depth": 4, "drop": False},
               BTC_TICK, {"op": "btc_mine", "blocks": 2}, BTC_TICK, BTC_DISPATCH, {"op": "audit"}]

    def credited_once(world: World) -> None:
        account = world.svc.ledger.find_account("trader2", BTC, AccountKind.USER_AVAILABLE)
        assert account is not None and account.balance.credit_balance_posted == SAT + amount
        assert world.btc.utxo_balance(btc_destination_of("trader3")) == SAT // 20

    result = runner.run(45, len(actions), actions=actions, inspect=credited_once)
    assert result.ok, _explain(result)
    assert _outcomes(result)[8].startswith("bitcoin reorged 4 blocks")


def test_simulation_bitcoin_fee_spike_is_met_at_the_cap_and_a_stuck_withdrawal_is_replaced() -> None:
    actions = [{"op": "fee_spike", "chain": "bitcoin", "multiplier": 10_000, "blocks": 3},
               _btc_withdraw("trader2", "s2", SAT // 40), BTC_DISPATCH, BTC_TICK,
               {"op": "btc_mine", "blocks": 3}, BTC_TICK, BTC_DISPATCH,
               {"op": "stuck_tx", "chain": "bitcoin", "blocks": 8},
               _btc_withdraw("trader1", "s1", SAT // 40), BTC_DISPATCH, BTC_TICK,
               {"op": "btc_mine", "blocks": 3}, BTC_TICK, {"op": "btc_mine", "blocks": 2}, BTC_TICK,
               {"op": "btc_mine", "blocks": 4}, BTC_TICK, BTC_DISPATCH, {"op": "audit"}]

    def capped_and_replaced(world: World) -> None:
        cap = world.svc.btc_runtime.spender.fees.cap_sat_vb
        with world.svc.app.extensions["strongroom.sessions"]() as session:
            rows = session.scalars(select(ChainTransaction).where(
                ChainTransaction.chain == "bitcoin", ChainTransaction.purpose == "withdrawal")).all()
            attempts = session.scalars(select(ChainTransactionAttempt).where(
                ChainTransactionAttempt.transaction_id.in_([r.id for r in rows]))).all()
        assert [r.status for r in rows] == ["confirmed"] * 2, [(r.id, r.status, r.note) for r in rows]
        rates = sorted(a.max_fee_per_gas for a in attempts)
        assert cap in rates and max(rates) == cap, rates  # the spike was met at the cap, never above
        assert len(attempts) > len(rows), rates  # the stuck one was replaced (RBF) at least once

    result = runner.run(46, len(actions), actions=actions, inspect=capped_and_replaced)
    assert result.ok, _explain(result)


def test_simulation_seed_with_bitcoin_actions_reproduces_trace_and_final_state() -> None:
    first = runner.run(5, 45)
    second = runner.run(5, 45)
    ops = {entry["action"]["op"] for entry in first.trace}
    chains = {entry["action"].get("chain") for entry in first.trace}
    assets = {entry["action"].get("asset") for entry in first.trace}
    assert "bitcoin" in chains or BTC in assets, (ops, chains, assets)
    assert first.trace == second.trace
    assert first.state_hash and first.state_hash == second.state_hash


# ------------------------------------------------------------------ a deliberately broken Bitcoin world


def _btc_ledger_edit(world: World, model: actors.Model, a: dict[str, Any]) -> str:
    """A planted insider: credits a user's BTC account in the database, outside the ledger."""
    account = world.svc.ledger.find_account(a["trader"], BTC, AccountKind.USER_AVAILABLE)
    assert account is not None
    with world.svc.app.extensions["strongroom.engine"].begin() as connection:
        connection.execute(text("UPDATE ledger_accounts SET credits_posted = :v WHERE id = :id"),
                           {"v": str(account.balance.credits_posted + a["sat"]), "id": account.id})
    return "edited"


def test_simulation_bitcoin_ledger_edit_is_caught_with_seed_step_and_invariant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(actors.HANDLERS, "btc_ledger_edit", _btc_ledger_edit)
    actions = [{"op": "btc_mine", "blocks": 1}, _btc_withdraw("trader0", "e1", SAT // 100),
               {"op": "btc_ledger_edit", "trader": "trader1", "sat": 5 * SAT},
               {"op": "btc_mine", "blocks": 1}]
    result = runner.run(47, len(actions), actions=actions)
    assert result.failure is not None and result.failure.step == 2, _explain(result)
    names = {v.name for v in result.failure.violations}
    # The edit breaks the double entry, and the claims now exceed the coins on chain.
    assert {"ledger_zero_sum", "claims_covered_by_holdings"} <= names, names
    summary = result.summary()
    assert summary["seed"] == 47 and summary["failure"]["step"] == 2
    assert any("BTC" in v["message"] for v in summary["failure"]["violations"])
    assert summary["trace_tail"][-1]["action"]["op"] == "btc_ledger_edit"


def _void_btc_hold(world: World, model: actors.Model, a: dict[str, Any]) -> str:
    """A planted bug: the hold of a live BTC withdrawal is voided while the withdrawal stays live."""
    wid = actors.withdrawal_id(a["trader"], a["key"])
    view = world.svc.access.withdrawals.find(wid)
    assert view is not None
    from custody.withdrawals.models import WithdrawalRequest

    with world.svc.app.extensions["strongroom.sessions"]() as session:
        hold = session.get(WithdrawalRequest, wid).hold_transfer_id  # type: ignore[union-attr]
    world.svc.ledger.transfer(TransferRequest(id=f"{hold}:planted-void", kind=TransferKind.VOID,
                                              pending_id=hold, reference="planted"))
    return "voided"


def test_simulation_bitcoin_withdrawal_without_a_live_hold_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(actors.HANDLERS, "void_btc_hold", _void_btc_hold)
    actions = [_btc_withdraw("trader0", "h1", SAT // 2),  # above the approval threshold: it waits
               {"op": "void_btc_hold", "trader": "trader0", "key": "h1"}]
    result = runner.run(48, len(actions), actions=actions)
    assert result.trace[0]["outcome"] == "201 pending_approval", _explain(result)
    assert result.failure is not None and result.failure.step == 1
    [violation] = [v for v in result.failure.violations if v.name == "hold_matches_withdrawal"]
    assert violation.message.startswith("BTC withdrawal") and "pending_approval" in violation.message


def _pay_hot_wallet_outside(world: World, model: actors.Model, a: dict[str, Any]) -> str:
    """A planted discrepancy: coins reach the hot wallet outside the platform (nobody booked them)."""
    wallets = world.svc.btc_runtime.wallets
    hot = wallets.primary_address(wallets.one("bitcoin", Temperature.HOT).id).address
    world.btc.faucet_send(hot, a["sat"])
    return "paid"


def test_simulation_bitcoin_coins_outside_the_ledger_fail_reconciliation_at_the_audit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(actors.HANDLERS, "pay_hot_outside", _pay_hot_wallet_outside)
    actions = [{"op": "pay_hot_outside", "sat": 12_345}, {"op": "btc_mine", "blocks": 1},
               {"op": "audit"}]
    result = runner.run(49, len(actions), actions=actions)
    assert result.failure is not None and result.failure.step == 2, _explain(result)
    [violation] = [v for v in result.failure.violations if v.name == "btc_chain_reconciles"]
    assert "bitcoin-hot BTC" in violation.message


def test_simulation_bitcoin_double_send_to_a_destination_is_caught_and_shrunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def pay_twice(world: World, model: actors.Model, a: dict[str, Any]) -> str:
        world.btc.faucet_send(btc_destination_of(a["trader"]), a["sat"])
        world.btc.mine(1)
        return "paid twice"

    monkeypatch.setitem(actors.HANDLERS, "btc_pay_twice", pay_twice)
    actions = [{"op": "btc_mine", "blocks": 1}, {"op": "deposit", "trader": "trader2", "asset": BTC,
                                                 "amount": SAT // 10},
               {"op": "btc_pay_twice", "trader": "trader3", "sat": 50_000}, {"op": "btc_mine", "blocks": 1}]
    failed = runner.run(50, len(actions), actions=actions)
    assert failed.failure is not None and failed.failure.step == 2
    assert failed.failure.violations[0].name == "no_double_send"
    minimal = runner.shrink(failed, max_runs=6)
    assert [a["op"] for a in minimal.actions] == ["btc_pay_twice"]
