"""Travel-rule exchange with a counterparty VASP (a real local HTTP server, HMAC-signed messages):
withdrawals above the threshold to a VASP wait, proceed on approval, stop on rejection or timeout."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from custody.compliance.trp import TravelRuleExchange
from policies.roles import Role

from ..access.conftest import fund
from ..access.helpers import SignedClient, assert_error, make_user
from ..access.test_withdrawals_api import ADDRESS, SMALL_BTC, available, whitelist
from .test_travel_rule import DATA

VASP_LEI = "5493001KJTIIGC8Y1R12"  # the beneficiary VASP of DATA
SECRET = b"shared travel-rule secret, test only"
DAY_MS = 86_400_000


class LocalVasp:
    """The counterparty VASP: an HTTP server on 127.0.0.1 (port 0) that records what we send it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.refuse_next = 0  # answer 503 to this many next messages (a VASP briefly down)
        self.lock = threading.Lock()
        vasp = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                expected = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
                with vasp.lock:
                    if not hmac.compare_digest(expected, self.headers.get("X-TRP-Signature", "")):
                        vasp.bad_signatures += 1
                        self.send_response(401)
                    elif vasp.refuse_next > 0:
                        vasp.refuse_next -= 1
                        self.send_response(503)
                    else:
                        vasp.received.append(json.loads(body))
                        self.send_response(202)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/trp"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, client: FlaskClient, transfer_id: str, answer: str, reason: str = "",
               secret: bytes = SECRET, lei: str = VASP_LEI) -> Any:
        body = json.dumps({"type": "callback", "transfer_id": transfer_id, "answer": answer,
                           "reason": reason}).encode()
        signature = hmac.new(secret, body, hashlib.sha256).hexdigest()
        return client.post(f"/api/v1/travel-rule/callback/{lei}", data=body, content_type="application/json",
                           headers={"X-TRP-Signature": signature})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def vasp() -> Iterator[LocalVasp]:
    server = LocalVasp()
    yield server
    server.close()


@pytest.fixture
def trp_app(database_url: str, clock: Any, keystore: Any, tmp_path: Path, vasp: LocalVasp) -> Iterator[Flask]:
    from exchange.instruments import DEFAULT_CONFIG
    from strongroom.app import create_app
    from strongroom.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    application = create_app({
        "TESTING": True, "CLOCK": clock, "KEYSTORE": keystore, "EXCHANGE_INSTRUMENTS": DEFAULT_CONFIG,
        "TRAVEL_RULE_THRESHOLD_USD_CENTS": 100_000, "TRAVEL_RULE_TIMEOUT_MS": DAY_MS,
        "TRAVEL_RULE_VASPS": {VASP_LEI: {"name": "Example Custody GmbH", "url": vasp.url, "secret": SECRET}},
    }, settings=settings)
    yield application
    application.extensions["strongroom.engine"].dispose()


@pytest.fixture
def erin(trp_app: Flask, clock: Any) -> SignedClient:
    user = make_user(trp_app, trp_app.test_client(), clock, "erin", {Role.TRADER}, kyc_tier=2)
    user.extra["account_id"] = fund(trp_app, "erin")
    whitelist(user)
    return user


def _exchange(app: Flask) -> TravelRuleExchange:
    found: TravelRuleExchange = app.extensions["strongroom.travel_rule_exchange"]
    return found


def _withdraw(user: SignedClient, key: str, data: dict[str, Any] | None) -> Any:
    body: dict[str, Any] = {"asset": "BTC", "amount": str(SMALL_BTC), "destination": ADDRESS}
    if data is not None:
        body["travel_rule"] = data
    return user.post("/api/v1/withdrawals", json=body, mfa=True, idempotency_key=key)


def _state(app: Flask, withdrawal_id: str) -> str:
    return str(app.extensions["strongroom.access"].withdrawals.get(withdrawal_id).state)


def _waiting(app: Flask, erin: SignedClient, vasp: LocalVasp, key: str) -> str:
    r = _withdraw(erin, key, DATA)
    assert r.status_code == 201, r.json
    wid = r.json["withdrawal"]["id"] if "withdrawal" in r.json else r.json["id"]
    assert _state(app, wid) == "delayed"
    assert _exchange(app).get(wid)["state"] == "pending"
    # Held meanwhile: the policy's release job does not let it go.
    assert app.extensions["strongroom.access"].withdrawals.release_due() == []
    assert available(app, erin.extra["account_id"])[1] == SMALL_BTC
    assert _exchange(app).send_inquiries() == [wid]
    assert _exchange(app).send_inquiries() == []  # sent once
    with vasp.lock:
        inquiry = vasp.received[-1]
    assert inquiry["type"] == "inquiry" and inquiry["transfer_id"] == wid
    assert inquiry["transfer"]["destination"] == ADDRESS
    assert inquiry["ivms101"]["beneficiaryVASP"] is not None
    return wid


