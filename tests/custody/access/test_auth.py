"""Request authentication over HTTP: every refusal path has its status and stable code."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from custody import security_log
from policies.api_key import Scope
from policies.mfa import LOCKOUT_MS, MAX_CONSECUTIVE_FAILURES
from policies.roles import Role

from .helpers import STEP_MS, SignedClient, access, assert_error, make_user

ME = "/api/v1/me"


def test_signed_request_is_accepted_and_identifies_the_caller(alice: SignedClient) -> None:
    response = alice.get(ME)
    assert response.status_code == 200, response.json
    assert response.json["user"]["username"] == "alice"
    assert response.json["mfa_enrolled"] is True


def test_unsigned_request_is_401_headers_malformed(client: FlaskClient) -> None:
    assert_error(client.get(ME), 401, "auth_headers_malformed")


def test_unknown_key_is_401(alice: SignedClient) -> None:
    alice.key_id = "srk_doesnotexist"
    assert_error(alice.get(ME), 401, "api_key_unknown")


def test_wrong_secret_is_401_signature_invalid(alice: SignedClient) -> None:
    assert_error(alice.get(ME, secret="srs_wrong"), 401, "signature_invalid")


def test_tampered_body_is_401_signature_invalid(alice: SignedClient, app: Flask) -> None:
    from policies.request_signing import sign_request

    body = b'{"asset":"BTC","address":"bc1qaaa"}'
    headers = sign_request(
        key_id=alice.key_id,
        secret=alice.secret,
        timestamp_ms=alice.clock.now_ms,
        method="POST",
        path="/api/v1/whitelist",
        body=body,
    )
    response = alice.client.post(
        "/api/v1/whitelist",
        data=body.replace(b"aaa", b"bbb"),
        content_type="application/json",
        headers=headers,
    )
    assert_error(response, 401, "signature_invalid")
    assert access(app).withdrawals.list_whitelist("alice") == []


@pytest.mark.parametrize(("skew_ms", "error"), [(-5_001, "timestamp_stale"), (5_001, "timestamp_in_future")])
def test_clock_skew_beyond_window_is_401(alice: SignedClient, skew_ms: int, error: str) -> None:
    assert_error(alice.get(ME, timestamp_ms=alice.clock.now_ms + 1 + skew_ms), 401, error)


def test_request_outside_window_refused_before_key_lookup_without_security_log_row(
        alice: SignedClient, app: Flask) -> None:
    """Requests that queued past the window (overload) or old replays cost no key lookup."""
    from sqlalchemy import event

    from custody.security_log import SecurityEvent

    engine = app.extensions["strongroom.sessions"].kw["bind"]  # the app's database
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    with app.extensions["strongroom.sessions"].begin() as session:
        before = session.query(SecurityEvent).count()
    event.listen(engine, "before_cursor_execute", count)
    try:
        assert_error(alice.get(ME, timestamp_ms=alice.clock.now_ms - 60_000), 401, "timestamp_stale")
        alice.key_id = "srk_doesnotexist"  # stale and unknown: stale wins, key existence not told
        assert_error(alice.get(ME, timestamp_ms=alice.clock.now_ms - 60_000), 401, "timestamp_stale")
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert statements == []
    with app.extensions["strongroom.sessions"].begin() as session:
        assert session.query(SecurityEvent).count() == before


def test_skew_within_window_is_accepted(alice: SignedClient) -> None:
    assert alice.get(ME, timestamp_ms=alice.clock.now_ms - 4_000).status_code == 200


def test_replayed_request_is_401(alice: SignedClient) -> None:
    from policies.request_signing import sign_request

    headers = sign_request(
        key_id=alice.key_id, secret=alice.secret, timestamp_ms=alice.clock.now_ms, method="GET", path=ME
    )
    assert alice.client.get(ME, headers=headers).status_code == 200
    assert_error(alice.client.get(ME, headers=headers), 401, "request_replayed")


def test_revoked_key_is_401(alice: SignedClient, app: Flask) -> None:
    access(app).users.revoke_api_key("alice", alice.key_id, actor="test")
    assert_error(alice.get(ME), 401, "api_key_revoked")


def test_expired_key_is_401(app: Flask, client: FlaskClient, clock: Any) -> None:
    signed = make_user(app, client, clock, "carol", {Role.TRADER}, mfa=False)
    key = access(app).users.create_api_key("carol", frozenset({Scope.READ}), expires_ms=clock.now_ms + 60_000)
    signed.key_id, signed.secret = key.credentials.key_id, key.credentials.secret
    assert signed.get(ME).status_code == 200
    clock.advance(60_000)
    assert_error(signed.get(ME), 401, "api_key_expired")


def test_ip_allowlist_is_403_outside_it(app: Flask, client: FlaskClient, clock: Any) -> None:
    signed = make_user(app, client, clock, "carol", {Role.TRADER}, mfa=False)
    key = access(app).users.create_api_key("carol", frozenset({Scope.READ}), ip_allowlist=["10.0.0.0/8"])
    signed.key_id, signed.secret = key.credentials.key_id, key.credentials.secret
    assert signed.get(ME, remote_addr="10.1.2.3").status_code == 200
    assert_error(signed.get(ME, remote_addr="192.0.2.1"), 403, "ip_not_allowed")


def test_missing_scope_is_403(app: Flask, client: FlaskClient, clock: Any) -> None:
    signed = make_user(app, client, clock, "carol", {Role.TRADER}, scopes=frozenset({Scope.READ}))
    assert_error(
        signed.post("/api/v1/whitelist", json={"asset": "BTC", "address": "bc1q"}, mfa=True),
        403,
        "scope_missing",
    )


def test_disabled_user_is_401(alice: SignedClient, app: Flask) -> None:
    access(app).users.set_disabled("alice", True, actor="test")
    assert_error(alice.get(ME), 401, "user_disabled")


def test_role_without_permission_is_403(alice: SignedClient) -> None:
    assert_error(alice.get("/api/v1/users"), 403, "permission_denied")


def test_mfa_missing_is_401_and_wrong_code_is_401(alice: SignedClient) -> None:
    body = {"asset": "BTC", "address": "bc1qdest"}
    assert_error(alice.post("/api/v1/whitelist", json=body), 401, "mfa_required")
    assert_error(alice.post("/api/v1/whitelist", json=body, mfa_code="000000"), 401, "mfa_invalid")


def test_mfa_code_cannot_be_reused(alice: SignedClient) -> None:
    code = alice.next_code()
    assert (
        alice.post("/api/v1/whitelist", json={"asset": "BTC", "address": "a1"}, mfa_code=code).status_code
        == 201
    )
    assert_error(
        alice.post("/api/v1/whitelist", json={"asset": "BTC", "address": "a2"}, mfa_code=code),
        401,
        "mfa_code_reused",
    )


def test_mfa_lockout_after_repeated_failures_then_recovers(alice: SignedClient) -> None:
    body = {"asset": "BTC", "address": "bc1qdest"}
    for _ in range(MAX_CONSECUTIVE_FAILURES - 1):
        assert_error(alice.post("/api/v1/whitelist", json=body, mfa_code="000000"), 401, "mfa_invalid")
    assert_error(alice.post("/api/v1/whitelist", json=body, mfa_code="000000"), 429, "mfa_locked_out")
    assert_error(alice.post("/api/v1/whitelist", json=body, mfa=True), 429, "mfa_locked_out")
    alice.clock.advance(LOCKOUT_MS)
    assert alice.post("/api/v1/whitelist", json=body, mfa=True).status_code == 201


def test_mfa_not_enrolled_is_403(app: Flask, client: FlaskClient, clock: Any) -> None:
    signed = make_user(app, client, clock, "carol", {Role.TRADER}, mfa=False)
    response = signed.post("/api/v1/whitelist", json={"asset": "BTC", "address": "x"}, mfa_code="123456")
    assert_error(response, 403, "mfa_not_enrolled")


def test_mfa_enrolment_over_the_api(app: Flask, client: FlaskClient, clock: Any) -> None:
    from policies.mfa import totp_code

    signed = make_user(app, client, clock, "carol", {Role.TRADER}, mfa=False)
    enrolment = signed.post("/api/v1/mfa/enrol")
    assert enrolment.status_code == 201
    secret = enrolment.json["secret"]
    assert enrolment.json["otpauth_uri"].startswith("otpauth://totp/")
    assert_error(signed.post("/api/v1/mfa/confirm", json={"code": "000000"}), 401, "mfa_invalid")
    clock.advance(STEP_MS)
    assert (
        signed.post("/api/v1/mfa/confirm", json={"code": totp_code(secret, clock.now_ms)}).status_code == 200
    )
    assert_error(signed.post("/api/v1/mfa/enrol"), 409, "mfa_already_enrolled")


def test_refusals_of_known_keys_are_in_the_security_log(alice: SignedClient, app: Flask) -> None:
    alice.get(ME, secret="srs_wrong")
    with access(app).sessions() as session:
        events = security_log.page(session, limit=1000)
    refused = [e for e in events if e.action == "auth.refused"]
    assert refused and refused[-1].outcome == "signature_invalid" and refused[-1].actor == "alice"


@pytest.mark.parametrize("expires", ["past", "now"])
def test_create_api_key_with_expiry_not_in_the_future_is_400_and_creates_nothing(
    alice: SignedClient, app: Flask, clock: Any, expires: str
) -> None:
    expires_ms = clock.now_ms - 1 if expires == "past" else clock.now_ms
    before = access(app).users.list_api_keys("alice")
    refused = alice.post("/api/v1/api-keys", json={"scopes": ["read"], "expires_ms": expires_ms}, mfa=True)
    body = assert_error(refused, 400, "api_key_invalid")
    assert body["code"] == 1015 and "expires_at_ms" in body["message"]
    assert access(app).users.list_api_keys("alice") == before
