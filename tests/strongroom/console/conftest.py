"""Fixtures for the console: an app with a cheap argon2 profile, people with passwords and TOTP."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyotp
import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient

from custody.access.users import parse_roles
from custody.api.services import AccessServices
from custody.keystore.local import LocalKeystore

LOCAL = "http://127.0.0.1:8600"
# Tests only: a cheap argon2id profile (the console's default is RFC 9106's, checked separately).
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PEOPLE = {"alice": ("trader",), "treasury1": ("treasury",), "auditor": ("auditor",), "admin": ("admin",)}
PASSWORD = "correct horse battery staple"


@dataclass
class Person:
    username: str
    password: str
    totp: pyotp.TOTP


@pytest.fixture
def console_app(database_url: str, clock, keystore: LocalKeystore, tmp_path: Path) -> Iterator[Flask]:
    from exchange.instruments import DEFAULT_CONFIG
    from strongroom.app import create_app
    from strongroom.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    application = create_app({"TESTING": True, "CLOCK": clock, "KEYSTORE": keystore,
                              "EXCHANGE_INSTRUMENTS": DEFAULT_CONFIG,
                              "CONSOLE_PASSWORD_HASHER": CHEAP_HASHER},
                             settings=settings)
    yield application
    application.extensions["strongroom.engine"].dispose()


@pytest.fixture
def people(console_app: Flask, clock) -> dict[str, Person]:
    """Every role's person, with a console password and a confirmed authenticator (step -1 used)."""
    services: AccessServices = console_app.extensions["strongroom.access"]
    accounts = console_app.extensions["strongroom.console"]
    services.policies.ensure_default()
    found = {}
    for username, roles in PEOPLE.items():
        services.users.create_user(username, parse_roles(roles), kyc_tier=2, actor="test")
        accounts.set_password(username, PASSWORD, actor="test")
        enrolment = services.mfa.enrol(username)
        totp = pyotp.TOTP(enrolment.secret_base32)
        assert services.mfa.confirm(username, totp.at(clock() // 1000 - 30)) is None
        found[username] = Person(username, PASSWORD, totp)
    return found


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "page has no CSRF token"
    return match.group(1)


def login(client: FlaskClient, person: Person, clock, *, code: str | None = None,
          password: str | None = None, base_url: str = LOCAL):
    page = client.get("/console/login", base_url=base_url)
    form = {"csrf_token": csrf_of(page.get_data(as_text=True)), "username": person.username,
            "password": person.password if password is None else password,
            "code": person.totp.at(clock() // 1000) if code is None else code}
    return client.post("/console/login", data=form, base_url=base_url)


def logged_in(console_app: Flask, person: Person, clock) -> FlaskClient:
    client = console_app.test_client()
    response = login(client, person, clock)
    assert response.status_code == 303, response.get_data(as_text=True)
    return client