def test_trp_withdrawal_waits_for_the_counterparty_and_proceeds_on_approval(
    trp_app: Flask, erin: SignedClient, vasp: LocalVasp, clock: Any
) -> None:
    wid = _waiting(trp_app, erin, vasp, "trp-1")
    client = trp_app.test_client()
    r = vasp.answer(client, wid, "approved")
    assert r.status_code == 200, r.json
    assert r.json["inquiry"]["state"] == "approved" and r.json["inquiry"]["duplicate"] is False
    assert vasp.answer(client, wid, "approved").json["inquiry"]["duplicate"] is True  # replay: no change
    assert_error(vasp.answer(client, wid, "rejected"), 409, "travel_rule_inquiry_decided")
    released = trp_app.extensions["strongroom.access"].withdrawals.release_due()
    assert [w.state for w in released] == ["approved"]
    assert available(trp_app, erin.extra["account_id"])[1] == SMALL_BTC  # still held, now for sending
    assert _exchange(trp_app).notify(wid, "f" * 64) is True
    assert _exchange(trp_app).notify(wid, "f" * 64) is False  # once
    with vasp.lock:
        assert vasp.received[-1] == {"type": "notification", "transfer_id": wid, "txid": "f" * 64}
        assert vasp.bad_signatures == 0


def test_trp_rejection_stops_the_withdrawal_and_releases_the_hold(
    trp_app: Flask, erin: SignedClient, vasp: LocalVasp
) -> None:
    before = available(trp_app, erin.extra["account_id"])
    wid = _waiting(trp_app, erin, vasp, "trp-2")
    r = vasp.answer(trp_app.test_client(), wid, "rejected", "beneficiary unknown to us")
    assert r.status_code == 200 and r.json["inquiry"]["state"] == "rejected"
    assert _state(trp_app, wid) == "rejected"
    assert available(trp_app, erin.extra["account_id"]) == (before[0], 0)  # hold voided, nothing sent
    assert trp_app.extensions["strongroom.access"].withdrawals.release_due() == []
    assert _exchange(trp_app).notify(wid, "a" * 64) is False


def test_trp_unanswered_inquiry_expires_and_stops_the_withdrawal(
    trp_app: Flask, erin: SignedClient, vasp: LocalVasp, clock: Any
) -> None:
    wid = _waiting(trp_app, erin, vasp, "trp-3")
    assert _exchange(trp_app).expire_due() == []
    clock.advance(DAY_MS)
    assert _exchange(trp_app).expire_due() == [wid]
    assert _state(trp_app, wid) == "rejected"
    assert available(trp_app, erin.extra["account_id"])[1] == 0
    # A late approval changes nothing.
    assert_error(vasp.answer(trp_app.test_client(), wid, "approved"), 409, "travel_rule_inquiry_decided")


def test_trp_forged_or_misaddressed_callbacks_are_refused(
    trp_app: Flask, erin: SignedClient, vasp: LocalVasp
) -> None:
    wid = _waiting(trp_app, erin, vasp, "trp-4")
    client = trp_app.test_client()
    assert_error(vasp.answer(client, wid, "approved", secret=b"not the secret"), 401,
                 "travel_rule_signature_invalid")
    assert_error(vasp.answer(client, wid, "approved", lei="7LTWFZYICNSX8D621K86"), 401,
                 "travel_rule_signature_invalid")
    assert_error(vasp.answer(client, "no-such-transfer", "approved"), 404, "travel_rule_not_found")
    assert _exchange(trp_app).get(wid)["state"] == "pending" and _state(trp_app, wid) == "delayed"


