"""Clearing a sanctions freeze: two compliance officers with MFA, after its case closed as false positive."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from custody import freezes
from custody.security_log import page, verify_chain
from policies.roles import Role

from ..access.helpers import SignedClient, assert_error, make_user
from ..access.test_withdrawals_api import SMALL_BTC, whitelist, withdraw
from .conftest import LISTED_BTC, services

BASE = "/api/v1/compliance"
CLEAN_BTC = "bc1qalicecold"


@pytest.fixture
def officer2(app: Flask, client: FlaskClient, clock: Any) -> SignedClient:
    return make_user(app, client, clock, "officer2", {Role.COMPLIANCE})


@pytest.fixture
def frozen(alice: SignedClient, officer: SignedClient, loaded: int) -> tuple[str, int]:
    """Alice whitelists a listed address: frozen, with a sanctions case. Returns (freeze id, case id)."""
    whitelist(alice, LISTED_BTC)
    listed = officer.get(f"{BASE}/freezes").json["freezes"]
    assert len(listed) == 1 and listed[0]["owner"] == "alice" and listed[0]["active"]
    assert len(listed[0]["cases"]) == 1
    return listed[0]["id"], listed[0]["cases"][0]


def _close(officer: SignedClient, case_id: int, resolution: str) -> None:
    r = officer.post(f"{BASE}/cases/{case_id}/close", json={"resolution": resolution, "reason": "reviewed"},
                     mfa=True)
    assert r.status_code == 200, r.json


def _request(officer: SignedClient, freeze_id: str, reason: str = "address belongs to the user's own "
             "cold wallet, list entry mistaken", mfa: bool = True) -> Any:
    return officer.post(f"{BASE}/freezes/{freeze_id}/clear-request", json={"reason": reason}, mfa=mfa)


def _approve(officer: SignedClient, freeze_id: str, mfa: bool = True) -> Any:
    return officer.post(f"{BASE}/freezes/{freeze_id}/clear-approve", json={}, mfa=mfa)


def _is_frozen(app: Flask, owner: str) -> bool:
    with app.extensions["strongroom.sessions"]() as session:
        return freezes.is_frozen(session, owner)


def test_clearance_two_officers_after_false_positive_lift_the_freeze_security_logged(
    app: Flask, alice: SignedClient, officer: SignedClient, officer2: SignedClient,
    frozen: tuple[str, int]
) -> None:
    freeze_id, case_id = frozen
    _close(officer, case_id, "false_positive")
    r = _request(officer, freeze_id)
    assert r.status_code == 202, r.json
    assert r.json["freeze"]["clear_requested_by"] == "officer1" and r.json["freeze"]["active"]
    assert _is_frozen(app, "alice")
    r = _approve(officer2, freeze_id)
    assert r.status_code == 200, r.json
    assert r.json["freeze"]["lifted_by"] == "officer1,officer2" and not r.json["freeze"]["active"]
    assert not _is_frozen(app, "alice")
    assert officer.get(f"{BASE}/freezes").json["freezes"] == []
    with app.extensions["strongroom.sessions"]() as session:
        events = page(session, limit=500)
        assert verify_chain(session) >= len(events)
    logged = [(e.actor, e.action, e.outcome) for e in events if e.action.startswith("compliance.freeze")]
    assert logged == [("officer1", "compliance.freeze.clear_request", "requested"),
                      ("officer2", "compliance.freeze.clear", "lifted")]
    # Alice withdraws again (to a clean address).
    whitelist(alice, CLEAN_BTC)
    assert withdraw(alice, SMALL_BTC, CLEAN_BTC).status_code == 201


@pytest.mark.parametrize("resolution", ["true_positive", "no_action", "reported"])
def test_clearance_refused_unless_case_closed_as_false_positive(
    app: Flask, officer: SignedClient, officer2: SignedClient, frozen: tuple[str, int], resolution: str
) -> None:
    freeze_id, case_id = frozen
    body = assert_error(_request(officer, freeze_id), 409, "freeze_not_clearable")
    assert f"case {case_id} is open" in body["message"]
    _close(officer, case_id, resolution)
    body = assert_error(_request(officer, freeze_id), 409, "freeze_not_clearable")
    assert f"closed:{resolution}" in body["message"]
    assert _is_frozen(app, "alice")


def test_clearance_same_officer_cannot_approve_own_request(
    app: Flask, officer: SignedClient, frozen: tuple[str, int]
) -> None:
    freeze_id, case_id = frozen
    _close(officer, case_id, "false_positive")
    assert _request(officer, freeze_id).status_code == 202
    assert_error(_approve(officer, freeze_id), 409, "clearance_approver_invalid")
    assert _is_frozen(app, "alice")


def test_clearance_approve_without_request_refused(
    app: Flask, officer: SignedClient, officer2: SignedClient, frozen: tuple[str, int]
) -> None:
    freeze_id, case_id = frozen
    _close(officer, case_id, "false_positive")
    body = assert_error(_approve(officer2, freeze_id), 409, "freeze_not_clearable")
    assert "nobody requested" in body["message"]
    assert _is_frozen(app, "alice")


def test_clearance_without_mfa_refused(
    app: Flask, officer: SignedClient, officer2: SignedClient, frozen: tuple[str, int]
) -> None:
    freeze_id, case_id = frozen
    _close(officer, case_id, "false_positive")
    assert _request(officer, freeze_id, mfa=False).status_code == 401
    assert _request(officer, freeze_id).status_code == 202
    assert _approve(officer2, freeze_id, mfa=False).status_code == 401
    assert _is_frozen(app, "alice")


def test_clearance_blank_reason_refused(officer: SignedClient, frozen: tuple[str, int]) -> None:
    freeze_id, case_id = frozen
    _close(officer, case_id, "false_positive")
    assert _request(officer, freeze_id, reason="   ").status_code == 400


def test_clearance_new_hit_between_request_and_approval_stops_it(
    app: Flask, alice: SignedClient, officer: SignedClient, officer2: SignedClient, frozen: tuple[str, int]
) -> None:
    freeze_id, case_id = frozen
    _close(officer, case_id, "false_positive")
    assert _request(officer, freeze_id).status_code == 202
    # A deposit from the same listed address: a new alert, in a new case (the old one is closed).
    with app.extensions["strongroom.sessions"].begin() as session:
        assert services(app).screening.screen_deposit_source(session, "alice", "BTC", LISTED_BTC,
                                                             "deposit:dep-late") is not None
    body = assert_error(_approve(officer2, freeze_id), 409, "freeze_not_clearable")
    assert "is open" in body["message"]
    assert _is_frozen(app, "alice")


def test_clearance_traders_admins_and_the_frozen_user_are_refused(
    app: Flask, client: FlaskClient, clock: Any, alice: SignedClient, officer: SignedClient,
    frozen: tuple[str, int]
) -> None:
    freeze_id, case_id = frozen
    _close(officer, case_id, "false_positive")
    admin = make_user(app, client, clock, "admin1", {Role.ADMIN})
    assert _request(alice, freeze_id).status_code == 403
    assert _request(admin, freeze_id).status_code == 403
    # The operators' two-admin lift refuses sanctions freezes (compliance owns them).
    r = admin.post(f"/api/v1/freezes/{freeze_id}/lift-request", json={"reason": "try"}, mfa=True)
    assert_error(r, 409, "freeze_compliance_owned")
    # A compliance officer who is the frozen user does not see their own freeze.
    with app.extensions["strongroom.sessions"].begin() as session:
        freezes.freeze(session, freeze_id="sanctions:officer2:abc", owner="officer2", reason="hit",
                       raised_by="screening", now_ms=clock.now_ms)
    officer2 = make_user(app, client, clock, "officer2", {Role.COMPLIANCE})
    assert_error(_request(officer2, "sanctions:officer2:abc"), 404, "freeze_not_found")
    assert all(f["owner"] != "officer2" for f in officer2.get(f"{BASE}/freezes").json["freezes"])


def test_clearance_non_sanctions_freeze_is_the_admins(app: Flask, officer: SignedClient, clock: Any) -> None:
    with app.extensions["strongroom.sessions"].begin() as session:
        freezes.freeze(session, freeze_id="reorg:dep-1", owner="bob", reason="reorg shortfall",
                       raised_by="watcher", now_ms=clock.now_ms)
    body = assert_error(_request(officer, "reorg:dep-1"), 409, "freeze_not_clearable")
    assert "two admins" in body["message"]
    assert_error(_request(officer, "sanctions:nobody:000"), 404, "freeze_not_found")
