"""A withdrawal is created once, with exactly one live hold, whatever runs concurrently or crashes.

The double spend of issue 18: two requests with one Idempotency-Key ~10 ms apart gave one
``approved`` withdrawal and one 500, and the loser voided the winner's hold. And a crash between
placing the hold and writing the row left funds held forever.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from custody import security_log
from custody.access.users import UserView
from custody.ledger.entry import AccountKind, TransferKind
from custody.ledger.models import LedgerTransfer
from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger
from custody.withdrawals.codes import WithdrawalCode, WithdrawalError
from custody.withdrawals.models import WithdrawalRequest
from custody.withdrawals.service import WithdrawalInput, Withdrawals, hold_is_live
from policies.roles import Role

from ...conftest import DATABASES, fresh_database_url
from .helpers import SignedClient, access, make_user

REPO = Path(__file__).resolve().parents[3]
WORKER = Path(__file__).with_name("withdrawal_crash_worker.py")
CONCURRENT = 8
DAY_MS = 86_400_000
AMOUNT = 1_000_000  # 0.01 BTC: the default policy allows it to an aged whitelisted address
DESTINATION = "bc1qcrashtest"
FUNDED = 10 * 10**8
CRASH_STEPS = ["before_hold", "after_hold", "before_log", "after_log", "before_commit", "after_commit"]


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from fresh_database_url(request, request.param, tmp_path)


def _fund(ledger: Ledger, username: str) -> int:
    hot = ledger.ensure_account("platform", "BTC", AccountKind.HOT_WALLET)
    account = ledger.ensure_account(username, "BTC", AccountKind.USER_AVAILABLE)
    ledger.transfer(TransferRequest(id=f"fund-{username}", debit_account=hot.id, credit_account=account.id,
                                    amount=FUNDED))
    ledger.ensure_account("platform", "BTC", AccountKind.WITHDRAWALS_IN_FLIGHT)
    return account.id


@pytest.fixture
def alice(app: Flask, client: FlaskClient, clock: Any) -> SignedClient:
    user = make_user(app, client, clock, "alice", {Role.TRADER})
    user.extra["account_id"] = _fund(app.extensions["strongroom.ledger"], "alice")
    access(app).policies.ensure_default()
    access(app).withdrawals.add_whitelist("alice", "BTC", DESTINATION)
    clock.advance(DAY_MS + 1)
    return user


def _alice_view(app: Flask) -> UserView:
    found = access(app).users.find_user("alice")
    assert found is not None
    return found


def _holds(app: Flask) -> list[LedgerTransfer]:
    with app.extensions["strongroom.sessions"]() as session:
        return list(session.scalars(select(LedgerTransfer).where(
            LedgerTransfer.kind == TransferKind.PENDING.value, LedgerTransfer.id.endswith(":hold"))))


def _assert_one_withdrawal_one_live_hold(app: Flask, account_id: int) -> None:
    """Exactly one withdrawal stands on exactly one live hold of AMOUNT; nothing else is held."""
    sessions = app.extensions["strongroom.sessions"]
    with sessions() as session:
        rows = list(session.scalars(select(WithdrawalRequest)))
        assert len(rows) == 1, [r.id for r in rows]
        assert rows[0].state == "approved"
        assert hold_is_live(session, rows[0].hold_transfer_id)
        assert session.scalar(select(func.count()).select_from(LedgerTransfer).where(
            LedgerTransfer.pending_id.is_not(None))) == 0, "a hold was voided or posted"
        hold_id = rows[0].hold_transfer_id
    assert [h.id for h in _holds(app)] == [hold_id]
    ledger: Ledger = app.extensions["strongroom.ledger"]
    assert ledger.balance(account_id).debits_pending == AMOUNT


def _concurrently(calls: list[Callable[[], Any]]) -> list[Any]:
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = calls[index]()
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_eight_concurrent_creates_with_one_withdrawal_id_make_one_withdrawal_and_one_hold(
    app: Flask, alice: SignedClient
) -> None:
    withdrawals: Withdrawals = access(app).withdrawals
    user = _alice_view(app)
    request = WithdrawalInput("BTC", AMOUNT, DESTINATION)
    results = _concurrently([lambda: withdrawals.create(user, request, "wd_same")] * CONCURRENT)
    assert all(not isinstance(r, Exception) for r in results), results
    assert {(r.id, r.state) for r in results} == {("wd_same", "approved")}
    _assert_one_withdrawal_one_live_hold(app, alice.extra["account_id"])


def test_eight_concurrent_posts_with_one_idempotency_key_make_one_withdrawal(
    app: Flask, alice: SignedClient
) -> None:
    code = alice.next_code()
    body = {"asset": "BTC", "amount": str(AMOUNT), "destination": DESTINATION}
    # Sign them all first (each its own timestamp, so none is a replay), then fire together.
    prepared = [_prepared(alice, app, body, code) for _ in range(CONCURRENT)]
    responses = _concurrently(prepared)
    statuses = sorted(r.status_code for r in responses)
    assert all(s in (201, 409) for s in statuses), [(r.status_code, r.get_json()) for r in responses]
    created = [r.get_json()["withdrawal"] for r in responses if r.status_code == 201]
    assert created and len({w["id"] for w in created}) == 1
    for refused in (r for r in responses if r.status_code == 409):
        assert refused.get_json()["error"] == "idempotency_key_in_progress"
    _assert_one_withdrawal_one_live_hold(app, alice.extra["account_id"])
    # A retry after the dust settles replays the one result.
    again = alice.post("/api/v1/withdrawals", json=body, mfa=True, idempotency_key="same-key")
    assert again.status_code == 201 and again.json["withdrawal"]["id"] == created[0]["id"]
    assert again.headers["Idempotent-Replayed"] == "true"


def _prepared(alice: SignedClient, app: Flask, body: dict[str, Any], code: str) -> Callable[[], Any]:
    import json

    from policies.request_signing import sign_request

    alice.clock.advance(1)
    data = json.dumps(body).encode()
    headers = sign_request(key_id=alice.key_id, secret=alice.secret, timestamp_ms=alice.clock.now_ms,
                           method="POST", path="/api/v1/withdrawals", query="", body=data)
    headers.update({"X-Strongroom-MFA": code, "Idempotency-Key": "same-key"})
    client = app.test_client()
    return lambda: client.post("/api/v1/withdrawals", data=data, content_type="application/json",
                               headers=headers)


def test_withdrawal_post_without_idempotency_key_is_refused_and_holds_nothing(
    app: Flask, alice: SignedClient
) -> None:
    body = {"asset": "BTC", "amount": str(AMOUNT), "destination": DESTINATION}
    refused = alice.post("/api/v1/withdrawals", json=body, mfa=True)
    assert (refused.status_code, refused.json["error"]) == (400, "idempotency_key_required")
    assert _holds(app) == []


def test_failed_create_never_voids_a_hold_it_did_not_write(app: Flask, alice: SignedClient) -> None:
    withdrawals: Withdrawals = access(app).withdrawals
    user = _alice_view(app)
    first = withdrawals.create(user, WithdrawalInput("BTC", AMOUNT, DESTINATION), "wd_owned")
    # Same id, different amount: refused, and the first withdrawal's hold is untouched.
    again = withdrawals.create(user, WithdrawalInput("BTC", AMOUNT + 1, DESTINATION), "wd_owned")
    assert again.id == first.id
    _assert_one_withdrawal_one_live_hold(app, alice.extra["account_id"])


# -- crashes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("step", CRASH_STEPS)
def test_sigkill_at_every_step_of_creation_leaves_a_withdrawal_with_its_live_hold_or_nothing(
    app: Flask, alice: SignedClient, database_url: str, step: str
) -> None:
    import os

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    crashed = subprocess.run([sys.executable, str(WORKER), database_url, str(alice.clock.now_ms), step],
                             env=env, capture_output=True, text=True, timeout=120)
    assert crashed.returncode == -9, (crashed.returncode, crashed.stderr[-2000:])
    sessions = app.extensions["strongroom.sessions"]
    holds = [h.id for h in _holds(app)]
    with sessions() as session:
        rows = list(session.scalars(select(WithdrawalRequest)))
        if step == "after_commit":
            assert [r.id for r in rows] == ["wd_crash"] and hold_is_live(session, "wd_crash:hold")
        else:
            assert rows == [] and holds == [], (rows, holds)
    # Nothing for the sweep to do, ever: no hold without a withdrawal.
    assert access(app).withdrawals.sweep_orphan_holds(grace_ms=0) == []
    # The retry (same id, as the same Idempotency-Key derives) completes it, holding once.
    view = access(app).withdrawals.create(_alice_view(app), WithdrawalInput("BTC", AMOUNT, DESTINATION),
                                          "wd_crash")
    assert view.state == "approved"
    _assert_one_withdrawal_one_live_hold(app, alice.extra["account_id"])


def _legacy_orphan_hold(app: Flask, account_id: int, withdrawal_id: str) -> str:
    """Write a hold the way the old two-transaction code did before it crashed: no row."""
    ledger: Ledger = app.extensions["strongroom.ledger"]
    in_flight = ledger.ensure_account("platform", "BTC", AccountKind.WITHDRAWALS_IN_FLIGHT)
    ledger.transfer(TransferRequest(id=f"{withdrawal_id}:hold", kind=TransferKind.PENDING,
                                    debit_account=account_id, credit_account=in_flight.id, amount=AMOUNT,
                                    reference=f"withdrawal {withdrawal_id} hold"))
    return f"{withdrawal_id}:hold"


def test_sweep_voids_an_orphan_hold_after_its_grace_and_a_retry_on_it_is_refused(
    app: Flask, alice: SignedClient, clock: Any
) -> None:
    withdrawals: Withdrawals = access(app).withdrawals
    hold = _legacy_orphan_hold(app, alice.extra["account_id"], "wd_orphan")
    ledger: Ledger = app.extensions["strongroom.ledger"]
    assert ledger.balance(alice.extra["account_id"]).debits_pending == AMOUNT
    assert withdrawals.sweep_orphan_holds() == []  # still within its grace
    clock.advance(5 * 60 * 1000 + 1)
    assert withdrawals.sweep_orphan_holds() == [hold]
    assert ledger.balance(alice.extra["account_id"]).debits_pending == 0
    assert ledger.get_transfer("wd_orphan:void").actor == "service:withdrawal-sweep"
    with pytest.raises(WithdrawalError) as refused:
        withdrawals.create(_alice_view(app), WithdrawalInput("BTC", AMOUNT, DESTINATION), "wd_orphan")
    assert refused.value.code is WithdrawalCode.WITHDRAWAL_ID_RELEASED
    assert withdrawals.find("wd_orphan") is None
    with app.extensions["strongroom.sessions"]() as session:
        events = [e for e in security_log.page(session, limit=100) if e.action == "withdrawal.hold_swept"]
    assert [e.subject for e in events] == ["wd_orphan"]


def test_sweep_leaves_the_hold_of_an_open_withdrawal_alone(
    app: Flask, alice: SignedClient, clock: Any
) -> None:
    withdrawals: Withdrawals = access(app).withdrawals
    withdrawals.create(_alice_view(app), WithdrawalInput("BTC", AMOUNT, DESTINATION), "wd_open")
    clock.advance(DAY_MS)
    assert withdrawals.sweep_orphan_holds() == []
    _assert_one_withdrawal_one_live_hold(app, alice.extra["account_id"])


def test_retry_on_a_legacy_live_hold_adopts_it_instead_of_holding_twice(
    app: Flask, alice: SignedClient
) -> None:
    _legacy_orphan_hold(app, alice.extra["account_id"], "wd_legacy")
    view = access(app).withdrawals.create(_alice_view(app), WithdrawalInput("BTC", AMOUNT, DESTINATION),
                                          "wd_legacy")
    assert view.state == "approved"
    _assert_one_withdrawal_one_live_hold(app, alice.extra["account_id"])


def test_dispatcher_refuses_to_send_a_withdrawal_whose_hold_is_not_live(
    app: Flask, alice: SignedClient
) -> None:
    from custody.wallets.dispatch import WithdrawalDispatcher

    withdrawals: Withdrawals = access(app).withdrawals
    withdrawals.create(_alice_view(app), WithdrawalInput("BTC", AMOUNT, DESTINATION), "wd_unheld")
    ledger: Ledger = app.extensions["strongroom.ledger"]
    # Someone with ledger access releases the hold behind the withdrawal's back.
    ledger.transfer(TransferRequest(id="rogue-void", kind=TransferKind.VOID, pending_id="wd_unheld:hold"))
    sent: list[str] = []

    class Executor:
        def execute(self, *args: Any) -> Any:
            sent.append(args[0])
            raise AssertionError("the dispatcher sent a withdrawal nobody holds funds for")

        def get(self, transfer_id: str) -> Any:
            raise AssertionError("no transaction was ever made")

    dispatcher = WithdrawalDispatcher(app.extensions["strongroom.sessions"], Executor(),  # type: ignore[arg-type]
                                      ["BTC"], alice.clock, ledger)
    report = dispatcher.run()
    assert report.dispatched == [] and sent == []
    view = withdrawals.get("wd_unheld")
    assert (view.state, view.row.close_reason) == ("failed", "not sent: its ledger hold is not live")