def test_trp_unhosted_wallet_needs_an_attestation_and_does_not_wait(
    trp_app: Flask, erin: SignedClient, vasp: LocalVasp
) -> None:
    unhosted = copy.deepcopy(DATA)
    del unhosted["beneficiary_vasp"]
    body = assert_error(_withdraw(erin, "trp-5", unhosted), 400, "travel_rule_invalid")
    assert "unhosted_attestation" in body["message"]
    assert available(trp_app, erin.extra["account_id"])[1] == 0
    unhosted["unhosted_attestation"] = {"type": "declared",
                                        "statement": "I control this wallet; it is my own cold storage"}
    r = _withdraw(erin, "trp-6", unhosted)
    assert r.status_code == 201, r.json
    wid = r.json["withdrawal"]["id"] if "withdrawal" in r.json else r.json["id"]
    assert _state(trp_app, wid) == "approved" and _exchange(trp_app).get(wid) is None
    bad = copy.deepcopy(unhosted)
    bad["unhosted_attestation"]["type"] = "signed_message"
    assert_error(_withdraw(erin, "trp-7", bad), 400, "travel_rule_invalid")


def test_trp_unknown_counterparty_vasp_is_refused(trp_app: Flask, erin: SignedClient) -> None:
    data = copy.deepcopy(DATA)
    data["beneficiary_vasp"] = {"name": "Somewhere Else", "lei": "7LTWFZYICNSX8D621K86"}
    assert_error(_withdraw(erin, "trp-8", data), 400, "travel_rule_counterparty_unknown")
    assert available(trp_app, erin.extra["account_id"])[1] == 0




def test_trp_jobs_inquire_and_the_dispatcher_notifies_the_txid_exactly_once_after_a_retry(
    trp_app: Flask, erin: SignedClient, vasp: LocalVasp
) -> None:
    from custody.wallets.dispatch import WithdrawalDispatcher
    from custody.wallets.withdrawal_executor import TxStatus
    from strongroom.jobs import TRAVEL_RULE_INTERVAL_S, ledger_clock, server_jobs, travel_rule_exchange

    jobs = {job.name: job for job in server_jobs(trp_app)}
    assert jobs["travel_rule_exchange"].interval_s == TRAVEL_RULE_INTERVAL_S
    r = _withdraw(erin, "trp-job", DATA)
    assert r.status_code == 201, r.json
    wid = r.json["withdrawal"]["id"] if "withdrawal" in r.json else r.json["id"]
    assert jobs["travel_rule_exchange"].run() == {"sent": [wid], "expired": []}
    assert jobs["travel_rule_exchange"].run() == {"sent": [], "expired": []}  # sent once
    assert vasp.answer(trp_app.test_client(), wid, "approved").status_code == 200
    assert [w.state for w in jobs["withdrawal_release"].run()] == ["approved"]  # type: ignore[attr-defined]
    txid = "ab" * 32
    sent: list[str] = []

    class Executor:  # the real executors need a chain; this one broadcasts nothing, returns a txid
        def execute(self, withdrawal_id: str, *args: Any) -> Any:
            sent.append(withdrawal_id)
            return type("View", (), {"status": TxStatus.BROADCAST, "txid": txid})()

        def get(self, record_id: str) -> Any:
            return type("View", (), {"status": TxStatus.BROADCAST, "txid": txid})()

    exchange = travel_rule_exchange(trp_app)
    assert exchange is not None
    dispatcher = WithdrawalDispatcher(trp_app.extensions["strongroom.sessions"], Executor(),  # type: ignore[arg-type]
                                      ["BTC"], ledger_clock(trp_app), trp_app.extensions["strongroom.ledger"],
                                      on_sent=exchange.notify)
    with vasp.lock:
        # The counterparty is down when the transaction goes out (the dispatch and the in-flight
        # check of the same round both fail to notify).
        vasp.refuse_next = 2
    assert dispatcher.run().dispatched == [wid] and sent == [wid]
    assert _state(trp_app, wid) == "broadcasting"  # the failed notification did not hold it back
    assert _exchange(trp_app).get(wid)["txid"] is None
    dispatcher.run()  # in flight: the next round notifies again
    dispatcher.run()  # and the one after does not repeat it
    notifications = [m for m in vasp.received if m["type"] == "notification"]
    assert notifications == [{"type": "notification", "transfer_id": wid, "txid": txid}]
    assert _exchange(trp_app).get(wid)["txid"] == txid and sent == [wid]


def test_trp_notify_to_an_unreachable_vasp_returns_false_and_never_raises(
    trp_app: Flask, erin: SignedClient, vasp: LocalVasp
) -> None:
    wid = _waiting(trp_app, erin, vasp, "trp-down")
    assert vasp.answer(trp_app.test_client(), wid, "approved").status_code == 200
    vasp.close()  # nothing listens there any more
    assert _exchange(trp_app).notify(wid, "c" * 64) is False
    assert _exchange(trp_app).get(wid)["txid"] is None
