"""One approvals table, one add_approval(): the same refusals for every approvable thing."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from custody import security_log
from custody.access.approvals import (
    ApprovalKind,
    Ballot,
    Confirmed,
    Signed,
    add_approval,
    approval_rows,
)
from custody.access.errors import AccessCode, AccessError
from custody.access.models import ApprovalRow
from custody.db import make_engine, make_session_factory
from custody.refusal import CustodyRefusal
from custody.withdrawals.codes import WithdrawalCode, WithdrawalError
from policies.approval import Approval, ApprovalSubject, SubjectKind, sign_approval
from policies.approver_registry import Approver, ApproverKey, ApproverRegistry
from policies.quorum import QuorumRequirement, QuorumResult, verify_quorum
from policies.results import PolicyError, ResultCode
from policies.roles import Role
from policies.signature_scheme import SignatureScheme, ed25519_public_bytes

from ...conftest import DATABASES, fresh_database_url
from .conftest import FUNDED_BTC_MINOR
from .helpers import SignedClient, access, withdrawal_subject
from .test_withdrawals_api import LARGE_BTC, whitelist, withdraw

NOW_MS = 1_767_225_600_000
HOUR_MS = 3_600_000
NAMES = ("tina", "tom", "tim", "olga")
KEYS = {name: Ed25519PrivateKey.from_private_bytes(bytes([n + 1]) * 32) for n, name in enumerate(NAMES)}
GROUPS = {"tina": "treasury", "tom": "treasury", "tim": "treasury", "olga": "admin"}
REGISTRY = ApproverRegistry.build(
    [Approver(name, frozenset({GROUPS[name]})) for name in NAMES],
    [ApproverKey(f"{n}-k1", n, SignatureScheme.ED25519, ed25519_public_bytes(KEYS[n])) for n in NAMES],
)
SUBJECT = ApprovalSubject(
    kind=SubjectKind.WITHDRAWAL, subject_id="w-1", policy_id="default", policy_version=1, asset="BTC",
    amount_minor=5_000_000, destination="bc1qapprovals", rule_id="large",
)
BALLOT = Ballot(ApprovalKind.WITHDRAWAL, "w-1", "alice")


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Approvals race on row locks: run on SQLite and PostgreSQL."""
    yield from fresh_database_url(request, request.param, tmp_path)


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def _signed(name: str, *, at_ms: int = NOW_MS, approver_id: str | None = None, required: int = 2) -> Signed:
    approval = sign_approval(KEYS[name], approver_id=approver_id or name, key_id=f"{name}-k1",
                             subject=SUBJECT, signed_at_ms=at_ms, expires_at_ms=at_ms + HOUR_MS)
    return Signed(approval, _tally(required, at_ms))


def _tally(required: int, now_ms: int) -> Callable[[Sequence[Approval]], QuorumResult]:
    requirement = QuorumRequirement(required, "treasury")
    return lambda approvals: verify_quorum(SUBJECT, approvals, REGISTRY, requirement, "alice", now_ms)


def _add(sessions: sessionmaker[Session], approver: str, proof: Signed | Confirmed,
         ballot: Ballot = BALLOT, now_ms: int = NOW_MS) -> Any:
    with sessions.begin() as session:
        return add_approval(session, ballot, approver, proof, now_ms=now_ms)


def _rows(sessions: sessionmaker[Session], ballot: Ballot = BALLOT) -> list[tuple[str, str | None]]:
    with sessions() as session:
        return [(r.approver, r.key_id) for r in approval_rows(session, ballot.kind, ballot.subject_id)]


def _refusal_code(call: Callable[[], object]) -> object:
    with pytest.raises((CustodyRefusal, PolicyError)) as refused:
        call()
    return refused.value.code


ADMIN_ONLY = Confirmed(frozenset({Role.ADMIN.value}), Role.ADMIN.value)


def test_add_approval_signed_quorum_met_by_second_distinct_approver(sessions: sessionmaker[Session]) -> None:
    first = _add(sessions, "tina", _signed("tina"))
    second = _add(sessions, "tom", _signed("tom"))
    assert (first.met, second.met) == (False, True)
    assert second.approvers == {"tina", "tom"}
    assert sorted(_rows(sessions)) == [("tina", "tina-k1"), ("tom", "tom-k1")]
    with sessions() as session:
        logged = [(e.actor, e.action) for e in security_log.page(session, limit=10) if e.subject == "w-1"]
    assert sorted(logged) == [("tina", "withdrawal.approve"), ("tom", "withdrawal.approve")]


