"""Nobody can take a name the platform's own ledger accounts are owned by."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from custody.access.errors import AccessError
from policies.roles import Role

from .helpers import SignedClient, access, assert_error

PLATFORM_NAMES = ["exchange", "exchange.clearing", "clearing", "insurance", "external", "platform",
                  "network-fees", "exchange-ops", "platform_hot", "clearing.house", "insurance.fund",
                  "system", "root", "strongroom-ops"]


@pytest.mark.parametrize("name", PLATFORM_NAMES)
def test_create_user_with_a_platform_name_is_refused(app: Flask, name: str) -> None:
    with pytest.raises(AccessError) as refused:
        access(app).users.create_user(name, frozenset({Role.TRADER}))
    assert refused.value.code.name == "USERNAME_INVALID"
    assert access(app).users.find_user(name) is None


@pytest.mark.parametrize("name", ["exchangefan", "alice.exchange", "treasury1", "clearwater", "root-admin"])
def test_create_user_whose_name_merely_contains_a_platform_word_is_allowed(app: Flask, name: str) -> None:
    user, _ = access(app).users.create_user(name, frozenset({Role.TRADER}))
    assert user.username == name


def test_admin_api_refuses_to_create_exchange_clearing(admins: list[SignedClient], app: Flask) -> None:
    body: dict[str, Any] = {"username": "exchange.clearing", "roles": ["trader"]}
    refused = assert_error(admins[0].post("/api/v1/users", json=body, mfa=True), 400, "username_invalid")
    assert "reserved" in refused["message"]
    assert access(app).users.find_user("exchange.clearing") is None
