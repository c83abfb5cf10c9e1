"""The simulator's database, network, chain and clock faults: each one bites where it is aimed, and
the platform keeps every invariant through it (on SQLite and on PostgreSQL)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from sqlalchemy import func, select

from custody.wallets.models import ChainTransaction, ChainTransactionAttempt
from custody.withdrawals.models import WithdrawalRequest
from strongroom.simulation import actors, runner
from strongroom.simulation.world import World

ETH = actors.ETH
USDC = actors.USDC
POSTGRES_ENV = "STRONGROOM_TEST_POSTGRES_URL"


def _explain(result: runner.RunResult) -> str:
    return json.dumps(result.summary(), indent=1)


def _outcomes(result: runner.RunResult) -> list[str]:
    return [entry["outcome"] for entry in result.trace]


def _db_fault(target: dict[str, Any], nth: int, mode: str, restart: bool = False) -> dict[str, Any]:
    return {"op": "db_fault", "target": target, "nth": nth, "mode": mode, "restart": restart}


def _withdraw(trader: str, key: str, amount: int = ETH // 10, asset: str = "ETH") -> dict[str, Any]:
    return {"op": "withdraw", "trader": trader, "asset": asset, "amount": amount, "key": key}


# Failed and unacknowledged commits in the withdrawal path, the dispatcher, the wallet round and the
# exchange's collateral path, some followed by a restart; then the retries and the jobs go on.
DB_FAULT_TRACE: list[dict[str, Any]] = [
    _db_fault(_withdraw("trader0", "k1"), 1, "fail"),
    _withdraw("trader0", "k1"),
    _db_fault(_withdraw("trader1", "k2"), 1, "lost_ack"),
    _withdraw("trader1", "k2"),
    _db_fault(_withdraw("trader2", "k3"), 2, "lost_ack"),
    _withdraw("trader2", "k3"),
    _db_fault({"op": "dispatch"}, 1, "fail"),
    _db_fault({"op": "dispatch"}, 2, "lost_ack"),
    _db_fault({"op": "dispatch"}, 3, "fail", restart=True),
    {"op": "dispatch"},
    {"op": "mine", "blocks": 3},
    _db_fault({"op": "wallet_tick"}, 1, "lost_ack"),
    _db_fault({"op": "wallet_tick"}, 2, "fail"),
    {"op": "wallet_tick"},
    {"op": "dispatch"},
    _db_fault({"op": "collateral", "trader": "trader3", "direction": "deposit", "amount": 1_000 * USDC},
              1, "lost_ack"),
    _db_fault({"op": "collateral", "trader": "trader3", "direction": "withdraw", "amount": 1_000 * USDC},
              1, "fail", restart=True),
    {"op": "clock", "ms": 61_000},  # past the idempotency claim's staleness: the retry takes it over
    _withdraw("trader2", "k3"),
]


def _sent_once(world: World) -> None:
    sessions = world.svc.app.extensions["strongroom.sessions"]
    with sessions() as session:
        counts = session.execute(select(ChainTransaction.hold_transfer_id, func.count())
                                 .where(ChainTransaction.hold_transfer_id.is_not(None))
                                 .group_by(ChainTransaction.hold_transfer_id)).all()
    assert len(counts) == 3 and all(n == 1 for _, n in counts), counts


def test_simulation_failed_and_unacknowledged_commits_on_the_money_path_keep_every_invariant() -> None:
    result = runner.run(31, len(DB_FAULT_TRACE), actions=DB_FAULT_TRACE, inspect=_sent_once)
    assert result.ok, _explain(result)
    outcomes = _outcomes(result)
    # The fault struck where it was aimed, and the client saw a stable error, not a stack trace.
    assert outcomes[0] == "withdraw: commit 1 fail: 503 database_unavailable"
    assert outcomes[2] == "withdraw: commit 1 lost_ack: 503 database_unavailable"
    assert outcomes[1] == outcomes[3] == "201 approved"  # a retry with the same key goes through
    assert outcomes[5] == "409 idempotency_key_in_progress"  # the claim was committed, its answer lost
    assert outcomes[6].startswith("dispatch: commit 1 fail: raised OperationalError")
    assert outcomes[8].endswith("restarted (1)")
    assert outcomes[16].endswith("restarted (2)")
    assert outcomes[18] in ("200 approved", "201 approved"), outcomes[18]  # one withdrawal, not two


# The network swallows the first broadcast for seven blocks: the executor rebroadcasts, then replaces
# it (same nonce, higher fee); when the stall ends, the swallowed versions arrive newest first. Then
# the node quotes fees 10,000 times the real ones; then the clocks drift.
CHAIN_FAULT_TRACE: list[dict[str, Any]] = [
    _withdraw("trader0", "k1"),
    {"op": "stuck_tx", "blocks": 7, "drop": False, "reverse": True},
    {"op": "dispatch"},
    *[step for _ in range(5) for step in ({"op": "mine", "blocks": 1}, {"op": "wallet_tick"})],
    {"op": "mine", "blocks": 3}, {"op": "wallet_tick"},
    {"op": "mine", "blocks": 3}, {"op": "wallet_tick"}, {"op": "dispatch"},
    {"op": "fee_spike", "multiplier": 10_000, "blocks": 4},
    _withdraw("trader1", "k2", 100 * USDC, "USDC"),
    {"op": "dispatch"}, {"op": "wallet_tick"},
    {"op": "mine", "blocks": 3}, {"op": "wallet_tick"},
    {"op": "mine", "blocks": 3}, {"op": "wallet_tick"}, {"op": "dispatch"},
    {"op": "clock_skew", "client_ms": 6_000, "jobs_ms": -600_000},
    _withdraw("trader2", "k3"),
    {"op": "clock_skew", "client_ms": -2_000, "jobs_ms": -600_000},
    _withdraw("trader2", "k3"),
    {"op": "dispatch"}, {"op": "mine", "blocks": 3}, {"op": "wallet_tick"},
    {"op": "clock_skew", "client_ms": 0, "jobs_ms": 3_600_000},
    {"op": "expire_holds"}, {"op": "dispatch"},
]


def _replaced(world: World) -> None:
    sessions = world.svc.app.extensions["strongroom.sessions"]
    with sessions() as session:
        withdrawal = session.get(WithdrawalRequest, actors.withdrawal_id("trader0", "k1"))
        assert withdrawal is not None and withdrawal.state == "completed"
        first = session.scalars(select(ChainTransaction).where(
            ChainTransaction.hold_transfer_id == withdrawal.hold_transfer_id)).one()
        assert first.status == "confirmed"
        attempts = session.scalars(select(ChainTransactionAttempt).where(
            ChainTransactionAttempt.transaction_id == first.id)).all()
    assert len(attempts) >= 2, "the stuck transaction was never replaced"
    assert len({a.nonce for a in attempts}) == 1  # replacements reuse the nonce


def test_simulation_stuck_transaction_fee_spike_and_clock_skew_keep_every_invariant() -> None:
    result = runner.run(32, len(CHAIN_FAULT_TRACE), actions=CHAIN_FAULT_TRACE, inspect=_replaced)
    assert result.ok, _explain(result)  # fees_within_cap and no_double_send after every step
    outcomes = _outcomes(result)
    assert outcomes[1].startswith("broadcasts held until height")
    assert outcomes[17] == "dispatched 0 completed 1"  # the stuck withdrawal settled, once
    assert outcomes[18].startswith("fees x10000")
    assert outcomes[26] == "dispatched 0 completed 1"  # sent once the spike passed, within the cap
    assert outcomes[28] == "401 timestamp_in_future"  # a client clock 6 s ahead is refused
    assert outcomes[30] == "201 approved"


def test_simulation_reordered_and_replayed_requests_change_nothing_twice() -> None:
    order = {"symbol": "BTC-PERP", "side": "buy", "qty": 5, "type": "limit", "tif": "GTC",
             "price": 59_000 * USDC}
    actions = [{"op": "reorder", "trader": "trader3", "order": order, "delivery": [1, 0, 2],
                "collateral": USDC, "replay": 0}]
    result = runner.run(33, 1, actions=actions)
    assert result.ok, _explain(result)
    # The cancel overtook its order (nothing to cancel), the order rested, and the same signed bytes
    # delivered again were refused as a replay.
    assert result.trace[0]["outcome"] == "1:404 unknown_order 0:201 2:200 again 0:401 request_replayed"


def test_simulation_concurrent_requests_on_one_withdrawal_and_one_order_keep_every_invariant() -> None:
    order = {"symbol": "ETH-PERP", "side": "sell", "qty": 20, "type": "limit", "tif": "GTC",
             "price": 3_100 * USDC}
    actions = [
        _withdraw("trader0", "big", 3 * ETH),  # two approvals needed
        {"op": "race", "kind": "withdrawal", "trader": "trader0", "key": "big", "asset": "ETH",
         "amount": 3 * ETH, "moves": ["approve", "approve", "cancel"],
         "approvers": ["treasury1", "treasury2", "treasury3"]},
        {"op": "race", "kind": "order", "trader": "trader1", "order": order,
         "moves": ["place", "place", "cancel"]},
        {"op": "race", "kind": "collateral", "trader": "trader2", "copies": 3, "amount": 20_000 * USDC},
        {"op": "dispatch"}, {"op": "mine", "blocks": 3}, {"op": "wallet_tick"}, {"op": "dispatch"},
    ]
    result = runner.run(34, len(actions), ("concurrent",), actions=actions)
    assert result.ok, _explain(result)
    outcomes = _outcomes(result)
    assert outcomes[1].startswith("withdrawal x3: ")
    # Of three withdrawals of the whole margin at once, exactly one is paid.
    assert outcomes[3].startswith("collateral x3: ") and outcomes[3].count("200") == 1, outcomes[3]


@pytest.mark.skipif(not os.environ.get(POSTGRES_ENV), reason=f"PostgreSQL not configured: set {POSTGRES_ENV}")
def test_simulation_fixed_seed_on_postgresql_holds_every_invariant_and_matches_sqlite() -> None:
    url = os.environ[POSTGRES_ENV]
    on_postgres = runner.run(5, 25, database=url)
    assert on_postgres.ok, _explain(on_postgres)
    assert on_postgres.database == "postgresql"
    assert url not in json.dumps(on_postgres.summary())  # the server URL (a password) is never reported
    faulted = runner.run(31, len(DB_FAULT_TRACE), actions=DB_FAULT_TRACE, database=url)
    assert faulted.ok, _explain(faulted)
    outcomes = _outcomes(faulted)
    assert outcomes[0] == "withdraw: commit 1 fail: 503 database_unavailable"
    assert outcomes[18] in ("200 approved", "201 approved"), outcomes[18]


def test_simulation_consolidation_before_the_watcher_saw_a_deposit_that_is_then_reorged_settles() -> None:
    """Finding (seed 40, 150 steps, default faults + concurrent): a consolidation counted a deposit
    the deposit watcher had not scanned yet as credited; a reorg then removed the deposit, and the
    consolidation stayed queued forever, short of the amount it was created for."""
    actions = [
        {"op": "deposit", "trader": "trader0", "asset": "ETH", "amount": 9 * ETH // 10},
        {"op": "stuck_tx", "blocks": 3, "drop": False, "reverse": False},
        {"op": "consolidate", "asset": "ETH"},  # before any wallet round has seen the deposit's block
        {"op": "reorg", "depth": 1},  # the deposit's block is replaced; the deposit is gone
        {"op": "mine", "blocks": 3}, {"op": "wallet_tick"},
    ]
    result = runner.run(40, len(actions), actions=actions)
    assert result.ok, _explain(result)  # settled_after_quiescence: no transaction left queued
