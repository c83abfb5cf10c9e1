"""Withdrawal kill switches: one admin halts a chain or freezes everything; two admins lift it."""

from __future__ import annotations

from typing import Any

from flask import Flask
from sqlalchemy import select

from custody import security_log
from custody.ledger.entry import AccountKind
from custody.ledger.service import Ledger
from custody.security_log import SecurityEvent
from custody.withdrawals.service import WithdrawalInput, Withdrawals

from .helpers import SignedClient, access, assert_error
from .test_withdrawals_api import ADDRESS, SMALL_BTC, available, whitelist, withdraw


def _halt(admin: SignedClient, scope: str, reason: str = "incident") -> dict[str, Any]:
    response = admin.post("/api/v1/withdrawal-halts", json={"scope": scope, "reason": reason}, mfa=True)
    assert response.status_code == 201, response.json
    return response.json["halt"]


def _lift(admin: SignedClient, halt_id: str) -> Any:
    return admin.post(f"/api/v1/withdrawal-halts/{halt_id}/lift", json={}, mfa=True)


def _actions(app: Flask) -> list[str]:
    with app.extensions["strongroom.sessions"]() as session:
        return [e.action for e in session.scalars(select(SecurityEvent).order_by(SecurityEvent.seq))]


def test_global_freeze_refuses_withdrawals_423_nothing_held(
    alice: SignedClient, admins: list[SignedClient], app: Flask
) -> None:
    whitelist(alice)
    _halt(admins[0], "global")
    funding = app.extensions["strongroom.ledger"].find_account("alice", "BTC", AccountKind.USER_AVAILABLE)
    before = available(app, funding.id)
    body = assert_error(withdraw(alice, SMALL_BTC), 423, "withdrawals_halted")
    assert body["code"] == 4120
    assert available(app, funding.id) == before
    assert alice.get("/api/v1/withdrawals").json["withdrawals"] == []
    assert "withdrawals.halt" in _actions(app)


def test_chain_halt_stops_only_that_chain(
    alice: SignedClient, admins: list[SignedClient], app: Flask
) -> None:
    whitelist(alice)
    _halt(admins[0], "chain:ethereum")
    assert withdraw(alice, SMALL_BTC).status_code == 201  # BTC moves on bitcoin: not halted
    _halt(admins[0], "chain:bitcoin")
    assert_error(withdraw(alice, SMALL_BTC), 423, "withdrawals_halted")


def test_lifting_a_freeze_needs_a_second_admin(
    alice: SignedClient, admins: list[SignedClient], app: Flask
) -> None:
    whitelist(alice)
    halt = _halt(admins[0], "global")
    proposed = _lift(admins[0], halt["id"])
    assert proposed.status_code == 202 and proposed.json["halt"]["active"] is True
    assert_error(_lift(admins[0], halt["id"]), 403, "approver_mismatch")  # the proposer again
    assert_error(withdraw(alice, SMALL_BTC), 423, "withdrawals_halted")
    lifted = _lift(admins[1], halt["id"])
    assert lifted.status_code == 200, lifted.json
    assert lifted.json["halt"]["active"] is False and lifted.json["halt"]["lifted_by"] == "admin2"
    assert withdraw(alice, SMALL_BTC).status_code == 201
    actions = _actions(app)
    assert actions.count("withdrawals.halt_lift_propose") == 1 and actions.count("withdrawals.halt_lift") == 1
    with app.extensions["strongroom.sessions"]() as session:
        assert security_log.verify_chain(session) >= 3
    assert_error(_lift(admins[2], halt["id"]), 409, "proposal_closed")


def test_lifting_needs_mfa(admins: list[SignedClient], app: Flask) -> None:
    halt = _halt(admins[0], "global")
    _lift(admins[0], halt["id"])
    response = admins[1].post(f"/api/v1/withdrawal-halts/{halt['id']}/lift", json={}, mfa=False)
    assert response.status_code in (401, 403), response.json
    assert admins[0].get("/api/v1/withdrawal-halts").json["halts"][0]["active"] is True


def test_halt_needs_an_admin(alice: SignedClient, app: Flask) -> None:
    response = alice.post("/api/v1/withdrawal-halts", json={"scope": "global"}, mfa=True)
    assert_error(response, 403, "permission_denied")
    assert _halts(app) == []


def test_halt_with_unknown_scope_is_refused_and_stores_nothing(
    admins: list[SignedClient], app: Flask
) -> None:
    response = admins[0].post("/api/v1/withdrawal-halts", json={"scope": "chain:dogecoin"}, mfa=True)
    assert response.status_code == 400
    assert _halts(app) == []


def _halts(app: Flask) -> list[Any]:
    from custody import withdrawal_halts

    with app.extensions["strongroom.sessions"]() as session:
        return withdrawal_halts.listing(session, active_only=False)


def test_dispatcher_does_not_send_approved_withdrawals_while_halted(
    alice: SignedClient, admins: list[SignedClient], app: Flask
) -> None:
    from custody.wallets.dispatch import WithdrawalDispatcher

    whitelist(alice)
    withdrawals: Withdrawals = access(app).withdrawals
    user = access(app).users.find_user("alice")
    assert user is not None
    view = withdrawals.create(user, WithdrawalInput("BTC", SMALL_BTC, ADDRESS), "wd_halted")
    assert view.state == "approved"
    _halt(admins[0], "chain:bitcoin", "hot wallet under investigation")
    sent: list[str] = []

    class Executor:  # the real executors need a chain; this one records that nothing was sent
        def execute(self, *args: Any) -> Any:
            sent.append(args[0])
            raise AssertionError("the dispatcher sent a withdrawal while its chain was halted")

        def get(self, transfer_id: str) -> Any:
            raise AssertionError("no transaction was ever made")

    ledger: Ledger = app.extensions["strongroom.ledger"]
    dispatcher = WithdrawalDispatcher(app.extensions["strongroom.sessions"], Executor(),  # type: ignore[arg-type]
                                      ["BTC"], alice.clock, ledger)
    report = dispatcher.run()
    assert report.dispatched == [] and sent == []
    assert withdrawals.get("wd_halted").state == "approved"