@pytest.mark.parametrize("proof", ["signed", "confirmed"])
def test_add_approval_by_requester_refused_nothing_stored(
    sessions: sessionmaker[Session], proof: str
) -> None:
    ballot = Ballot(ApprovalKind.WITHDRAWAL, "w-1", "tina")
    made = _signed("tina") if proof == "signed" else ADMIN_ONLY
    assert _refusal_code(lambda: _add(sessions, "tina", made, ballot)) is ResultCode.APPROVAL_SELF
    assert _rows(sessions, ballot) == []


def test_add_approval_signed_by_someone_else_refused(sessions: sessionmaker[Session]) -> None:
    forged = _signed("tina", approver_id="tom")
    assert _refusal_code(lambda: _add(sessions, "tina", forged)) is AccessCode.APPROVER_MISMATCH
    assert _rows(sessions) == []


@pytest.mark.parametrize("proof", ["signed", "confirmed"])
def test_add_approval_same_approver_twice_refused(sessions: sessionmaker[Session], proof: str) -> None:
    ballot = Ballot(ApprovalKind.LEDGER_PROPOSAL, "lp-1", "olga") if proof == "confirmed" else BALLOT
    made: Callable[[int], Signed | Confirmed] = (
        (lambda at: _signed("tina", at_ms=at)) if proof == "signed" else (lambda at: ADMIN_ONLY))
    _add(sessions, "tina", made(NOW_MS), ballot)
    # A second, different approval by the same person (signed a second later) does not count twice.
    again = made(NOW_MS + 1_000)
    code = _refusal_code(lambda: _add(sessions, "tina", again, ballot, now_ms=NOW_MS + 1_000))
    assert code is ResultCode.APPROVER_DUPLICATE
    assert len(_rows(sessions, ballot)) == 1


def test_add_approval_signed_without_the_group_refused(sessions: sessionmaker[Session]) -> None:
    assert _refusal_code(lambda: _add(sessions, "olga", _signed("olga"))) is ResultCode.APPROVER_NOT_IN_GROUP
    assert _rows(sessions) == []


def test_add_approval_confirmed_without_the_role_refused(sessions: sessionmaker[Session]) -> None:
    ballot = Ballot(ApprovalKind.LEDGER_PROPOSAL, "lp-1", "olga")
    treasurer = Confirmed(frozenset({Role.TREASURY.value}), Role.ADMIN.value)
    code = _refusal_code(lambda: _add(sessions, "tina", treasurer, ballot))
    assert code is ResultCode.APPROVER_NOT_IN_GROUP
    assert _rows(sessions, ballot) == []


def test_add_approval_expired_approval_replaced_by_the_same_approver_counts_once(
    sessions: sessionmaker[Session],
) -> None:
    _add(sessions, "tina", _signed("tina"))
    later = NOW_MS + 2 * HOUR_MS  # tina's first approval has expired.
    renewed = _add(sessions, "tina", _signed("tina", at_ms=later), now_ms=later)
    assert (renewed.met, renewed.approvers) == (False, {"tina"})
    met = _add(sessions, "tom", _signed("tom", at_ms=later), now_ms=later)
    assert (met.met, met.approvers) == (True, {"tina", "tom"})


def test_add_approval_kinds_with_the_same_subject_id_kept_apart(sessions: sessionmaker[Session]) -> None:
    _add(sessions, "tina", _signed("tina"))
    refill = Ballot(ApprovalKind.REFILL, "w-1", "alice")
    _add(sessions, "olga", ADMIN_ONLY, refill)
    assert _rows(sessions) == [("tina", "tina-k1")]
    assert _rows(sessions, refill) == [("olga", None)]


def test_approvals_kind_outside_the_enum_refused_by_the_database(sessions: sessionmaker[Session]) -> None:
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), sessions.begin() as session:
        session.add(ApprovalRow(approval_id="x" * 64, kind="bribe", subject_id="w-1", approver="eve",
                                key_id=None, approval=None, created_ms=NOW_MS))


