"""Freeze and halt lifts are two confirmed approvals in the one approvals table (add_approval)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody import freezes, withdrawal_halts
from custody.access.approvals import ApprovalKind, approval_rows
from custody.access.errors import AccessCode, AccessError
from custody.db import make_engine, make_session_factory
from custody.security_log import SecurityEvent
from policies.results import PolicyError, ResultCode

ADMIN = frozenset({"admin"})
NOW_MS = 1_767_225_600_000
# An outgoing-reorg freeze id (custody/wallets/outgoing_reorg.py) longer than 128 characters.
LONG_ID = "reorg-out:wd:" + "w" * 118 + ":r0"


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    with factory.begin() as session:
        freezes.freeze(session, freeze_id=LONG_ID, owner="alice", reason="withdrawal reorged out",
                       raised_by="service:outgoing-reorg", now_ms=NOW_MS)
    yield factory
    engine.dispose()


def _halt(sessions: sessionmaker[Session]) -> str:
    with sessions.begin() as session:
        return withdrawal_halts.halt(session, scope="global", reason="drill", admin="ann", now_ms=NOW_MS).id


def _approvers(sessions: sessionmaker[Session], kind: ApprovalKind, subject: str) -> list[tuple[str, bool]]:
    with sessions() as session:
        return [(r.approver, r.approval is None) for r in approval_rows(session, kind, subject)]


def _actions(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        return list(session.scalars(select(SecurityEvent.action).order_by(SecurityEvent.seq)))


def test_freeze_lift_records_both_admins_as_confirmed_approvals(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        freezes.request_lift(session, LONG_ID, admin="ann", roles=ADMIN, reason="re-broadcast settled",
                             now_ms=NOW_MS + 1)
    with sessions.begin() as session:
        view = freezes.approve_lift(session, LONG_ID, admin="bob", roles=ADMIN, now_ms=NOW_MS + 1)
    assert (view.lift_requested_by, view.lifted_by, view.lifted_ms) == ("ann", "ann,bob", NOW_MS + 1)
    assert _approvers(sessions, ApprovalKind.FREEZE_LIFT, LONG_ID) == [("ann", True), ("bob", True)]
    assert _actions(sessions) == ["freeze.lift_request", "freeze.lift"]
    with sessions() as session:
        assert not freezes.is_frozen(session, "alice")


def test_freeze_lift_by_a_treasury_user_is_refused_nothing_stored(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(PolicyError) as refused, sessions.begin() as session:
        freezes.request_lift(session, LONG_ID, admin="tess", roles={"treasury"}, reason="x", now_ms=NOW_MS)
    assert refused.value.code is ResultCode.APPROVER_NOT_IN_GROUP
    with sessions.begin() as session:
        freezes.request_lift(session, LONG_ID, admin="ann", roles=ADMIN, reason="x", now_ms=NOW_MS)
    with pytest.raises(PolicyError) as refused, sessions.begin() as session:
        freezes.approve_lift(session, LONG_ID, admin="tess", roles={"treasury", "trader"}, now_ms=NOW_MS)
    assert refused.value.code is ResultCode.APPROVER_NOT_IN_GROUP
    assert _approvers(sessions, ApprovalKind.FREEZE_LIFT, LONG_ID) == [("ann", True)]
    with sessions() as session:
        assert freezes.is_frozen(session, "alice")


def test_freeze_lift_approved_by_its_requester_is_refused(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        freezes.request_lift(session, LONG_ID, admin="ann", roles=ADMIN, reason="x", now_ms=NOW_MS)
    with pytest.raises(AccessError) as refused, sessions.begin() as session:
        freezes.approve_lift(session, LONG_ID, admin="ann", roles=ADMIN, now_ms=NOW_MS + 5)
    assert refused.value.code is AccessCode.APPROVER_MISMATCH
    assert _approvers(sessions, ApprovalKind.FREEZE_LIFT, LONG_ID) == [("ann", True)]
    assert "freeze.lift" not in _actions(sessions)


def test_freeze_lift_of_an_unknown_freeze_is_refused(sessions: sessionmaker[Session]) -> None:
    for step in (lambda s: freezes.request_lift(s, "reorg-out:nothing:r0", admin="ann", roles=ADMIN,
                                                reason="x", now_ms=NOW_MS),
                 lambda s: freezes.approve_lift(s, "reorg-out:nothing:r0", admin="bob", roles=ADMIN,
                                                now_ms=NOW_MS)):
        with pytest.raises(AccessError) as refused, sessions.begin() as session:
            step(session)
        assert refused.value.code is AccessCode.PROPOSAL_NOT_FOUND
    assert _actions(sessions) == []


def test_halt_lift_records_proposer_and_approver_as_approvals(sessions: sessionmaker[Session]) -> None:
    halt_id = _halt(sessions)
    with sessions.begin() as session:
        proposed = withdrawal_halts.lift(session, halt_id, admin="ann", roles=ADMIN, now_ms=NOW_MS + 1)
    assert (proposed.lift_proposed_by, proposed.lifted_ms) == ("ann", None)
    with sessions.begin() as session:
        lifted = withdrawal_halts.lift(session, halt_id, admin="bob", roles=ADMIN, now_ms=NOW_MS + 1)
    assert (lifted.lift_proposed_by, lifted.lifted_by, lifted.lifted_ms) == ("ann", "bob", NOW_MS + 1)
    assert _approvers(sessions, ApprovalKind.HALT_LIFT, halt_id) == [("ann", True), ("bob", True)]
    assert _actions(sessions) == [
        "withdrawals.halt", "withdrawals.halt_lift_propose", "withdrawals.halt_lift"]
    with sessions() as session:
        assert withdrawal_halts.halted(session, "BTC") is None


def test_halt_lift_refusals_store_no_approval(sessions: sessionmaker[Session]) -> None:
    halt_id = _halt(sessions)
    with pytest.raises(PolicyError) as wrong_role, sessions.begin() as session:
        withdrawal_halts.lift(session, halt_id, admin="tess", roles={"treasury"}, now_ms=NOW_MS)
    assert wrong_role.value.code is ResultCode.APPROVER_NOT_IN_GROUP
    with pytest.raises(AccessError) as unknown, sessions.begin() as session:
        withdrawal_halts.lift(session, "wh_nothing", admin="ann", roles=ADMIN, now_ms=NOW_MS)
    assert unknown.value.code is AccessCode.PROPOSAL_NOT_FOUND
    with sessions.begin() as session:
        withdrawal_halts.lift(session, halt_id, admin="ann", roles=ADMIN, now_ms=NOW_MS)
    with pytest.raises(AccessError) as twice, sessions.begin() as session:
        withdrawal_halts.lift(session, halt_id, admin="ann", roles=ADMIN, now_ms=NOW_MS + 1)
    assert twice.value.code is AccessCode.APPROVER_MISMATCH
    assert _approvers(sessions, ApprovalKind.HALT_LIFT, halt_id) == [("ann", True)]
    with sessions() as session:
        assert withdrawal_halts.halted(session, "ETH") is not None
