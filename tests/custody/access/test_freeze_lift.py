"""Lifting an account freeze: a first admin requests it with a reason, a second one approves it."""

from __future__ import annotations

from typing import Any

from flask import Flask
from sqlalchemy import select

from custody import freezes, security_log
from custody.security_log import SecurityEvent

from .helpers import SignedClient, assert_error
from .test_withdrawals_api import SMALL_BTC, whitelist, withdraw

REORG_ID = "reorg:dep:bitcoin:ab12cd:n:a1"
SANCTIONS_ID = "sanctions:alice:0123456789abcdef01234567"


def _freeze(app: Flask, freeze_id: str = REORG_ID, owner: str = "alice") -> None:
    with app.extensions["strongroom.sessions"].begin() as session:
        assert freezes.freeze(session, freeze_id=freeze_id, owner=owner, reason="deposit reorged out",
                              raised_by="deposit-watcher", now_ms=1_767_225_600_000)


def _request(admin: SignedClient, freeze_id: str = REORG_ID, reason: str = "shortfall settled",
             **kwargs: Any) -> Any:
    kwargs.setdefault("mfa", True)
    return admin.post(f"/api/v1/freezes/{freeze_id}/lift-request", json={"reason": reason}, **kwargs)


def _approve(admin: SignedClient, freeze_id: str = REORG_ID, **kwargs: Any) -> Any:
    kwargs.setdefault("mfa", True)
    return admin.post(f"/api/v1/freezes/{freeze_id}/lift-approve", json={}, **kwargs)


def _actions(app: Flask) -> list[str]:
    with app.extensions["strongroom.sessions"]() as session:
        return [e.action for e in session.scalars(select(SecurityEvent).order_by(SecurityEvent.seq))]


def _active(app: Flask) -> list[str]:
    with app.extensions["strongroom.sessions"]() as session:
        return [v.id for v in freezes.active(session)]


def test_freeze_lift_by_two_admins_accepts_the_owners_withdrawal_again(
    alice: SignedClient, admins: list[SignedClient], app: Flask
) -> None:
    whitelist(alice)
    _freeze(app)
    assert withdraw(alice, SMALL_BTC).json["code"] == 4112
    listed = admins[0].get("/api/v1/freezes", query={"owner": "alice"})
    assert listed.status_code == 200 and [f["id"] for f in listed.json["freezes"]] == [REORG_ID]
    requested = _request(admins[0])
    assert requested.status_code == 202, requested.json
    assert requested.json["freeze"]["active"] is True
    assert requested.json["freeze"]["lift_requested_by"] == "admin1"
    assert_error(withdraw(alice, SMALL_BTC), 423, "account_frozen")  # a request alone lifts nothing
    approved = _approve(admins[1])
    assert approved.status_code == 200, approved.json
    assert approved.json["freeze"]["active"] is False
    assert approved.json["freeze"]["lifted_by"] == "admin1,admin2"
    assert admins[0].get("/api/v1/freezes").json["freezes"] == []
    assert withdraw(alice, SMALL_BTC).status_code == 201
    actions = _actions(app)
    assert actions.count("freeze.lift_request") == 1 and actions.count("freeze.lift") == 1
    with app.extensions["strongroom.sessions"]() as session:
        assert security_log.verify_chain(session) >= 2


def test_freeze_lift_approved_by_the_requester_is_refused_403(
    admins: list[SignedClient], app: Flask
) -> None:
    _freeze(app)
    assert _request(admins[0]).status_code == 202
    body = assert_error(_approve(admins[0]), 403, "approver_mismatch")
    assert body["code"] == 1123
    assert _active(app) == [REORG_ID]


def test_freeze_lift_by_a_non_admin_is_refused_403(
    alice: SignedClient, admins: list[SignedClient], app: Flask
) -> None:
    _freeze(app)
    assert_error(alice.get("/api/v1/freezes"), 403, "permission_denied")
    assert_error(_request(alice), 403, "permission_denied")
    assert _request(admins[0]).status_code == 202
    assert_error(_approve(alice), 403, "permission_denied")
    assert _active(app) == [REORG_ID]


def test_freeze_lift_without_or_with_wrong_mfa_is_refused_nothing_changes(
    admins: list[SignedClient], app: Flask
) -> None:
    _freeze(app)
    assert _request(admins[0], mfa=False).status_code in (401, 403)
    assert _request(admins[0], mfa=False, mfa_code="000000").status_code in (401, 403)
    assert "freeze.lift_request" not in _actions(app)
    assert _request(admins[0]).status_code == 202
    assert _approve(admins[1], mfa=False).status_code in (401, 403)
    assert _approve(admins[1], mfa=False, mfa_code="000000").status_code in (401, 403)
    assert _active(app) == [REORG_ID]


def test_freeze_lift_of_an_unknown_freeze_is_refused_404(admins: list[SignedClient], app: Flask) -> None:
    assert_error(_request(admins[0], "reorg:nothing:a1"), 404, "proposal_not_found")
    assert_error(_approve(admins[1], "reorg:nothing:a1"), 404, "proposal_not_found")


def test_freeze_lift_approve_without_a_request_is_refused_409(
    admins: list[SignedClient], app: Flask
) -> None:
    _freeze(app)
    body = assert_error(_approve(admins[1]), 409, "freeze_lift_not_requested")
    assert body["code"] == 1126
    assert _active(app) == [REORG_ID]


def test_freeze_lift_without_a_reason_is_refused_400(admins: list[SignedClient], app: Flask) -> None:
    _freeze(app)
    assert _request(admins[0], reason="   ").status_code == 400
    assert admins[0].post(f"/api/v1/freezes/{REORG_ID}/lift-request", json={}, mfa=True).status_code == 400
    assert "freeze.lift_request" not in _actions(app)


def test_freeze_lift_of_a_lifted_freeze_is_refused_409(admins: list[SignedClient], app: Flask) -> None:
    _freeze(app)
    assert _request(admins[0]).status_code == 202
    assert _approve(admins[1]).status_code == 200
    assert_error(_approve(admins[2]), 409, "proposal_closed")
    assert_error(_request(admins[2]), 409, "proposal_closed")
    assert _actions(app).count("freeze.lift") == 1


def test_freeze_lift_of_a_sanctions_freeze_is_refused_409_compliance_owns_it(
    alice: SignedClient, admins: list[SignedClient], app: Flask
) -> None:
    whitelist(alice)
    _freeze(app, SANCTIONS_ID)
    body = assert_error(_request(admins[0], SANCTIONS_ID), 409, "freeze_compliance_owned")
    assert body["code"] == 1125
    assert_error(_approve(admins[1], SANCTIONS_ID), 409, "freeze_compliance_owned")
    assert _active(app) == [SANCTIONS_ID]
    assert_error(withdraw(alice, SMALL_BTC), 423, "account_frozen")


def test_freeze_lift_of_one_freeze_leaves_the_owners_other_freezes(
    alice: SignedClient, admins: list[SignedClient], app: Flask
) -> None:
    whitelist(alice)
    _freeze(app)
    _freeze(app, "reorg:dep:bitcoin:ef34:n:a1")
    assert _request(admins[0]).status_code == 202
    assert _approve(admins[1]).status_code == 200
    assert _active(app) == ["reorg:dep:bitcoin:ef34:n:a1"]
    assert_error(withdraw(alice, SMALL_BTC), 423, "account_frozen")
