"""Console login and session: argon2id, TOTP, throttling, idle timeout, cookies, CSRF, CSP, roles."""

from __future__ import annotations

from sqlalchemy import select

from custody.api.openapi import build_openapi
from strongroom.console.accounts import LOGIN_LOCK_MS, MAX_FAILED_LOGINS, ConsoleAccounts
from strongroom.console.models import ConsoleCredential, ConsoleSession
from strongroom.console.web import COOKIE_DEV, COOKIE_SECURE
from tests.strongroom.console.conftest import LOCAL, PASSWORD, csrf_of, logged_in, login


def test_login_password_and_totp_opens_session_with_strict_httponly_cookie(console_app, people, clock):
    client = console_app.test_client()
    response = login(client, people["alice"], clock)
    assert response.status_code == 303 and response.headers["Location"] == "/console/"
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith(COOKIE_DEV + "="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain-http loopback development only
    assert client.get("/console/trade", base_url=LOCAL).status_code == 200


def test_login_over_https_sets_secure_host_prefixed_cookie(console_app, people, clock):
    client = console_app.test_client()
    response = login(client, people["alice"], clock, base_url="https://console.example")
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith(COOKIE_SECURE + "="))
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/console/trade", base_url="https://console.example").status_code == 200


def test_login_plain_http_to_public_host_still_marks_cookie_secure(console_app, people, clock):
    response = login(console_app.test_client(), people["alice"], clock, base_url="http://console.example")
    assert any(c.startswith(COOKIE_SECURE + "=") and "Secure" in c
               for c in response.headers.getlist("Set-Cookie"))


def test_login_wrong_password_refused_with_the_same_words_as_unknown_user(console_app, people, clock):
    client = console_app.test_client()
    wrong = login(client, people["alice"], clock, password="not the password at all")
    unknown = client.post("/console/login", base_url=LOCAL, data={
        "csrf_token": csrf_of(client.get("/console/login", base_url=LOCAL).get_data(as_text=True)),
        "username": "nobody", "password": PASSWORD, "code": "123456"})
    assert wrong.status_code == unknown.status_code == 401
    assert "wrong username, password or code" in wrong.get_data(as_text=True)
    assert "wrong username, password or code" in unknown.get_data(as_text=True)
    assert not any(c.startswith(COOKIE_DEV + "=") for c in wrong.headers.getlist("Set-Cookie"))


def test_login_right_password_wrong_code_refused(console_app, people, clock):
    response = login(console_app.test_client(), people["alice"], clock, code="000000")
    assert response.status_code == 401


