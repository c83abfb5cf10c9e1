"""Shard settlement into the ledger: mapping, idempotency, reused ids, deposits, reconciliation.

Every test runs on SQLite and PostgreSQL (the `ledger` fixture); the NATS
consumer and the CLI process are in test_settle_stream.py.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from custody.db import make_engine, make_session_factory
from custody.ledger.entry import AccountKind
from custody.ledger.models import LedgerTransfer
from custody.ledger.service import Ledger
from exchange.commands import Deposit
from exchange.postings import PostingWriter, account_of
from exchange.stream.shard.machine import DEPOSIT_VOIDED, ShardMachine
from exchange.stream.shard.settle import (
    DepositReconciler,
    DepositRefused,
    SettlementRefused,
    ShardSettlement,
    reserve_deposit,
    void_deposit_command,
)
from exchange.stream.shard.wire import FundedDeposit, ShardBatch, ShardResult
from tests.conftest import FakeClock
from tests.exchange.helpers import USDC
from tests.exchange.shard.settle_flow import (
    CONFIG,
    TRADERS,
    apply_batches,
    cmd,
    fund_spot,
    funded_flow,
    opening,
    random_flow,
)

KEYS = ["m:alice", "h:alice", "a:alice", "clearing", "fees", "insurance", "bad_debt", "wallet",
        "m:alice:iso:BTC-PERP"]


@pytest.fixture
def ledger_db(database_url: str, clock: FakeClock) -> Iterator[tuple[Ledger, object]]:
    engine = make_engine(database_url)
    yield Ledger(make_session_factory(engine), clock=clock), engine
    engine.dispose()


def _spot(ledger: Ledger, user: str) -> int:
    found = ledger.find_account(user, "USDC", AccountKind.USER_AVAILABLE.value)
    return 0 if found is None else ledger.balance(found.id).credit_balance_available


def _count(engine: object, prefix: str) -> int:
    with make_session_factory(engine)() as s:  # type: ignore[arg-type]
        return s.scalar(select(func.count()).select_from(LedgerTransfer)
                        .where(LedgerTransfer.id.startswith(prefix))) or 0


# ---------------------------------------------------------------- mapping


def test_account_of_shard_main_maps_exactly_like_embedded() -> None:
    for key in KEYS:
        assert account_of(key, "MAIN") == account_of(key, None)


def test_account_of_other_shard_suffixes_margin_hold_and_platform_never_spot() -> None:
    assert account_of("m:alice", "EU")[0] == "alice@EU"
    assert account_of("h:alice", "EU")[0] == "alice@EU"
    assert account_of("m:alice:iso:BTC-PERP", "EU")[0] == "alice:iso:BTC-PERP@EU"
    assert account_of("clearing", "EU")[0] == "exchange.clearing@EU"
    assert account_of("bad_debt", "EU")[0] == "exchange.bad_debt@EU"
    assert account_of("fees", "EU") == ("exchange@EU", AccountKind.FEES, None)
    assert account_of("insurance", "EU") == ("exchange@EU", AccountKind.INSURANCE_FUND, None)
    assert account_of("a:alice", "EU") == account_of("a:alice", None)
    assert account_of("wallet", "EU") == account_of("wallet", None)


def test_account_of_shard_account_spelling_another_shard_refused() -> None:
    for shard in ("MAIN", "EU"):
        with pytest.raises(ValueError):
            account_of("m:alice@EU", shard)
    with pytest.raises(ValueError):
        account_of("x:alice", "MAIN")


# ---------------------------------------------------------------- settlement


def test_shard_settlement_flow_ledger_equals_replica_for_every_account(
    ledger_db: tuple[Ledger, object],
) -> None:
    ledger, _ = ledger_db
    for user in TRADERS:
        fund_spot(ledger, user, 50_000 * USDC, f"spot.{user}")
    for shard in ("MAIN", "EU"):
        machine = ShardMachine(CONFIG, shard)
        batches = apply_batches(machine, opening(ledger, shard) + random_flow(7, 150), 16)
        assert sum(len(r.postings) for b in batches for r in b.results) > 100
        settlement = ShardSettlement(ledger, shard)
        settlement.settle(batches)
        assert settlement.reconcile(machine) == []
        assert settlement.stats.created == settlement.stats.postings
    # Each shard is its own pool: EU's fees are not MAIN's.
    main, eu = PostingWriter(ledger, shard="MAIN"), PostingWriter(ledger, shard="EU")
    assert main.account("fees") != eu.account("fees")
    # Spot is shared: both shards' deposits came out of the same a:<user>.
    spot = main.account("a:alice")
    assert eu.account("a:alice") == spot
    assert ledger.balance(spot).debits_posted == 2 * 10_000 * USDC


def test_shard_settlement_redelivered_batches_write_nothing_twice(
    ledger_db: tuple[Ledger, object],
) -> None:
    ledger, engine = ledger_db
    machine, batches = funded_flow(ledger, "MAIN", 3, 80, 8)
    first = ShardSettlement(ledger, "MAIN")
    first.settle(batches[:5])
    written = _count(engine, "s.MAIN.")
    # A crash before the ack: the restarted consumer sees every batch again, overlapping.
    again = ShardSettlement(ledger, "MAIN")
    again.settle(batches[:3])
    again.settle(batches[2:])
    again.settle(batches)
    assert _count(engine, "s.MAIN.") == first.stats.created + again.stats.created
    assert again.stats.existing >= written
    assert again.reconcile(machine) == []


def test_shard_settlement_posting_id_reused_with_other_body_stops_and_writes_nothing(
    ledger_db: tuple[Ledger, object],
) -> None:
    ledger, engine = ledger_db
    _, batches = funded_flow(ledger, "MAIN", 5, 60, 10)
    settlement = ShardSettlement(ledger, "MAIN")
    settlement.settle(batches[:2])
    before = _count(engine, "s.")
    # A forged (or diverged) batch: a posting id already written, with another amount,
    # followed by new postings that must not be written either (linked).
    old = next(r for r in batches[0].results if r.postings and r.postings[0][1] == "single")
    tid, kind, debit, credit, amount, pending = old.postings[0]
    forged = ShardResult(old.seq, 0, "", [], [(tid, kind, debit, credit, amount + 1, pending)], [])
    bad = ShardBatch("MAIN", batches[2].first_seq, batches[2].last_seq,
                     [*batches[2].results, forged])
    with pytest.raises(SettlementRefused, match="different"):
        settlement.settle([bad])
    assert _count(engine, "s.") == before
    # The same id twice in one round with two bodies is refused before the ledger sees it.
    twice = ShardBatch("MAIN", 1, 1, [ShardResult(1, 0, "", [], [(tid, kind, debit, credit, 5, pending),
                                                                  (tid, kind, debit, credit, 6, pending)],
                                                  [])])
    with pytest.raises(SettlementRefused, match="twice"):
        ShardSettlement(ledger, "MAIN").settle([twice])


def test_shard_settlement_missing_results_between_batches_stop_loudly(
    ledger_db: tuple[Ledger, object],
) -> None:
    ledger, engine = ledger_db
    machine, batches = funded_flow(ledger, "MAIN", 9, 40, 5)
    settlement = ShardSettlement(ledger, "MAIN")
    settlement.settle(batches[:2])
    before = _count(engine, "s.MAIN.")
    # Batch 3 was lost or deleted from the stream: its postings would never be written.
    with pytest.raises(SettlementRefused, match="missing"):
        settlement.settle(batches[3:])
    with pytest.raises(SettlementRefused, match="missing"):
        ShardSettlement(ledger, "MAIN").settle([batches[0], batches[2], batches[4]])
    assert _count(engine, "s.MAIN.") == before
    settlement.settle(batches[2:])  # nothing missing: settles
    assert settlement.reconcile(machine) == []


def test_shard_settlement_batch_of_another_shard_refused(ledger_db: tuple[Ledger, object]) -> None:
    ledger, _ = ledger_db
    with pytest.raises(SettlementRefused, match="shard"):
        ShardSettlement(ledger, "EU").settle([ShardBatch("MAIN", 1, 1, [])])


def test_shard_settlement_unfunded_plain_deposit_stops_loudly(ledger_db: tuple[Ledger, object]) -> None:
    ledger, engine = ledger_db
    machine = ShardMachine(CONFIG, "MAIN")
    # A raw Deposit (not a reserved FundedDeposit) with no spot balance behind it: the
    # ledger refuses the spot debit, and settlement stops instead of skipping it.
    batches = apply_batches(machine, [cmd(Deposit("mallory", 1_000 * USDC))], 1)
    with pytest.raises(SettlementRefused, match="has 0 available"):
        ShardSettlement(ledger, "MAIN").settle(batches)
    assert _count(engine, "s.MAIN.") == 0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), n=st.integers(0, 120), per_batch=st.integers(1, 40))
def test_shard_settlement_any_flow_any_batching_ledger_equals_replica(
    ledger_db: tuple[Ledger, object], seed: int, n: int, per_batch: int,
) -> None:
    ledger, _ = ledger_db
    # Its own pool and posting ids per example, even when hypothesis repeats an example.
    shard = f"P{uuid.uuid4().hex[:12].upper()}"
    machine, batches = funded_flow(ledger, shard, seed, n, per_batch, spot=10_000 * USDC)
    settlement = ShardSettlement(ledger, shard)
    settlement.settle(batches)
    assert settlement.reconcile(machine) == []


# ---------------------------------------------------------------- collateral deposits


def test_shard_settlement_forged_funded_deposit_stops_and_moves_nothing(
    ledger_db: tuple[Ledger, object],
) -> None:
    ledger, engine = ledger_db
    fund_spot(ledger, "alice", 100 * USDC, "spot.alice")
    fund_spot(ledger, "mallory", 1 * USDC, "spot.mallory")
    ref = reserve_deposit(ledger, "alice", 40 * USDC, "MAIN")
    never = "cdep.MAIN." + "ee" * 16
    # Someone who can append to the stream: alice's reservation credited to mallory, more
    # than was reserved, or a reservation that does not exist. The venue cannot tell; the
    # ledger's post of the reservation can, and settlement stops instead of moving money.
    for forged in (FundedDeposit("mallory", 40 * USDC, ref), FundedDeposit("alice", 41 * USDC, ref),
                   FundedDeposit("alice", 1 * USDC, never)):
        machine = ShardMachine(CONFIG, "MAIN")
        with pytest.raises(SettlementRefused, match="ledger refused"):
            ShardSettlement(ledger, "MAIN").settle(apply_batches(machine, [cmd(forged)], 1))
    assert _count(engine, "s.MAIN.") == 0
    assert _spot(ledger, "alice") == 60 * USDC and _spot(ledger, "mallory") == 1 * USDC
    # The genuine deposit still settles.
    machine = ShardMachine(CONFIG, "MAIN")
    settlement = ShardSettlement(ledger, "MAIN")
    settlement.settle(apply_batches(machine, [cmd(FundedDeposit("alice", 40 * USDC, ref))], 1))
    assert settlement.reconcile(machine) == [] and _spot(ledger, "alice") == 60 * USDC


def test_reserve_deposit_insufficient_spot_refused_with_stable_code_nothing_changed(
    ledger_db: tuple[Ledger, object],
) -> None:
    ledger, engine = ledger_db
    with pytest.raises(DepositRefused) as nobody:
        reserve_deposit(ledger, "alice", 1, "MAIN")
    assert nobody.value.code == "insufficient_funds"
    fund_spot(ledger, "alice", 100, "spot.alice")
    with pytest.raises(DepositRefused) as short:
        reserve_deposit(ledger, "alice", 101, "MAIN")
    assert short.value.code == "insufficient_funds"
    for bad, code in ((0, "invalid_amount"), (-5, "invalid_amount"), (True, "invalid_amount"),
                      (1.5, "invalid_amount")):
        with pytest.raises(DepositRefused) as refused:
            reserve_deposit(ledger, "alice", bad, "MAIN")  # type: ignore[arg-type]
        assert refused.value.code == code
    with pytest.raises(DepositRefused) as foreign:
        reserve_deposit(ledger, "alice@EU", 10, "MAIN")
    assert foreign.value.code == "invalid_account"
    assert _spot(ledger, "alice") == 100 and _count(engine, "cdep.") == 0


def test_reserve_deposit_concurrent_deposits_cannot_spend_the_same_spot_balance(
    ledger_db: tuple[Ledger, object],
) -> None:
    ledger, _ = ledger_db
    fund_spot(ledger, "alice", 100 * USDC, "spot.alice")
    refs: list[str] = []
    refused: list[str] = []
    barrier = threading.Barrier(6)

    def deposit(shard: str) -> None:
        barrier.wait()
        try:
            refs.append(reserve_deposit(ledger, "alice", 40 * USDC, shard))
        except DepositRefused as exc:
            refused.append(exc.code)

    threads = [threading.Thread(target=deposit, args=(s,)) for s in ("MAIN", "EU") * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(refs) == 2 and refused == ["insufficient_funds"] * 4
    assert _spot(ledger, "alice") == 20 * USDC


def test_deposit_reconciler_append_lost_voids_and_late_append_refused_spot_back(
    ledger_db: tuple[Ledger, object], clock: FakeClock,
) -> None:
    ledger, engine = ledger_db
    fund_spot(ledger, "alice", 100 * USDC, "spot.alice")
    sessions = make_session_factory(engine)  # type: ignore[arg-type]
    reconciler = DepositReconciler(sessions, "EU", void_after_ms=60_000, clock=clock)
    machine, settlement = ShardMachine(CONFIG, "EU"), ShardSettlement(ledger, "EU")
    # Two reservations: one whose FundedDeposit arrives, one whose append is lost.
    ok = reserve_deposit(ledger, "alice", 30 * USDC, "EU")
    lost = reserve_deposit(ledger, "alice", 50 * USDC, "EU")
    assert _spot(ledger, "alice") == 20 * USDC
    assert reconciler.due() == []  # not old enough
    settlement.settle(apply_batches(machine, [cmd(FundedDeposit("alice", 30 * USDC, ok))], 1))
    clock.advance(60_000)
    assert reconciler.due() == [lost]  # posted ones are no longer pending
    msg_id, body = void_deposit_command(lost, clock())
    assert msg_id.endswith(lost)
    reconciler.sent.add(lost)
    assert reconciler.due() == []  # handed out once
    settlement.settle(apply_batches(machine, [body], 1))
    assert _spot(ledger, "alice") == 70 * USDC  # the lost deposit's 50 is spendable again
    # The late append: refused in stream order, nothing posted, spot unchanged.
    late = apply_batches(machine, [cmd(FundedDeposit("alice", 50 * USDC, lost))], 1)
    assert late[0].results[0].code == DEPOSIT_VOIDED and not late[0].results[0].postings
    settlement.settle(late)
    assert _spot(ledger, "alice") == 70 * USDC
    assert machine.venue.clearing.accounts["alice"].cash == 30 * USDC
    assert settlement.reconcile(machine) == []
    assert reconciler.due() == [] and reconciler.pending == {}
    # A reconciler started later (a restart) rebuilds the same view from the journal.
    fresh = DepositReconciler(sessions, "EU", void_after_ms=60_000, clock=clock)
    assert fresh.due() == []


def test_deposit_reconciler_void_racing_an_applied_deposit_changes_nothing(
    ledger_db: tuple[Ledger, object], clock: FakeClock,
) -> None:
    ledger, engine = ledger_db
    fund_spot(ledger, "alice", 100 * USDC, "spot.alice")
    reconciler = DepositReconciler(make_session_factory(engine), "MAIN",  # type: ignore[arg-type]
                                   void_after_ms=1_000, clock=clock)
    machine, settlement = ShardMachine(CONFIG, "MAIN"), ShardSettlement(ledger, "MAIN")
    ref = reserve_deposit(ledger, "alice", 30 * USDC, "MAIN")
    # Applied by the machine but not yet settled when the reconciler looks (settlement lag).
    applied = apply_batches(machine, [cmd(FundedDeposit("alice", 30 * USDC, ref))], 1)
    clock.advance(5_000)
    assert reconciler.due() == [ref]
    _, body = void_deposit_command(ref, clock())
    voided = apply_batches(machine, [body], 1)
    assert voided[0].results[0].postings == []  # stream order: already applied, a no-op
    settlement.settle(applied + voided)
    assert _spot(ledger, "alice") == 70 * USDC
    assert machine.venue.clearing.accounts["alice"].cash == 30 * USDC
    assert settlement.reconcile(machine) == [] and reconciler.due() == []
