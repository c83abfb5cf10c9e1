"""Shared fixtures: a fresh database per test on SQLite and PostgreSQL, app, client, runner.

PostgreSQL tests need ``STRONGROOM_TEST_POSTGRES_URL`` (``make test`` starts a
throwaway server and sets it). Without it they are skipped with the reason
shown, unless ``STRONGROOM_REQUIRE_POSTGRES=1`` (CI), where that is an error.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from custody.db import make_engine, make_session_factory, scratch_postgres_database
from custody.keystore import LocalKeystore
from custody.ledger.service import Ledger
from strongroom.migrate import upgrade

# Property tests judge behaviour, never wall-clock time: on a loaded 2-core CI machine a
# per-example deadline or the "too slow" health check would fail a correct test.
hypothesis.settings.register_profile("strongroom", deadline=None,
                                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.load_profile("strongroom")

POSTGRES_ENV = "STRONGROOM_TEST_POSTGRES_URL"
DATABASES = ["sqlite", "postgres"]
TEST_SCRYPT_LOG2_N = 10


class FakeClock:
    """A settable millisecond clock, so time-dependent behaviour is deterministic."""

    def __init__(self, now_ms: int = 1_767_225_600_000) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms


def _postgres_admin_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        if os.environ.get("STRONGROOM_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{POSTGRES_ENV} is not set but STRONGROOM_REQUIRE_POSTGRES=1")
        pytest.skip(f"PostgreSQL not configured: set {POSTGRES_ENV} (make test does)")
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per session; tests copy it."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A PostgreSQL template database migrated to head once per session (per xdist worker)."""
    name = f"sr_template_{_worker()}_{uuid.uuid4().hex[:8]}".lower()
    with scratch_postgres_database(_postgres_admin_url(), name) as url:
        upgrade(url)
        yield name


def fresh_database_url(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> Iterator[str]:
    """Yield the URL of a new, migrated, empty database of ``kind``; drop it afterwards."""
    if kind == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "strongroom.db"
        shutil.copyfile(template, path)
        yield f"sqlite:///{path}"
        return
    template_name: str = request.getfixturevalue("postgres_template")
    name = f"sr_test_{uuid.uuid4().hex[:12]}"
    with scratch_postgres_database(_postgres_admin_url(), name, template_name) as url:
        yield url


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh migrated database, once on SQLite and once on PostgreSQL."""
    yield from fresh_database_url(request, request.param, tmp_path)


@pytest.fixture
def sqlite_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh migrated SQLite database (for tests that are about SQLite itself)."""
    yield from fresh_database_url(request, "sqlite", tmp_path)


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh migrated PostgreSQL database (for PostgreSQL-only behaviour)."""
    yield from fresh_database_url(request, "postgres", tmp_path)


@pytest.fixture
def clock() -> FakeClock:
    """A deterministic clock starting at 2026-01-01T00:00:00Z."""
    return FakeClock()


@pytest.fixture
def ledger(database_url: str, clock: FakeClock) -> Iterator[Ledger]:
    """A ledger on a fresh database (parametrised over SQLite and PostgreSQL)."""
    engine = make_engine(database_url)
    yield Ledger(make_session_factory(engine), clock=clock)
    engine.dispose()


@pytest.fixture
def keystore(tmp_path: Path) -> LocalKeystore:
    """A local keystore in a temp dir, with cheap scrypt parameters (tests only)."""
    return LocalKeystore(tmp_path / "keystore.srks", "test passphrase, not a secret",
                         scrypt_log2_n=TEST_SCRYPT_LOG2_N)


@pytest.fixture
def app(database_url: str, clock: FakeClock, keystore: LocalKeystore, tmp_path: Path) -> Iterator[Flask]:
    """The Flask app on a fresh database with a test keystore."""
    from strongroom.app import create_app
    from strongroom.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    from exchange.instruments import DEFAULT_CONFIG

    # The fixed reference instruments (expiry 2026-03-27), not the server's calendar market.
    application = create_app({"TESTING": True, "CLOCK": clock, "KEYSTORE": keystore,
                              "EXCHANGE_INSTRUMENTS": DEFAULT_CONFIG}, settings=settings)
    yield application
    application.extensions["strongroom.engine"].dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client for ``app``."""
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    """A CLI runner for ``app``."""
    return app.test_cli_runner()