def test_login_totp_code_used_once(console_app, people, clock):
    code = people["alice"].totp.at(clock() // 1000)
    assert login(console_app.test_client(), people["alice"], clock, code=code).status_code == 303
    assert login(console_app.test_client(), people["alice"], clock, code=code).status_code == 401


def test_login_after_repeated_failures_locked_even_with_right_credentials(console_app, people, clock):
    client = console_app.test_client()
    for _ in range(MAX_FAILED_LOGINS):
        assert login(client, people["alice"], clock, password="wrong password guess").status_code == 401
    locked = login(client, people["alice"], clock)
    assert locked.status_code == 401 and "too many failed logins" in locked.get_data(as_text=True)
    clock.advance(LOGIN_LOCK_MS + 1)
    assert login(client, people["alice"], clock).status_code == 303


def test_login_from_one_address_throttled_across_usernames(console_app, people, clock):
    accounts: ConsoleAccounts = console_app.extensions["strongroom.console"]
    accounts.ip_throttle._limit = 3
    client = console_app.test_client()
    for name in ("alice", "admin", "auditor"):
        assert login(client, people[name], clock, password="wrong password guess").status_code == 401
    blocked = login(client, people["treasury1"], clock)
    assert blocked.status_code == 401 and "too many failed logins" in blocked.get_data(as_text=True)


def test_password_stored_only_as_argon2id_hash(console_app, people):
    with console_app.extensions["strongroom.access"].sessions() as session:
        row = session.get(ConsoleCredential, "alice")
    assert row is not None and row.password_hash.startswith("$argon2id$")
    assert PASSWORD not in row.password_hash


def test_default_password_hasher_is_argon2id_rfc9106_profile(console_app, people):
    access = console_app.extensions["strongroom.access"]
    accounts = ConsoleAccounts(access.sessions, access.mfa, access.clock)
    accounts.set_password("alice", "another long password", actor="test")
    with access.sessions() as session:
        row = session.get(ConsoleCredential, "alice")
    assert row is not None and row.password_hash.startswith("$argon2id$v=19$m=65536,t=3,p=4$")


def test_session_stored_as_token_hash_never_the_token(console_app, people, clock):
    client = console_app.test_client()
    response = login(client, people["alice"], clock)
    token = next(c for c in response.headers.getlist("Set-Cookie")
                 if c.startswith(COOKIE_DEV + "=")).split(";")[0].split("=", 1)[1]
    with console_app.extensions["strongroom.access"].sessions() as session:
        stored = session.scalars(select(ConsoleSession.token_sha256)).all()
    assert token not in stored and len(stored) == 1 and len(stored[0]) == 64


def test_session_idle_past_timeout_logged_out(console_app, people, clock):
    client = logged_in(console_app, people["alice"], clock)
    idle_ms = console_app.extensions["strongroom.console"].idle_timeout_ms
    clock.advance(idle_ms - 1000)
    assert client.get("/console/trade", base_url=LOCAL).status_code == 200  # activity moves the deadline
    clock.advance(idle_ms - 1000)
    assert client.get("/console/trade", base_url=LOCAL).status_code == 200
    clock.advance(idle_ms + 1)
    response = client.get("/console/trade", base_url=LOCAL)
    assert response.status_code == 302 and "/console/login" in response.headers["Location"]


def test_logout_ends_session(console_app, people, clock):
    client = logged_in(console_app, people["alice"], clock)
    page = client.get("/console/trade", base_url=LOCAL).get_data(as_text=True)
    response = client.post("/console/logout", base_url=LOCAL, data={"csrf_token": csrf_of(page)})
    assert response.status_code == 303
    assert client.get("/console/trade", base_url=LOCAL).status_code == 302


def test_post_without_csrf_token_refused(console_app, people, clock):
    client = logged_in(console_app, people["alice"], clock)
    response = client.post("/console/trade/orders", base_url=LOCAL, data={
        "symbol": "BTC-PERP", "id": "x1", "side": "buy", "type": "limit", "qty": "1", "price": "50000"})
    assert response.status_code == 403 and "CSRF" in response.get_data(as_text=True)
    wrong = client.post("/console/trade/orders", base_url=LOCAL, data={"csrf_token": "0" * 64})
    assert wrong.status_code == 403


def test_login_post_without_csrf_token_refused(console_app, people, clock):
    response = console_app.test_client().post("/console/login", base_url=LOCAL, data={
        "username": "alice", "password": PASSWORD, "code": people["alice"].totp.at(clock() // 1000)})
    assert response.status_code == 403


def test_cross_origin_post_refused_even_with_token(console_app, people, clock):
    client = logged_in(console_app, people["alice"], clock)
    token = csrf_of(client.get("/console/trade", base_url=LOCAL).get_data(as_text=True))
    response = client.post("/console/logout", base_url=LOCAL, data={"csrf_token": token},
                           headers={"Origin": "https://evil.example"})
    assert response.status_code == 403


def test_console_pages_carry_strict_content_security_policy(console_app, people, clock):
    client = logged_in(console_app, people["alice"], clock)
    for path in ("/console/login", "/console/trade", "/console/wallet"):
        headers = client.get(path, base_url=LOCAL).headers
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
        assert "frame-ancestors 'none'" in csp and headers["X-Frame-Options"] == "DENY"
        assert headers["Cache-Control"] == "no-store"


def test_each_role_reaches_only_its_pages(console_app, people, clock):
    allowed = {"alice": {"trade", "wallet"}, "treasury1": {"treasury"},
               "auditor": {"audit"}, "admin": {"admin", "audit"}}
    for name, pages in allowed.items():
        client = logged_in(console_app, people[name], clock)
        for page in ("trade", "wallet", "treasury", "audit", "admin"):
            status = client.get(f"/console/{page}", base_url=LOCAL).status_code
            assert status == (200 if page in pages else 403), (name, page, status)


def test_disabled_user_session_ends(console_app, people, clock):
    client = logged_in(console_app, people["alice"], clock)
    console_app.extensions["strongroom.access"].users.set_disabled("alice", True, actor="admin")
    assert client.get("/console/trade", base_url=LOCAL).status_code == 302


def test_console_routes_not_in_openapi_document(console_app):
    paths = build_openapi(console_app)["paths"]
    assert paths and all(p.startswith("/api/v1") for p in paths)


def test_csp_allows_only_this_servers_stream_endpoint_besides_self(console_app, people, clock):
    console_app.config["STREAM_PORT"] = 8601
    client = logged_in(console_app, people["alice"], clock)
    response = client.get("/console/trade", base_url=LOCAL)
    assert "connect-src 'self' ws://127.0.0.1:8601/;" in response.headers["Content-Security-Policy"]
    assert 'data-stream="ws://127.0.0.1:8601/"' in response.get_data(as_text=True)


def test_action_of_another_role_refused_and_changes_nothing(console_app, people, clock):
    client = logged_in(console_app, people["alice"], clock)
    token = csrf_of(client.get("/console/trade", base_url=LOCAL).get_data(as_text=True))
    response = client.post("/console/admin/users/auditor/disable", base_url=LOCAL,
                           data={"csrf_token": token, "code": people["alice"].totp.at(clock() // 1000 + 30)})
    assert response.status_code == 403
    assert console_app.extensions["strongroom.access"].users.get_user("auditor").disabled_ms is None


def test_admin_action_still_needs_the_apis_step_up_code(console_app, people, clock):
    client = logged_in(console_app, people["admin"], clock)
    token = csrf_of(client.get("/console/admin", base_url=LOCAL).get_data(as_text=True))
    response = client.post("/console/admin/users/auditor/disable", base_url=LOCAL,
                           data={"csrf_token": token, "code": ""})
    assert response.status_code == 303
    page = client.get("/console/admin", base_url=LOCAL).get_data(as_text=True)
    assert "mfa_required" in page
    assert console_app.extensions["strongroom.access"].users.get_user("auditor").disabled_ms is None
