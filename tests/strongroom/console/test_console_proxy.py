"""Console logins behind a trusted proxy: the throttle and the security log see the real client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from custody import security_log
from strongroom.console.accounts import ConsoleAccounts
from tests.strongroom.console.conftest import CHEAP_HASHER, LOCAL, Person, csrf_of

PROXY = "10.0.0.1"


@pytest.fixture
def proxied_console(database_url: str, clock, keystore, tmp_path: Path) -> Iterator[Flask]:
    from exchange.instruments import DEFAULT_CONFIG
    from strongroom.app import create_app
    from strongroom.settings import Settings

    application = create_app({"TESTING": True, "CLOCK": clock, "KEYSTORE": keystore,
                              "EXCHANGE_INSTRUMENTS": DEFAULT_CONFIG, "TRUSTED_PROXY_HOPS": 1,
                              "CONSOLE_PASSWORD_HASHER": CHEAP_HASHER},
                             settings=Settings(data_dir=tmp_path / "data", database_url=database_url))
    yield application
    application.extensions["strongroom.engine"].dispose()


def _login_via_proxy(client: FlaskClient, person: Person, clock, forwarded_for: str, password: str):
    environ = {"REMOTE_ADDR": PROXY}
    headers = {"X-Forwarded-For": forwarded_for}
    page = client.get("/console/login", base_url=LOCAL, headers=headers, environ_base=environ)
    form = {"csrf_token": csrf_of(page.get_data(as_text=True)), "username": person.username,
            "password": password, "code": person.totp.at(clock() // 1000)}
    return client.post("/console/login", data=form, base_url=LOCAL, headers=headers, environ_base=environ)


@pytest.fixture
def alice(proxied_console: Flask, clock) -> Person:
    import pyotp

    from custody.access.users import parse_roles

    services = proxied_console.extensions["strongroom.access"]
    services.policies.ensure_default()
    services.users.create_user("alice", parse_roles(("trader",)), kyc_tier=2, actor="test")
    accounts = proxied_console.extensions["strongroom.console"]
    accounts.set_password("alice", "correct horse battery", actor="test")
    enrolment = services.mfa.enrol("alice")
    totp = pyotp.TOTP(enrolment.secret_base32)
    assert services.mfa.confirm("alice", totp.at(clock() // 1000 - 30)) is None
    return Person("alice", "correct horse battery", totp)


def test_console_login_behind_trusted_proxy_logs_and_throttles_the_forwarded_client(
    proxied_console: Flask, alice: Person, clock,
) -> None:
    accounts: ConsoleAccounts = proxied_console.extensions["strongroom.console"]
    accounts.ip_throttle._limit = 2
    client = proxied_console.test_client()
    for forged in ("203.0.113.1", "203.0.113.2"):  # what the attacker writes is ignored
        refused = _login_via_proxy(client, alice, clock, f"{forged}, 198.51.100.1", "wrong password guess")
        assert refused.status_code == 401
    blocked = _login_via_proxy(client, alice, clock, "198.51.100.1", alice.password)
    assert blocked.status_code == 401 and "too many failed logins" in blocked.get_data(as_text=True)
    # Another client behind the same proxy is not locked out by the first one's failures.
    assert _login_via_proxy(client, alice, clock, "198.51.100.2", alice.password).status_code == 303
    with proxied_console.extensions["strongroom.sessions"]() as session:
        events = [e for e in security_log.page(session) if e.action == "console.login"]
    assert [(e.outcome, e.details["ip"]) for e in events] == [
        ("refused", "198.51.100.1"), ("refused", "198.51.100.1"), ("ok", "198.51.100.2")]
