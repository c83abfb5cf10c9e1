"""Withdrawals over the API: holds, policy decisions, signed approvals and every refusal."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask
from flask.testing import FlaskClient

from custody.ledger.service import Ledger
from policies.roles import Role

from .helpers import SignedClient, access, assert_error, make_user, withdrawal_subject

DAY_MS = 86_400_000
SMALL_BTC = 5_000_000  # 0.05 BTC = 5,000 USD at the default price: automatic.
LARGE_BTC = 20_000_000  # 0.2 BTC = 20,000 USD: two treasury approvals.
ADDRESS = "bc1qalicecold"


def whitelist(user: SignedClient, address: str = ADDRESS, *, age_ms: int = DAY_MS) -> int:
    response = user.post("/api/v1/whitelist", json={"asset": "BTC", "address": address}, mfa=True)
    assert response.status_code == 201, response.json
    user.clock.advance(age_ms)
    return int(response.json["entry"]["id"])


_KEYS = itertools.count(1)


def withdraw(user: SignedClient, amount: int, address: str = ADDRESS, **kwargs: Any) -> Any:
    """Request a withdrawal, each with an Idempotency-Key of its own unless one is given."""
    kwargs.setdefault("idempotency_key", f"wd-test-{next(_KEYS)}")
    return user.post(
        "/api/v1/withdrawals",
        json={"asset": "BTC", "amount": str(amount), "destination": address},
        mfa=True,
        **kwargs,
    )


def available(app: Flask, account_id: int) -> tuple[int, int]:
    ledger: Ledger = app.extensions["strongroom.ledger"]
    b = ledger.balance(account_id)
    return b.credit_balance_posted, b.debits_pending


def test_small_withdrawal_to_aged_whitelisted_address_is_approved_with_hold(
    alice: SignedClient, app: Flask
) -> None:
    whitelist(alice)
    response = withdraw(alice, SMALL_BTC)
    assert response.status_code == 201, response.json
    body = response.json["withdrawal"]
    assert (body["state"], body["policy"]["rule_id"], body["policy"]["version"]) == (
        "approved",
        "small-hot-allow",
        1,
    )
    assert any("large-hot-approvals: not_matched" in line for line in body["decision"]["explanation"])
    assert available(app, alice.extra["account_id"])[1] == SMALL_BTC


def test_unknown_destination_is_blocked_recorded_and_hold_released(alice: SignedClient, app: Flask) -> None:
    body = assert_error(withdraw(alice, SMALL_BTC, "bc1qnotlisted"), 403, "policy_blocked")
    assert body["withdrawal"]["state"] == "blocked"
    assert body["withdrawal"]["policy"]["rule_id"] == "unknown-destination-block"
    assert available(app, alice.extra["account_id"])[1] == 0
    listed = alice.get("/api/v1/withdrawals").json["withdrawals"]
    assert [w["state"] for w in listed] == ["blocked"]


def test_new_address_is_delayed_then_released_by_the_policy(alice: SignedClient, app: Flask) -> None:
    whitelist(alice, age_ms=0)
    body = withdraw(alice, SMALL_BTC).json["withdrawal"]
    assert (body["state"], body["policy"]["rule_id"]) == ("delayed", "new-destination-timelock")
    svc = access(app).withdrawals
    assert svc.release_due() == []
    alice.clock.advance(DAY_MS)
    released = svc.release_due()
    assert [(v.id, v.state, v.row.rule_id) for v in released] == [(body["id"], "approved", "small-hot-allow")]


def test_insufficient_funds_is_422_and_nothing_recorded(alice: SignedClient, app: Flask) -> None:
    whitelist(alice)
    assert_error(withdraw(alice, 10**12), 422, "insufficient_funds")
    assert alice.get("/api/v1/withdrawals").json["withdrawals"] == []


@pytest.mark.parametrize(
    ("patch", "error"),
    [
        ({"amount": 1.5}, "invalid_field"),
        ({"amount": "-1"}, "invalid_field"),
        ({"amount": "0"}, "invalid_field"),
        ({"asset": "USD"}, "asset_not_withdrawable"),
        ({"destination": "has space"}, "address_invalid"),
        ({"source_wallet": "lukewarm"}, "source_wallet_invalid"),
        ({"extra": 1}, "invalid_field"),
    ],
)
def test_bad_withdrawal_input_is_refused_and_changes_nothing(
    alice: SignedClient, app: Flask, patch: dict[str, Any], error: str
) -> None:
    whitelist(alice)
    body = {"asset": "BTC", "amount": str(SMALL_BTC), "destination": ADDRESS, **patch}
    refused = alice.post("/api/v1/withdrawals", json=body, mfa=True, idempotency_key="bad-input")
    assert_error(refused, 400, error)
    assert available(app, alice.extra["account_id"])[1] == 0


def test_large_withdrawal_waits_for_two_treasury_approvals(
    alice: SignedClient, treasury: list[SignedClient], app: Flask
) -> None:
    whitelist(alice)
    body = withdraw(alice, LARGE_BTC).json["withdrawal"]
    assert (body["state"], body["required"]) == ("pending_approval", {"count": 2, "group": "treasury"})
    pending = treasury[0].get("/api/v1/approvals/pending").json["withdrawals"]
    assert [w["id"] for w in pending] == [body["id"]]
    subject = withdrawal_subject(body)
    url = f"/api/v1/withdrawals/{body['id']}/approvals"
    first = treasury[0].post(url, json={"approval": treasury[0].approve_subject(subject)}, mfa=True)
    assert (first.status_code, first.json["withdrawal"]["state"]) == (200, "pending_approval")
    second = treasury[1].post(url, json={"approval": treasury[1].approve_subject(subject)}, mfa=True)
    assert second.json["withdrawal"]["state"] == "approved"
    assert [a["approver"] for a in second.json["withdrawal"]["approvals"]] == ["treasury1", "treasury2"]
    assert available(app, alice.extra["account_id"])[1] == LARGE_BTC


def _pending(alice: SignedClient) -> dict[str, Any]:
    whitelist(alice)
    body: dict[str, Any] = withdraw(alice, LARGE_BTC).json["withdrawal"]
    return body


def test_approval_refusals_each_have_a_stable_code(
    alice: SignedClient, treasury: list[SignedClient], app: Flask, client: FlaskClient, clock: Any
) -> None:
    body = _pending(alice)
    subject = withdrawal_subject(body)
    url = f"/api/v1/withdrawals/{body['id']}/approvals"
    t1, t2 = treasury[0], treasury[1]
    from dataclasses import replace

    cases = [
        (t1.approve_subject(replace(subject, amount_minor=LARGE_BTC + 1)), 422, "approval_digest_mismatch"),
        (t1.approve_subject(subject, key=Ed25519PrivateKey.generate()), 422, "approval_signature_invalid"),
        (
            t1.approve_subject(subject, signed_at_ms=clock.now_ms - 10_000, ttl_ms=5_000),
            422,
            "approval_expired",
        ),
        (t1.approve_subject(subject, approver_id="treasury2"), 403, "approver_mismatch"),
        ("not base64!", 400, "invalid_field"),
        ("AAAA", 422, "approval_malformed"),
    ]
    for approval, status, error in cases:
        assert_error(t1.post(url, json={"approval": approval}, mfa=True), status, error)
    compliance = make_user(app, client, clock, "carl", {Role.COMPLIANCE}, approver=True)
    assert_error(
        compliance.post(url, json={"approval": compliance.approve_subject(subject)}, mfa=True),
        422,
        "approver_not_in_group",
    )
    ok = t1.approve_subject(subject)
    assert t1.post(url, json={"approval": ok}, mfa=True).status_code == 200
    assert_error(
        t1.post(url, json={"approval": t1.approve_subject(subject)}, mfa=True), 422, "approver_duplicate"
    )
    access(app).approvers.revoke("treasury2", t2.approver_key_id, actor="test")
    assert_error(
        t2.post(url, json={"approval": t2.approve_subject(subject)}, mfa=True), 422, "approver_key_revoked"
    )
    view = access(app).withdrawals.get(body["id"])
    assert (view.state, len(view.approvals)) == ("pending_approval", 1)


def test_initiator_cannot_approve_own_withdrawal(app: Flask, client: FlaskClient, clock: Any) -> None:
    from .conftest import fund

    # Someone who trades and is also on treasury must still get two *other* approvers.
    t1 = make_user(app, client, clock, "dual", {Role.TRADER, Role.TREASURY}, approver=True)
    fund(app, "dual")
    whitelist(t1)
    body = withdraw(t1, SMALL_BTC).json["withdrawal"]
    assert (body["state"], body["policy"]["rule_id"]) == ("pending_approval", "treasury-internal-transfer")
    url = f"/api/v1/withdrawals/{body['id']}/approvals"
    assert_error(
        t1.post(url, json={"approval": t1.approve_subject(withdrawal_subject(body))}, mfa=True),
        422,
        "approval_self",
    )


def test_reject_releases_the_hold_and_closes(
    alice: SignedClient, treasury: list[SignedClient], app: Flask
) -> None:
    body = _pending(alice)
    response = treasury[0].post(
        f"/api/v1/withdrawals/{body['id']}/reject", json={"reason": "suspicious"}, mfa=True
    )
    assert response.json["withdrawal"]["state"] == "rejected"
    assert available(app, alice.extra["account_id"])[1] == 0
    assert_error(alice.post(f"/api/v1/withdrawals/{body['id']}/cancel"), 409, "withdrawal_not_cancellable")


def test_owner_cancels_pending_withdrawal(alice: SignedClient, app: Flask) -> None:
    body = _pending(alice)
    response = alice.post(f"/api/v1/withdrawals/{body['id']}/cancel")
    assert response.json["withdrawal"]["state"] == "cancelled"
    assert available(app, alice.extra["account_id"])[1] == 0


def test_tier_daily_limit_uses_velocity_from_the_database(
    app: Flask, client: FlaskClient, clock: Any
) -> None:
    from .conftest import fund

    carol = make_user(app, client, clock, "carol", {Role.TRADER}, kyc_tier=1)
    fund(app, "carol")
    whitelist(carol)
    assert withdraw(carol, 1_500_000).json["withdrawal"]["state"] == "approved"  # 1,500 USD
    body = assert_error(withdraw(carol, 600_000), 403, "policy_blocked")  # total 2,100 > 2,000
    assert body["withdrawal"]["policy"]["rule_id"] == "tier1-daily-limit"
    clock.advance(DAY_MS)
    assert withdraw(carol, 600_000).json["withdrawal"]["state"] == "approved"


def test_idempotency_key_retry_returns_the_original_result(alice: SignedClient, app: Flask) -> None:
    whitelist(alice)
    first = withdraw(alice, SMALL_BTC, idempotency_key="wd-1")
    again = withdraw(alice, SMALL_BTC, idempotency_key="wd-1")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json == first.json and again.headers["Idempotent-Replayed"] == "true"
    assert len(alice.get("/api/v1/withdrawals").json["withdrawals"]) == 1
    assert available(app, alice.extra["account_id"])[1] == SMALL_BTC
    assert_error(withdraw(alice, SMALL_BTC + 1, idempotency_key="wd-1"), 422, "idempotency_key_reused")
    assert_error(withdraw(alice, SMALL_BTC, idempotency_key="bad key"), 400, "idempotency_key_invalid")


def test_treasury_lists_all_withdrawals_trader_only_own(
    alice: SignedClient, bob: SignedClient, treasury: list[SignedClient]
) -> None:
    whitelist(alice)
    whitelist(bob, "bc1qbob")
    withdraw(alice, SMALL_BTC)
    withdraw(bob, SMALL_BTC, "bc1qbob")
    everyone = treasury[0].get("/api/v1/withdrawals").json["withdrawals"]
    assert sorted(w["username"] for w in everyone) == ["alice", "bob"]
    assert [w["username"] for w in bob.get("/api/v1/withdrawals").json["withdrawals"]] == ["bob"]