# -- through the services: concurrent approvals ---------------------------------------------------


def _race(calls: Sequence[Callable[[], object]]) -> list[object]:
    """Run ``calls`` at once; return each one's result or the refusal it raised."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait(timeout=60)
        try:
            results[index] = calls[index]()
        except (CustodyRefusal, PolicyError) as refusal:
            results[index] = refusal

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "an approval hung"
    return results


def test_withdrawal_concurrent_approvals_cross_the_quorum_once(
    alice: SignedClient, treasury: list[SignedClient], app: Flask
) -> None:
    whitelist(alice)
    body = withdraw(alice, LARGE_BTC).json["withdrawal"]
    subject = withdrawal_subject(body)
    service = access(app).withdrawals
    calls = []
    for t in treasury:  # Three approvers race for a quorum of two.
        approval = Approval.from_bytes(base64.b64decode(t.approve_subject(subject)))
        user = access(app).users.find_user(t.username)
        assert user is not None
        calls.append(lambda user=user, approval=approval: service.approve(user, body["id"], approval))
    results = _race(calls)
    refused = [r for r in results if isinstance(r, (CustodyRefusal, PolicyError))]
    assert len(refused) == 1, results
    assert isinstance(refused[0], WithdrawalError)
    assert refused[0].code is WithdrawalCode.WITHDRAWAL_NOT_AWAITING_APPROVAL
    with app.extensions["strongroom.sessions"]() as session:
        approved = [e for e in security_log.page(session, limit=500)
                    if e.subject == body["id"] and e.action == "withdrawal.approved"]
        stored = session.scalar(select(func.count()).select_from(ApprovalRow)
                                .where(ApprovalRow.subject_id == body["id"]))
    assert (len(approved), stored) == (1, 2)
    assert service.get(body["id"]).state == "approved"


def test_ledger_proposal_concurrent_approvals_apply_it_once(
    admins: list[SignedClient], app: Flask
) -> None:
    from custody.ledger.entry import AccountKind
    from custody.ledger.posting import TransferRequest

    ledger = app.extensions["strongroom.ledger"]
    source = ledger.ensure_account("platform", "BTC", AccountKind.HOT_WALLET).id
    target = ledger.ensure_account("carol", "BTC", AccountKind.USER_AVAILABLE).id
    ops = access(app).ledger_ops
    transfer = TransferRequest(id="race-1", debit_account=source, credit_account=target,
                               amount=FUNDED_BTC_MINOR)
    proposal = ops.propose("admin1", [transfer], "race test")
    results = _race([lambda name=name: ops.approve(name, proposal.id) for name in ("admin2", "admin3")])
    refused = [r for r in results if isinstance(r, (CustodyRefusal, PolicyError))]
    assert len(refused) == 1 and isinstance(refused[0], AccessError), results
    assert refused[0].code is AccessCode.PROPOSAL_CLOSED
    assert ops.get(proposal.id).state == "executed"
    assert ledger.balance(target).credits_posted == FUNDED_BTC_MINOR
    with app.extensions["strongroom.sessions"]() as session:
        assert len(approval_rows(session, ApprovalKind.LEDGER_PROPOSAL, proposal.id)) == 1


def test_ledger_proposal_approved_by_its_proposer_refused_with_approval_self(
    admins: list[SignedClient], app: Flask
) -> None:
    from custody.ledger.entry import AccountKind
    from custody.ledger.posting import TransferRequest

    ledger = app.extensions["strongroom.ledger"]
    source = ledger.ensure_account("platform", "BTC", AccountKind.HOT_WALLET).id
    target = ledger.ensure_account("carol", "BTC", AccountKind.USER_AVAILABLE).id
    ops = access(app).ledger_ops
    transfer = TransferRequest(id="self-1", debit_account=source, credit_account=target, amount=1)
    proposal = ops.propose("admin1", [transfer], "self test")
    with pytest.raises(PolicyError) as refused:
        ops.approve("admin1", proposal.id)
    assert refused.value.code is ResultCode.APPROVAL_SELF
    assert ops.get(proposal.id).state == "proposed"
    assert ledger.balance(target).credits_posted == 0
