"""A frozen owner (deposit reorged out after credit) cannot withdraw; nothing is held or written."""

from __future__ import annotations

from flask import Flask

from custody import freezes
from custody.ledger.entry import AccountKind

from .helpers import SignedClient, assert_error
from .test_withdrawals_api import SMALL_BTC, available, whitelist, withdraw


def _freeze(app: Flask, owner: str) -> None:
    with app.extensions["strongroom.sessions"].begin() as session:
        freezes.freeze(session, freeze_id=f"reorg:test:{owner}", owner=owner, reason="test reorg",
                       raised_by="service:deposit-watcher", now_ms=1)


def test_withdrawal_of_frozen_owner_refused_423_nothing_held(alice: SignedClient, app: Flask) -> None:
    whitelist(alice)
    _freeze(app, "alice")
    ledger = app.extensions["strongroom.ledger"]
    funding = ledger.find_account("alice", "BTC", AccountKind.USER_AVAILABLE)
    before = available(app, funding.id)
    body = assert_error(withdraw(alice, SMALL_BTC), 423, "account_frozen")
    assert body["code"] == 4112
    assert available(app, funding.id) == before
    assert alice.get("/api/v1/withdrawals").json["withdrawals"] == []


def test_withdrawal_after_freeze_lifted_by_two_admins_goes_through(alice: SignedClient, app: Flask) -> None:
    whitelist(alice)
    _freeze(app, "alice")
    with app.extensions["strongroom.sessions"].begin() as session:
        freezes.request_lift(session, "reorg:test:alice", admin="root", roles={"admin"}, reason="ok",
                             now_ms=2)
        lifted = freezes.approve_lift(session, "reorg:test:alice", admin="root2", roles={"admin"}, now_ms=3)
    assert lifted.lifted_by == "root,root2"
    assert withdraw(alice, SMALL_BTC).status_code == 201


def test_dispatcher_holds_back_approved_withdrawal_of_frozen_owner(alice: SignedClient, app: Flask) -> None:
    from typing import Any

    from custody.wallets.dispatch import WithdrawalDispatcher
    from custody.withdrawals.service import WithdrawalInput

    from .helpers import access
    from .test_withdrawals_api import ADDRESS

    whitelist(alice)
    withdrawals = access(app).withdrawals
    user = access(app).users.find_user("alice")
    assert user is not None
    view = withdrawals.create(user, WithdrawalInput("BTC", SMALL_BTC, ADDRESS), "wd_frozen")
    assert view.state == "approved"
    _freeze(app, "alice")  # the deposit behind it left the chain after the approval

    class Executor:  # nothing may be sent: it records any attempt
        def execute(self, *args: Any) -> Any:
            raise AssertionError(f"the dispatcher sent {args[0]} for a frozen owner")

        def get(self, transfer_id: str) -> Any:
            raise AssertionError("no transaction was ever made")

    dispatcher = WithdrawalDispatcher(app.extensions["strongroom.sessions"], Executor(),  # type: ignore[arg-type]
                                      ["BTC"], alice.clock, app.extensions["strongroom.ledger"])
    assert dispatcher.run().dispatched == []
    assert withdrawals.get("wd_frozen").state == "approved"
