"""KYC tiers: manual review moves the tier and with it the withdrawal limits; signed provider callbacks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from custody.compliance.kyc import callback_signature
from policies.default_policy import load_default_policy
from policies.kyc import jurisdiction_refusal, tier_limits, withdrawal_limits
from policies.roles import Role

from ..access.conftest import fund
from ..access.helpers import SignedClient, assert_error, make_user
from ..access.test_withdrawals_api import SMALL_BTC, whitelist, withdraw
from .conftest import services

SECRET = b"provider secret, test only"


@pytest.fixture
def carol(app: Flask, client: FlaskClient, clock: Any) -> SignedClient:
    """A tier-1 trader: 2,000 USD a day."""
    signed = make_user(app, client, clock, "carol", {Role.TRADER}, kyc_tier=1)
    fund(app, "carol")
    return signed


def _request(user: SignedClient, tier: int, country: str = "DE") -> dict[str, Any]:
    response = user.post("/api/v1/kyc/requests", json={"tier": tier, "country": country}, mfa=True)
    assert response.status_code == 201, response.json
    return dict(response.json["review"])


def test_kyc_tier_change_moves_limits_in_the_withdrawal_policy(
    app: Flask, carol: SignedClient, officer: SignedClient
) -> None:
    whitelist(carol)
    # 0.05 BTC is 5,000 USD: over tier 1's 2,000 USD a day.
    refused = assert_error(withdraw(carol, SMALL_BTC), 403, "policy_blocked")
    assert refused["withdrawal"]["policy"]["rule_id"] == "tier1-daily-limit"
    review = _request(carol, 2)
    assert (
        officer.get("/api/v1/compliance/kyc/reviews", query={"state": "pending"}).json["reviews"][0]["id"]
        == review["id"]
    )
    approved = officer.post(f"/api/v1/compliance/kyc/reviews/{review['id']}/approve", json={}, mfa=True)
    assert approved.json["review"]["state"] == "approved", approved.json
    mine = carol.get("/api/v1/kyc").json
    assert mine["kyc_tier"] == 2
    assert mine["limits"]["withdrawal_limits"] == [
        {"rule_id": "tier2-daily-limit", "window_s": 86400, "max_usd_cents": 5_000_000}
    ]
    allowed = withdraw(carol, SMALL_BTC)
    assert allowed.status_code == 201 and allowed.json["withdrawal"]["state"] == "approved"


def test_reject_and_request_more_need_a_reason_and_leave_the_tier(
    app: Flask, carol: SignedClient, officer: SignedClient
) -> None:
    first, second = _request(carol, 2), _request(carol, 3)
    base = "/api/v1/compliance/kyc/reviews"
    assert_error(
        officer.post(f"{base}/{first['id']}/reject", json={"reason": " "}, mfa=True), 400, "kyc_input_invalid"
    )
    rejected = officer.post(f"{base}/{first['id']}/reject", json={"reason": "Document expired."}, mfa=True)
    assert (rejected.json["review"]["state"], rejected.json["review"]["reason"]) == (
        "rejected",
        "Document expired.",
    )
    more = officer.post(f"{base}/{second['id']}/request-more", json={"reason": "Proof of address."}, mfa=True)
    assert more.json["review"]["state"] == "more_info"
    assert_error(
        officer.post(f"{base}/{first['id']}/approve", json={}, mfa=True), 409, "kyc_review_not_pending"
    )
    assert carol.get("/api/v1/kyc").json["kyc_tier"] == 1


def test_blocked_jurisdiction_is_rejected_at_once(carol: SignedClient) -> None:
    review = _request(carol, 2, "kp")
    assert (review["state"], review["decided_by"], review["country"]) == (
        "rejected",
        "policy:jurisdiction",
        "KP",
    )
    assert_error(
        carol.post("/api/v1/kyc/requests", json={"tier": 2, "country": "X1"}, mfa=True),
        400,
        "kyc_input_invalid",
    )
    assert_error(
        carol.post("/api/v1/kyc/requests", json={"tier": 0, "country": "DE"}, mfa=True),
        400,
        "kyc_input_invalid",
    )


def test_officer_cannot_review_own_request_and_trader_cannot_review(
    app: Flask, client: FlaskClient, clock: Any, carol: SignedClient, officer: SignedClient
) -> None:
    # An officer who also trades asks for a tier: someone else must decide it.
    dual = make_user(app, client, clock, "officer9", {Role.COMPLIANCE, Role.TRADER})
    own = _request(dual, 3)
    assert all(r["id"] != own["id"] for r in dual.get("/api/v1/compliance/kyc/reviews").json["reviews"])
    assert_error(
        dual.post(f"/api/v1/compliance/kyc/reviews/{own['id']}/approve", json={}, mfa=True),
        404,
        "kyc_review_not_found",
    )
    assert_error(
        carol.post(f"/api/v1/compliance/kyc/reviews/{own['id']}/approve", json={}, mfa=True),
        403,
        "permission_denied",
    )
    assert (
        officer.post(f"/api/v1/compliance/kyc/reviews/{own['id']}/approve", json={}, mfa=True).json["review"][
            "state"
        ]
        == "approved"
    )


def test_provider_callback_signed_idempotent_and_refuses_forgery(
    app: Flask, client: FlaskClient, carol: SignedClient
) -> None:
    kyc = services(app).kyc
    kyc.provider_secrets = {"acme": SECRET}
    review = kyc.request("carol", 3, "FR", provider="acme")
    path = "/api/v1/kyc/providers/acme/callback"
    body = json.dumps({"event_id": "evt-1", "review_id": review["id"], "answer": "approved"}).encode()
    headers = {"Content-Type": "application/json"}
    forged = client.post(path, data=body, headers={**headers, "X-Strongroom-KYC-Signature": "00" * 32})
    assert_error(forged, 401, "kyc_signature_invalid")
    assert carol.get("/api/v1/kyc").json["kyc_tier"] == 1
    signed = {**headers, "X-Strongroom-KYC-Signature": callback_signature(SECRET, body)}
    first = client.post(path, data=body, headers=signed)
    assert first.status_code == 200 and first.json == {"duplicate": False, "review": first.json["review"]}
    assert first.json["review"]["decided_by"] == "provider:acme"
    replay = client.post(path, data=body, headers=signed)
    assert replay.json["duplicate"] is True and replay.json["review"]["state"] == "approved"
    assert carol.get("/api/v1/kyc").json["kyc_tier"] == 3
    unknown = client.post("/api/v1/kyc/providers/nobody/callback", data=body, headers=signed)
    assert_error(unknown, 404, "kyc_provider_unknown")


def test_tier_table_and_policy_limits_are_read_from_the_default_policy() -> None:
    policy = load_default_policy()
    assert withdrawal_limits(policy, 0) == [{"rule_id": "unverified-block", "blocked": True}]
    assert [lim["max_usd_cents"] for t in (1, 2, 3) for lim in withdrawal_limits(policy, t)] == [
        200_000,
        5_000_000,
        100_000_000,
    ]
    assert withdrawal_limits(policy, 4) == []
    assert tier_limits(0).max_leverage == 0 and tier_limits(4).max_notional_usd_cents is None
    assert jurisdiction_refusal("ir") is not None and jurisdiction_refusal("CH") is None
