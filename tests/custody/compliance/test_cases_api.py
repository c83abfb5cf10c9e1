"""Case management through the compliance API: lifecycle, security log, least privilege."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from custody.security_log import page
from policies.roles import Role

from ..access.helpers import SignedClient, assert_error, make_user
from ..access.test_withdrawals_api import whitelist
from .conftest import LISTED_BTC, services

ENDPOINTS_READ = ["/api/v1/compliance/queue", "/api/v1/compliance/cases", "/api/v1/compliance/alerts",
                  "/api/v1/compliance/hits", "/api/v1/compliance/sanctions/lists"]


@pytest.fixture
def case_id(alice: SignedClient, officer: SignedClient, loaded: int) -> int:
    """Alice whitelists a listed address: a sanctions case about her opens."""
    whitelist(alice, LISTED_BTC)
    cases = officer.get("/api/v1/compliance/cases").json["cases"]
    assert len(cases) == 1
    return int(cases[0]["id"])


@pytest.fixture
def officer2(app: Flask, client: FlaskClient, clock: Any) -> SignedClient:
    return make_user(app, client, clock, "officer2", {Role.COMPLIANCE})


def _security_actions(app: Flask, prefix: str) -> list[tuple[str, str, str]]:
    with app.extensions["strongroom.sessions"]() as session:
        events = page(session, limit=500)
    return [(e.actor, e.action, e.outcome) for e in events if e.action.startswith(prefix)]


def test_case_lifecycle_assign_comment_escalate_close_all_in_security_log(
        app: Flask, officer: SignedClient, officer2: SignedClient, case_id: int) -> None:
    base = f"/api/v1/compliance/cases/{case_id}"
    assigned = officer.post(f"{base}/assign", json={"assignee": "officer2"}, mfa=True)
    assert assigned.status_code == 200, assigned.json
    assert assigned.json["case"]["assignee"] == "officer2"
    noted = officer2.post(f"{base}/comment", json={"body": "Address matches ent 90001."}, mfa=True)
    assert noted.status_code == 200
    reason = {"reason": "Confirmed match; MLRO to decide."}
    escalated = officer2.post(f"{base}/escalate", json=reason, mfa=True)
    assert escalated.json["case"]["state"] == "escalated"
    queue = officer.get("/api/v1/compliance/queue").json["cases"]
    assert [c["id"] for c in queue] == [case_id]
    closed = officer.post(f"{base}/close", json={"resolution": "true_positive",
                                                 "reason": "Blocked; reported to the regulator."}, mfa=True)
    body = closed.json["case"]
    assert (body["state"], body["resolution"], body["closed_by"]) == ("closed", "true_positive", "officer1")
    detail = officer.get(base).json["case"]
    assert [c["kind"] for c in detail["comments"]] == ["assign", "comment", "escalate", "close"]
    assert detail["alerts"][0]["evidence"]["ent_num"] == 90001
    assert officer.get("/api/v1/compliance/queue").json["cases"] == []
    assert _security_actions(app, "compliance.case.")[1:] == [
        ("officer1", "compliance.case.assign", "open"), ("officer2", "compliance.case.comment", "open"),
        ("officer2", "compliance.case.escalate", "escalated"),
        ("officer1", "compliance.case.close", "closed")]


@pytest.mark.parametrize(("action", "body"), [
    ("escalate", {"reason": "again"}), ("close", {"resolution": "no_action", "reason": "again"}),
    ("comment", {"body": "late"}), ("assign", {"assignee": "officer1"}),
])
def test_closed_case_refuses_every_change_409(
        officer: SignedClient, case_id: int, action: str, body: dict[str, str]) -> None:
    base = f"/api/v1/compliance/cases/{case_id}"
    closing = {"resolution": "false_positive", "reason": "Different chain."}
    officer.post(f"{base}/close", json=closing, mfa=True)
    assert_error(officer.post(f"{base}/{action}", json=body, mfa=True), 409, "case_transition_invalid")


@pytest.mark.parametrize(("action", "body", "error"), [
    ("close", {"resolution": "maybe", "reason": "x"}, "case_input_invalid"),
    ("close", {"resolution": "no_action", "reason": "   "}, "case_input_invalid"),
    ("escalate", {"reason": ""}, "case_input_invalid"),
    ("assign", {"assignee": "alice"}, "case_input_invalid"),  # not an officer (and the subject)
    ("assign", {"assignee": "nobody"}, "case_input_invalid"),
    ("comment", {"body": "x", "extra": 1}, "invalid_field"),
])
def test_bad_case_input_is_refused_and_changes_nothing(
        officer: SignedClient, case_id: int, action: str, body: dict[str, Any], error: str) -> None:
    base = f"/api/v1/compliance/cases/{case_id}"
    assert_error(officer.post(f"{base}/{action}", json=body, mfa=True), 400, error)
    case = officer.get(base).json["case"]
    assert (case["state"], case["assignee"], case["comments"]) == ("open", None, [])


def test_case_change_without_mfa_is_refused(officer: SignedClient, case_id: int) -> None:
    response = officer.post(f"/api/v1/compliance/cases/{case_id}/comment", json={"body": "no code"})
    assert response.status_code == 401


@pytest.mark.parametrize("path", ENDPOINTS_READ)
def test_traders_see_no_compliance_endpoint(alice: SignedClient, case_id: int, path: str) -> None:
    # Alice is the subject of the open case: nothing here is hers to see.
    assert_error(alice.get(path), 403, "permission_denied")
    assert_error(alice.get(f"/api/v1/compliance/cases/{case_id}"), 403, "permission_denied")


def test_officer_never_sees_cases_or_alerts_about_themselves(
        app: Flask, client: FlaskClient, clock: Any, officer: SignedClient, loaded: int) -> None:
    # An officer who also trades whitelists a listed address: the case is about them.
    dual = make_user(app, client, clock, "officer9", {Role.COMPLIANCE, Role.TRADER})
    whitelist(dual, LISTED_BTC)
    [case] = officer.get("/api/v1/compliance/cases").json["cases"]
    assert case["username"] == "officer9"
    for path in ENDPOINTS_READ[:4]:
        listed = dual.get(path).json
        assert all(not items for items in listed.values()), (path, listed)
    assert_error(dual.get(f"/api/v1/compliance/cases/{case['id']}"), 404, "case_not_found")
    assert_error(dual.post(f"/api/v1/compliance/cases/{case['id']}/close",
                           json={"resolution": "false_positive", "reason": "not me"}, mfa=True),
                 404, "case_not_found")


def test_unknown_case_is_404(officer: SignedClient, loaded: int) -> None:
    assert_error(officer.get("/api/v1/compliance/cases/999999"), 404, "case_not_found")


def test_alerts_are_idempotent_and_join_the_users_open_case(app: Flask, alice: SignedClient,
                                                            officer: SignedClient, case_id: int) -> None:
    services(app).screening.rescreen_all()
    services(app).screening.rescreen_all()
    alerts = officer.get("/api/v1/compliance/alerts").json["alerts"]
    assert len(alerts) == 1 and alerts[0]["case_id"] == case_id
