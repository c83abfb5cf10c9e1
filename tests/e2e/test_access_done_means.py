"""Issue 6, done means: a trader with an API key signs requests, a withdrawal above the
limit waits for two treasury approvals signed with their keys, and a policy change
needs an admin quorum. Everything goes through the signed HTTP API."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from custody import security_log
from custody.ledger.entry import AccountKind
from custody.ledger.posting import TransferRequest
from policies.roles import Role

from ..custody.access.helpers import (
    SignedClient,
    access,
    assert_error,
    make_user,
    policy_subject,
    withdrawal_subject,
)

DAY_MS = 86_400_000


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    from ..conftest import fresh_database_url

    yield from fresh_database_url(request, "sqlite", tmp_path)


def _bootstrap_admin(app: Flask, client: FlaskClient, clock: Any) -> SignedClient:
    # What `strongroom users create --role admin` does, plus MFA enrolment.
    return make_user(app, client, clock, "root-admin", {Role.ADMIN}, approver=True)


def test_trader_withdrawal_with_treasury_quorum_and_admin_policy_change(
    app: Flask, client: FlaskClient, clock: Any
) -> None:
    admin = _bootstrap_admin(app, client, clock)
    created = admin.post(
        "/api/v1/users", json={"username": "alice", "roles": ["trader"], "kyc_tier": 2}, mfa=True
    )
    assert created.status_code == 201
    alice = SignedClient(app, client, clock, "alice", created.json["key"]["key_id"], created.json["secret"])
    enrol = alice.post("/api/v1/mfa/enrol").json
    alice.totp_secret = enrol["secret"]
    assert alice.post("/api/v1/mfa/confirm", json={"code": alice.next_code()}).status_code == 200
    ledger = app.extensions["strongroom.ledger"]
    hot = ledger.ensure_account("platform", "BTC", AccountKind.HOT_WALLET)
    account = ledger.ensure_account("alice", "BTC", AccountKind.USER_AVAILABLE)
    ledger.transfer(
        TransferRequest(id="deposit", debit_account=hot.id, credit_account=account.id, amount=10**8)
    )

    # The trader signs requests with her key; a withdrawal above 10,000 USD waits for treasury.
    assert (
        alice.post("/api/v1/whitelist", json={"asset": "BTC", "address": "bc1qalice"}, mfa=True).status_code
        == 201
    )
    clock.advance(DAY_MS)
    response = alice.post(
        "/api/v1/withdrawals",
        json={"asset": "BTC", "amount": "30000000", "destination": "bc1qalice"},
        mfa=True,
        idempotency_key="done-means-withdrawal",
    )
    withdrawal = response.json["withdrawal"]
    assert (withdrawal["state"], withdrawal["policy"]["rule_id"]) == (
        "pending_approval",
        "large-hot-approvals",
    )
    assert_error(alice.get("/api/v1/approvals/pending"), 403, "permission_denied")

    # Two treasury approvers sign with their own Ed25519 keys.
    t1, t2 = (make_user(app, client, clock, f"treasury{i}", {Role.TREASURY}, approver=True) for i in (1, 2))
    url = f"/api/v1/withdrawals/{withdrawal['id']}/approvals"
    subject = withdrawal_subject(withdrawal)
    assert t1.post(url, json={"approval": t1.approve_subject(subject)}, mfa=True).json["withdrawal"][
        "state"
    ] == ("pending_approval")
    final = t2.post(url, json={"approval": t2.approve_subject(subject)}, mfa=True).json["withdrawal"]
    assert final["state"] == "approved" and len(final["approvals"]) == 2
    assert alice.get(f"/api/v1/withdrawals/{withdrawal['id']}").json["withdrawal"]["state"] == "approved"

    # A policy change needs two admins other than the proposer.
    admins = [make_user(app, client, clock, f"admin{i}", {Role.ADMIN}, approver=True) for i in (2, 3)]
    document = copy.deepcopy(admin.get("/api/v1/policy").json["policy"]["document"])
    document["version"] = 2
    proposal = admin.post("/api/v1/policy/proposals", json={"document": document}, mfa=True).json["proposal"]
    purl = f"/api/v1/policy/proposals/{proposal['proposal_id']}/approvals"
    psubject = policy_subject(proposal)
    assert (
        admins[0]
        .post(purl, json={"approval": admins[0].approve_subject(psubject)}, mfa=True)
        .json["proposal"]["state"]
        == "open"
    )
    assert (
        admins[1]
        .post(purl, json={"approval": admins[1].approve_subject(psubject)}, mfa=True)
        .json["proposal"]["state"]
        == "applied"
    )
    assert alice.get("/api/v1/policy").status_code == 403
    assert t1.get("/api/v1/policy").json["policy"]["version"] == 2

    # Every step is in the hash-chained security log, which verifies.
    with access(app).sessions() as session:
        assert security_log.verify_chain(session) > 10
        actions = {e.action for e in security_log.page(session, limit=1000)}
    assert {
        "user.create",
        "api_key.create",
        "mfa.confirm",
        "whitelist.add",
        "withdrawal.create",
        "withdrawal.approve",
        "withdrawal.approved",
        "policy.propose",
        "policy.approve",
        "policy.activate",
    } <= actions
