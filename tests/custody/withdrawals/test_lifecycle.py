"""custody.withdrawals.lifecycle: every state x every event, against the database, and races.

Each case writes a row in the state, applies the event through `transition`
and checks the outcome against the table: the row moved and one security-log
event was written, or the event was refused and nothing changed. The database
itself refuses a state the lifecycle does not know (migration 0014).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from custody.access.models import User
from custody.db import make_engine, make_session_factory
from custody.security_log import SecurityEvent
from custody.wallets.models import RefillProposal, Wallet
from custody.withdrawals import lifecycle
from custody.withdrawals.codes import WithdrawalCode, WithdrawalError
from custody.withdrawals.lifecycle import (
    REFILL_TRANSITIONS,
    WITHDRAWAL_INITIAL,
    WITHDRAWAL_TRANSITIONS,
    Event,
    Kind,
    RefillState,
    WithdrawalState,
)
from custody.withdrawals.models import WithdrawalRequest

NOW_MS = 1_767_225_600_000
STATES = {Kind.WITHDRAWAL: list(WithdrawalState), Kind.REFILL: list(RefillState)}
TABLES = {Kind.WITHDRAWAL: WITHDRAWAL_TRANSITIONS, Kind.REFILL: REFILL_TRANSITIONS}
CASES = [(kind, state, event) for kind in Kind for state in STATES[kind] for event in Event]


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    with factory.begin() as session:
        session.add(User(username="alice", roles="trader", kyc_tier=1, created_ms=NOW_MS,
                         disabled_ms=None))
        session.add(Wallet(id=1, name="cold-eth", chain="ethereum", temperature="cold", kek_name=None,
                           sealed_seed=None, account_path=None, account_xpub=None, next_index=0,
                           created_ms=NOW_MS))
    yield factory
    engine.dispose()


def _insert(session: Session, kind: Kind, row_id: str, state: str) -> None:
    if kind is Kind.WITHDRAWAL:
        session.add(WithdrawalRequest(
            id=row_id, username="alice", asset="ETH", amount=10, amount_usd_cents=0, destination="0xabc",
            source_wallet="hot", state=state, policy_id="p", policy_version=1, policy_digest="0" * 64,
            rule_id=None, decision="{}", required_count=0, required_group=None, release_at_ms=None,
            delays_served="", hold_transfer_id=f"{row_id}:hold", created_ms=NOW_MS, updated_ms=NOW_MS,
            closed_by=None, close_reason=None,
        ))
    else:
        session.add(RefillProposal(
            id=row_id, chain="ethereum", asset="ETH", amount_minor=10, source_wallet_id=1,
            destination="0xabc", status=state, required_approvals=2, proposed_by="bob",
            created_ms=NOW_MS, updated_ms=NOW_MS,
        ))


def _state(session: Session, kind: Kind, row_id: str) -> str:
    if kind is Kind.WITHDRAWAL:
        return session.scalars(select(WithdrawalRequest.state).where(WithdrawalRequest.id == row_id)).one()
    return session.scalars(select(RefillProposal.status).where(RefillProposal.id == row_id)).one()


def _log_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(SecurityEvent)) or 0


def test_lifecycle_every_state_and_event_moves_as_the_table_says_or_changes_nothing(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        for n, (kind, state, _event) in enumerate(CASES):
            _insert(session, kind, f"case-{n}", state)
    moved = refused = 0
    for n, (kind, state, event) in enumerate(CASES):
        row_id = f"case-{n}"
        expected = TABLES[kind].get((state, event))  # type: ignore[call-overload]
        with sessions() as session:
            logged = _log_count(session)
        if expected is None:
            with pytest.raises(WithdrawalError) as refusal, sessions.begin() as session:
                lifecycle.transition(session, kind, row_id, state, event, actor="system", now_ms=NOW_MS + 1)
            assert refusal.value.code == WithdrawalCode.WITHDRAWAL_STATE_CONFLICT
            refused += 1
            with sessions() as session:
                assert (_state(session, kind, row_id), _log_count(session)) == (state, logged)
        else:
            with sessions.begin() as session:
                done = lifecycle.transition(
                    session, kind, row_id, state, event, actor="system", now_ms=NOW_MS + 1
                )
            assert done.to_state == expected
            moved += 1
            with sessions() as session:
                assert (_state(session, kind, row_id), _log_count(session)) == (expected, logged + 1)
                event_row = session.scalars(select(SecurityEvent).order_by(SecurityEvent.seq.desc())).first()
                assert event_row is not None
                assert (event_row.action, event_row.subject) == (f"{kind}.{expected}", row_id)
    assert moved == len(WITHDRAWAL_TRANSITIONS) + len(REFILL_TRANSITIONS)
    assert moved + refused == len(CASES)


def test_lifecycle_event_from_a_state_the_row_has_left_is_refused_and_changes_nothing(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        _insert(session, Kind.WITHDRAWAL, "w1", WithdrawalState.CANCELLED)
    with pytest.raises(WithdrawalError) as refusal, sessions.begin() as session:
        # The caller believes it is still pending approval: the UPDATE's WHERE finds no row.
        lifecycle.transition(session, Kind.WITHDRAWAL, "w1", WithdrawalState.PENDING_APPROVAL,
                             Event.QUORUM_MET, actor="system", now_ms=NOW_MS)
    assert refusal.value.code == WithdrawalCode.WITHDRAWAL_STATE_CONFLICT
    with sessions() as session:
        assert _state(session, Kind.WITHDRAWAL, "w1") == WithdrawalState.CANCELLED
        assert _log_count(session) == 0


def test_lifecycle_table_has_only_known_states_and_final_states_have_no_way_out() -> None:
    for (state, _event), to in WITHDRAWAL_TRANSITIONS.items():
        assert isinstance(state, WithdrawalState) and isinstance(to, WithdrawalState)
    assert set(WITHDRAWAL_INITIAL.values()) <= set(WithdrawalState)
    assert {
        WithdrawalState.REJECTED, WithdrawalState.CANCELLED, WithdrawalState.BLOCKED,
        WithdrawalState.COMPLETED, WithdrawalState.FAILED,
    } == lifecycle.WITHDRAWAL_FINAL
    assert {RefillState.COMPLETED, RefillState.FAILED} == lifecycle.REFILL_FINAL
    for event in Event:
        if event in WITHDRAWAL_INITIAL:
            assert lifecycle.initial_withdrawal_state(event) == WITHDRAWAL_INITIAL[event]
        else:
            with pytest.raises(ValueError):
                lifecycle.initial_withdrawal_state(event)
    assert lifecycle.next_state(Kind.WITHDRAWAL, "no-such-state", Event.ALLOW) is None
    assert lifecycle.next_state(Kind.REFILL, "no-such-state", Event.CONFIRM) is None


@pytest.mark.parametrize(
    ("kind", "state", "event"),
    [
        (Kind.WITHDRAWAL, WithdrawalState.PENDING_APPROVAL, Event.QUORUM_MET),
        (Kind.WITHDRAWAL, WithdrawalState.PENDING_APPROVAL, Event.CANCEL),
        (Kind.WITHDRAWAL, WithdrawalState.APPROVED, Event.DISPATCH),
        (Kind.WITHDRAWAL, WithdrawalState.BROADCASTING, Event.CONFIRM),
        (Kind.REFILL, RefillState.PROPOSED, Event.QUORUM_MET),
        (Kind.REFILL, RefillState.BROADCASTING, Event.FAIL),
    ],
)
def test_lifecycle_two_concurrent_transitions_from_one_state_exactly_one_wins(
    sessions: sessionmaker[Session], kind: Kind, state: str, event: Event,
) -> None:
    with sessions.begin() as session:
        _insert(session, kind, "raced", state)
    # The loser's event differs where the table allows (cancel vs quorum): either way one wins.
    other = {Event.QUORUM_MET: Event.REJECT if kind is Kind.WITHDRAWAL else event}.get(event, event)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt(which: Event) -> None:
        barrier.wait()
        try:
            with sessions.begin() as session:
                lifecycle.transition(session, kind, "raced", state, which, actor="system", now_ms=NOW_MS + 1)
            result = "won"
        except WithdrawalError as exc:
            assert exc.code == WithdrawalCode.WITHDRAWAL_STATE_CONFLICT
            result = "refused"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=attempt, args=(e,)) for e in (event, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["refused", "won"]
    with sessions() as session:
        assert _state(session, kind, "raced") != state
        assert _log_count(session) == 1


@pytest.mark.parametrize(
    ("table", "column"), [("withdrawal_requests", "state"), ("wallet_refill_proposals", "status")]
)
def test_lifecycle_database_refuses_a_state_written_around_the_lifecycle(
    sessions: sessionmaker[Session], table: str, column: str,
) -> None:
    kind = Kind.WITHDRAWAL if table == "withdrawal_requests" else Kind.REFILL
    with sessions.begin() as session:
        _insert(session, kind, "w1", STATES[kind][0])
    with pytest.raises(IntegrityError), sessions.begin() as session:
        # An insider (or a bug) with SQL access writes a state the lifecycle does not have.
        session.execute(text(f"UPDATE {table} SET {column} = 'paid' WHERE id = 'w1'"))
    with pytest.raises(IntegrityError), sessions.begin() as session:
        _insert(session, kind, "w2", "sent")
    with sessions() as session:
        assert _state(session, kind, "w1") == STATES[kind][0]
