"""Fixtures for compliance tests: the fabricated fixture sanctions list, funded traders, officers.

These run on both databases (the root ``database_url`` fixture); only the
pure parser tests need no database at all.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from custody.api.services import AccessServices
from policies.roles import Role

from ..access.conftest import fund
from ..access.helpers import SignedClient, make_user

FIXTURE_DIR = Path(__file__).resolve().parents[3] / "custody" / "compliance" / "data" / "fixture_sdn"
# Addresses of the fabricated fixture entries (custody/compliance/data/fixture_sdn/sdn.csv).
LISTED_BTC = "bc1qfixturesanctioned0btc0000000000000000"  # ent_num 90001
LISTED_ETH_EIP55 = "0x7f1a5E0f1A5e0F1a5e0F1A5e0F1A5E0F1A5eab01"  # ent_num 90001
LISTED_USDT_EVM = "0x00000000000000000000000000000000000DEaD1"  # ent_num 90002 (listed as USDT)
LISTED_BASE58 = "1FixtureBase58AddrNotReaL0000000"  # ent_num 90003, in sdn_comments.csv


def services(app: Flask) -> AccessServices:
    found: AccessServices = app.extensions["strongroom.access"]
    return found


def list_copy(tmp_path: Path, name: str = "list") -> Path:
    """Copy the fixture list into a fresh directory a test may edit."""
    target = tmp_path / name
    shutil.copytree(FIXTURE_DIR, target)
    return target


def add_sdn_row(directory: Path, row: str) -> None:
    with (directory / "sdn.csv").open("a", encoding="utf-8") as handle:
        handle.write(row.rstrip("\n") + "\n")


@pytest.fixture
def alice(app: Flask, client: FlaskClient, clock: Any) -> SignedClient:
    signed = make_user(app, client, clock, "alice", {Role.TRADER}, kyc_tier=2)
    signed.extra["account_id"] = fund(app, "alice")
    return signed


@pytest.fixture
def officer(app: Flask, client: FlaskClient, clock: Any) -> SignedClient:
    return make_user(app, client, clock, "officer1", {Role.COMPLIANCE})


@pytest.fixture
def loaded(app: Flask) -> int:
    """Load the fixture list; return its version."""
    return services(app).screening.load_directory(FIXTURE_DIR, actor="test").version
