"""No single admin moves money: manual ledger writes are proposals another admin approves with MFA."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from custody import security_log
from custody.ledger.entry import AccountKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger
from policies.roles import Role

from ..access.helpers import SignedClient, assert_error, make_user

MINT = 2**64


@pytest.fixture
def admins(app: Flask, client: FlaskClient, clock: Any) -> list[SignedClient]:
    return [make_user(app, client, clock, name, {Role.ADMIN}) for name in ("ops1", "ops2")]


@pytest.fixture
def accounts(app: Flask) -> dict[str, int]:
    ledger: Ledger = app.extensions["strongroom.ledger"]
    hot = ledger.ensure_account("platform", "USDC", AccountKind.HOT_WALLET)
    alice = ledger.ensure_account("alice", "USDC", AccountKind.USER_AVAILABLE)
    bob = ledger.ensure_account("bob", "USDC", AccountKind.USER_AVAILABLE)
    ledger.transfer(TransferRequest(id="deposit", debit_account=hot.id, credit_account=alice.id, amount=500))
    return {"hot": hot.id, "alice": alice.id, "bob": bob.id}


def _seq(app: Flask) -> int:
    ledger: Ledger = app.extensions["strongroom.ledger"]
    return ledger.head()[0]


def _mint(admin: SignedClient, accounts: dict[str, int], key: str = "mint-1") -> Any:
    return admin.post("/api/v1/ledger/transfers", json={
        "id": "mint", "debit_account": accounts["hot"], "credit_account": accounts["alice"],
        "amount": str(MINT)},
        mfa=True, idempotency_key=key)


def test_single_admin_transfer_is_only_a_proposal_and_moves_nothing(
    app: Flask, admins: list[SignedClient], accounts: dict[str, int]
) -> None:
    before = _seq(app)
    proposed = _mint(admins[0], accounts)
    assert proposed.status_code == 202, proposed.json
    assert proposed.json["proposal"]["state"] == "proposed"
    assert _seq(app) == before
    ledger: Ledger = app.extensions["strongroom.ledger"]
    assert ledger.balance(accounts["alice"]).credits_posted == 500


def test_proposer_cannot_approve_their_own_proposal(
    app: Flask, admins: list[SignedClient], accounts: dict[str, int]
) -> None:
    proposal = _mint(admins[0], accounts).json["proposal"]["id"]
    before = _seq(app)
    refused = admins[0].post(f"/api/v1/ledger/proposals/{proposal}/approve", mfa=True, idempotency_key="a1")
    assert_error(refused, 422, "approval_self")  # The one refusal of self-approval, whatever is approved.
    assert _seq(app) == before


def test_approval_needs_mfa_an_idempotency_key_and_an_admin(
    app: Flask, client: FlaskClient, clock: Any, admins: list[SignedClient], accounts: dict[str, int]
) -> None:
    proposal = _mint(admins[0], accounts).json["proposal"]["id"]
    url = f"/api/v1/ledger/proposals/{proposal}/approve"
    assert_error(admins[1].post(url, idempotency_key="a1"), 401, "mfa_required")
    assert_error(admins[1].post(url, mfa=True), 400, "idempotency_key_required")
    treasurer = make_user(app, client, clock, "treasurer", {Role.TREASURY})
    assert_error(treasurer.post(url, mfa=True, idempotency_key="a2"), 403, "permission_denied")
    assert admins[1].get(f"/api/v1/ledger/proposals/{proposal}").json["proposal"]["state"] == "proposed"


def test_second_admin_approval_applies_it_with_the_proposer_as_actor_and_logs_each_step(
    app: Flask, admins: list[SignedClient], accounts: dict[str, int]
) -> None:
    proposal = admins[0].post("/api/v1/ledger/transfers", json={
        "id": "correction-1", "debit_account": accounts["alice"], "credit_account": accounts["bob"],
        "amount": "200"}, mfa=True, idempotency_key="c1").json["proposal"]["id"]
    approved = admins[1].post(f"/api/v1/ledger/proposals/{proposal}/approve", mfa=True, idempotency_key="a1")
    assert approved.status_code == 200, approved.json
    assert approved.json["proposal"]["state"] == "executed"
    assert approved.json["proposal"]["decided_by"] == "ops2"
    ledger: Ledger = app.extensions["strongroom.ledger"]
    assert ledger.balance(accounts["bob"]).credits_posted == 200
    assert ledger.get_transfer("correction-1").actor == "user:ops1"
    with app.extensions["strongroom.sessions"]() as session:
        events = [(e.actor, e.action, e.outcome) for e in security_log.page(session, limit=200)
                  if e.subject == proposal]
    assert events == [("ops1", "ledger.propose", "proposed"), ("ops2", "ledger.approve", "executed")]
    again = admins[1].post(f"/api/v1/ledger/proposals/{proposal}/approve", mfa=True, idempotency_key="a2")
    assert_error(again, 409, "proposal_closed")


def test_proposal_the_ledger_would_refuse_is_not_stored(
    app: Flask, admins: list[SignedClient], accounts: dict[str, int]
) -> None:
    before = _seq(app)
    refused = admins[0].post("/api/v1/ledger/transfers/batch", json={"transfers": [
        {"id": "x1", "debit_account": accounts["alice"], "credit_account": accounts["bob"], "amount": 100},
        {"id": "x2", "debit_account": accounts["bob"], "credit_account": accounts["alice"], "amount": 10**9},
    ]}, mfa=True, idempotency_key="b1")
    assert refused.status_code == 422
    assert [r["status"] for r in refused.json["results"]] == ["not_applied", "failed"]
    unknown = admins[0].post("/api/v1/ledger/transfers", json={
        "id": "p1", "kind": "post", "pending_id": "no-such-hold", "amount": "1"},
        mfa=True, idempotency_key="b2")
    assert_error(unknown, 404, "pending_transfer_not_found")
    assert admins[0].get("/api/v1/ledger/proposals").json["proposals"] == []
    assert _seq(app) == before


def test_proposal_refused_by_the_ledger_at_approval_applies_nothing_and_is_closed_as_failed(
    app: Flask, admins: list[SignedClient], accounts: dict[str, int]
) -> None:
    def propose(transfer_id: str, key: str) -> str:
        return str(admins[0].post("/api/v1/ledger/transfers", json={
            "id": transfer_id, "debit_account": accounts["alice"], "credit_account": accounts["bob"],
            "amount": "400"}, mfa=True, idempotency_key=key).json["proposal"]["id"])

    first, second = propose("spend-1", "s1"), propose("spend-2", "s2")  # each fits alone, not both
    assert admins[1].post(f"/api/v1/ledger/proposals/{first}/approve", mfa=True,
                          idempotency_key="a1").status_code == 200
    before = _seq(app)
    failed = admins[1].post(f"/api/v1/ledger/proposals/{second}/approve", mfa=True, idempotency_key="a2")
    assert failed.status_code == 422
    assert failed.json["proposal"]["state"] == "failed"
    assert [r["error"] for r in failed.json["results"]] == ["insufficient_funds"]
    assert _seq(app) == before


def test_rejected_proposal_can_never_be_approved(
    app: Flask, admins: list[SignedClient], accounts: dict[str, int]
) -> None:
    proposal = _mint(admins[0], accounts).json["proposal"]["id"]
    rejected = admins[1].post(f"/api/v1/ledger/proposals/{proposal}/reject", json={"reason": "no mints"},
                              mfa=True)
    assert rejected.json["proposal"]["state"] == "rejected"
    before = _seq(app)
    late = admins[1].post(f"/api/v1/ledger/proposals/{proposal}/approve", mfa=True, idempotency_key="a")
    assert_error(late, 409, "proposal_closed")
    assert _seq(app) == before
    listed = admins[0].get("/api/v1/ledger/proposals", query={"state": "rejected"}).json["proposals"]
    assert [p["id"] for p in listed] == [proposal]


def test_concurrent_approvals_apply_a_proposal_exactly_once(
    app: Flask, admins: list[SignedClient], accounts: dict[str, int]
) -> None:
    import threading

    from custody.access.errors import AccessError

    proposal = admins[0].post("/api/v1/ledger/transfers", json={
        "id": "once", "debit_account": accounts["alice"], "credit_account": accounts["bob"], "amount": "300"},
        mfa=True, idempotency_key="once").json["proposal"]["id"]
    ops = app.extensions["strongroom.access"].ledger_ops
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def approve() -> None:
        barrier.wait()
        try:
            outcomes.append(ops.approve("ops2", proposal)[0].state)
        except AccessError as exc:
            outcomes.append(exc.code.name)

    threads = [threading.Thread(target=approve) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["PROPOSAL_CLOSED"] * 7 + ["executed"]
    ledger: Ledger = app.extensions["strongroom.ledger"]
    assert ledger.balance(accounts["bob"]).credits_posted == 300
