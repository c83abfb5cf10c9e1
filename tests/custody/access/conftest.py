"""Fixtures for access-control tests: SQLite by default (the stores' contract tests in
test_stores.py run on both databases), users with keys, MFA and approver keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from custody.ledger.entry import AccountKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger
from policies.roles import Role

from ...conftest import fresh_database_url
from .helpers import SignedClient, make_user

FUNDED_BTC_MINOR = 10 * 10**8


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """API behaviour is database-independent; run it on SQLite only to keep the suite fast."""
    yield from fresh_database_url(request, "sqlite", tmp_path)


def fund(app: Flask, username: str, asset: str = "BTC", amount: int = FUNDED_BTC_MINOR) -> int:
    ledger: Ledger = app.extensions["strongroom.ledger"]
    hot = ledger.ensure_account("platform", asset, AccountKind.HOT_WALLET)
    account = ledger.ensure_account(username, asset, AccountKind.USER_AVAILABLE)
    ledger.transfer(
        TransferRequest(
            id=f"fund-{username}-{asset}", debit_account=hot.id, credit_account=account.id, amount=amount
        )
    )
    return account.id


@pytest.fixture
def alice(app: Flask, client: FlaskClient, clock: Any) -> SignedClient:
    signed = make_user(app, client, clock, "alice", {Role.TRADER}, kyc_tier=2)
    signed.extra["account_id"] = fund(app, "alice")
    return signed


@pytest.fixture
def bob(app: Flask, client: FlaskClient, clock: Any) -> SignedClient:
    signed = make_user(app, client, clock, "bob", {Role.TRADER}, kyc_tier=2)
    signed.extra["account_id"] = fund(app, "bob")
    return signed


@pytest.fixture
def treasury(app: Flask, client: FlaskClient, clock: Any) -> list[SignedClient]:
    return [make_user(app, client, clock, f"treasury{i}", {Role.TREASURY}, approver=True) for i in (1, 2, 3)]


@pytest.fixture
def admins(app: Flask, client: FlaskClient, clock: Any) -> list[SignedClient]:
    return [make_user(app, client, clock, f"admin{i}", {Role.ADMIN}, approver=True) for i in (1, 2, 3)]
