"""Policy governance over the API: proposals, admin-quorum approval, activation, refusals."""

from __future__ import annotations

import copy
from typing import Any

from flask import Flask

from .helpers import SignedClient, access, assert_error, policy_subject


def _proposal(admin: SignedClient, app: Flask, **changes: Any) -> dict[str, Any]:
    document = copy.deepcopy(access(app).policies.active().document.to_json())
    document["version"] = document["version"] + 1
    document.update(changes)
    response = admin.post("/api/v1/policy/proposals", json={"document": document}, mfa=True)
    assert response.status_code == 201, response.json
    proposal: dict[str, Any] = response.json["proposal"]
    return proposal


def test_policy_change_activates_only_on_admin_quorum(admins: list[SignedClient], app: Flask) -> None:
    proposer, a2, a3 = admins
    proposal = _proposal(proposer, app, destination_timelock_s=3600)
    subject = policy_subject(proposal)
    url = f"/api/v1/policy/proposals/{proposal['proposal_id']}/approvals"
    assert_error(
        proposer.post(url, json={"approval": proposer.approve_subject(subject)}, mfa=True),
        422,
        "approval_self",
    )
    first = a2.post(url, json={"approval": a2.approve_subject(subject)}, mfa=True)
    assert first.json["proposal"]["state"] == "open"
    assert a2.get("/api/v1/policy").json["policy"]["version"] == 1
    second = a3.post(url, json={"approval": a3.approve_subject(subject)}, mfa=True)
    assert second.json["proposal"]["state"] == "applied"
    active = a3.get("/api/v1/policy").json["policy"]
    assert (active["version"], active["document"]["destination_timelock_s"]) == (2, 3600)
    assert_error(
        a3.post(url, json={"approval": a3.approve_subject(subject)}, mfa=True), 409, "proposal_closed"
    )


def test_stale_proposal_is_superseded(admins: list[SignedClient], app: Flask) -> None:
    proposer, a2, a3 = admins
    first, second = _proposal(proposer, app, description="one"), _proposal(proposer, app, description="two")
    url = f"/api/v1/policy/proposals/{first['proposal_id']}/approvals"
    for admin in (a2, a3):
        admin.post(url, json={"approval": admin.approve_subject(policy_subject(first))}, mfa=True)
    listed = {p["proposal_id"]: p["state"] for p in a2.get("/api/v1/policy/proposals").json["proposals"]}
    assert listed == {first["proposal_id"]: "applied", second["proposal_id"]: "superseded"}


def test_invalid_or_out_of_sequence_documents_are_refused(admins: list[SignedClient], app: Flask) -> None:
    admin = admins[0]
    document = access(app).policies.active().document.to_json()
    assert_error(
        admin.post("/api/v1/policy/proposals", json={"document": {**document, "version": 5}}, mfa=True),
        409,
        "policy_version_mismatch",
    )
    bad = {
        **document,
        "version": 2,
        "rules": [{"id": "x", "when": {"amount_usd_cents_gte": 1.5}, "action": {"type": "allow"}}],
    }
    assert_error(
        admin.post("/api/v1/policy/proposals", json={"document": bad}, mfa=True),
        422,
        "policy_document_invalid",
    )
    assert_error(admin.post("/api/v1/policy/proposals", json={}, mfa=True), 422, "policy_document_invalid")
    assert access(app).policies.list_proposals() == []


def test_treasury_approval_does_not_count_for_policy(
    admins: list[SignedClient], treasury: list[SignedClient], app: Flask
) -> None:
    proposal = _proposal(admins[0], app)
    url = f"/api/v1/policy/proposals/{proposal['proposal_id']}/approvals"
    t1 = treasury[0]
    assert_error(
        t1.post(url, json={"approval": t1.approve_subject(policy_subject(proposal))}, mfa=True),
        403,
        "permission_denied",
    )
