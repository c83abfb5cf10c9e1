"""No request can crash the server, and every failure of a dependency is a 503 with a reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from custody.api.body import MAX_JSON_DEPTH, SANE_RECURSION_LIMIT
from custody.keystore import KeystoreError, KeystoreErrorCode, LocalKeystore
from policies.request_signing import sign_request
from policies.roles import Role
from strongroom.app import create_app
from strongroom.keystores import LazyKeystore
from strongroom.settings import Settings

from ...conftest import TEST_SCRYPT_LOG2_N, fresh_database_url
from ..access.helpers import SignedClient, assert_error, make_user

REPO = Path(__file__).resolve().parents[3]
DEEP = 100_000


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from fresh_database_url(request, "sqlite", tmp_path)


@pytest.fixture
def ops(app: Flask, client: FlaskClient, clock: Any) -> SignedClient:
    return make_user(app, client, clock, "ops", {Role.ADMIN, Role.AUDITOR, Role.TREASURY})


@pytest.fixture
def trader(app: Flask, client: FlaskClient, clock: Any) -> SignedClient:
    return make_user(app, client, clock, "alice", {Role.TRADER})


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# -- hostile bodies ---------------------------------------------------------------------------


def test_deep_json_body_signed_request_is_refused_with_json_too_deep(
    trader: SignedClient, client: FlaskClient
) -> None:
    refused = trader.post("/api/v1/whitelist", data=_deep(DEEP), content_type="application/json", mfa=True)
    assert_error(refused, 400, "json_too_deep")
    nested = {"asset": "BTC", "address": "x", "label": json.loads(_deep(MAX_JSON_DEPTH + 1))}
    assert_error(trader.post("/api/v1/whitelist", json=nested, mfa=True), 400, "json_too_deep")
    assert client.get("/api/v1/health").status_code == 200


def test_json_within_the_depth_limit_reaches_the_view(trader: SignedClient) -> None:
    body = {"asset": "BTC", "address": "bc1qdepth", "label": "ok"}
    assert trader.post("/api/v1/whitelist", json=body, mfa=True).status_code == 201
    # A bracket inside a string does not count as nesting.
    body = {"asset": "BTC", "address": "bc1qdepth2", "label": "[" * 100}
    assert trader.post("/api/v1/whitelist", json=body, mfa=True).status_code == 201


def test_recursion_limit_raised_by_a_dependency_is_reset_by_the_app(client: FlaskClient) -> None:
    import py_ecc  # noqa: F401 (raises the limit to 100,000 at import)

    sys.setrecursionlimit(100_000)
    assert client.get("/api/v1/health").status_code == 200
    assert sys.getrecursionlimit() == SANE_RECURSION_LIMIT


SERVER_SCRIPT = textwrap.dedent("""
    import sys, threading
    import py_ecc  # what made the parser overrun the C stack: the limit goes to 100,000
    from pathlib import Path
    from werkzeug.serving import make_server
    from custody.keystore import LocalKeystore
    from strongroom.app import create_app
    from strongroom.migrate import upgrade
    from strongroom.settings import Settings
    data = Path(sys.argv[1])
    url = f"sqlite:///{data / 'strongroom.db'}"
    upgrade(url)
    keystore = LocalKeystore(data / "keystore.srks", "test passphrase", scrypt_log2_n=10)
    app = create_app({"KEYSTORE": keystore}, settings=Settings(data_dir=data, database_url=url))
    from policies.roles import Role
    from policies.api_key import Scope
    _, key = app.extensions["strongroom.access"].users.create_user(
        "alice", frozenset({Role.TRADER}), key_scopes=frozenset(Scope))
    sys.setrecursionlimit(100_000)  # as if a dependency were imported after start-up
    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(server.server_port, key.credentials.key_id, key.credentials.secret, flush=True)
    server.serve_forever()
""")


def test_server_stays_up_after_a_100000_deep_json_request(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        port, key_id, secret = server.stdout.readline().split()
        base = f"http://127.0.0.1:{port}"
        for path in ("/api/v1/withdrawals", "/api/v1/exchange/orders", "/api/v1/ledger/transfers"):
            # Signed by a real key, as an attacker with any trade-scoped key would.
            headers = sign_request(key_id=key_id, secret=secret, timestamp_ms=time.time_ns() // 1_000_000,
                                   method="POST", path=path, query="", body=_deep(DEEP))
            request = urllib.request.Request(base + path, data=_deep(DEEP), method="POST",
                                             headers={**headers, "Content-Type": "application/json",
                                                      "Idempotency-Key": "deep-1"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            assert refused.value.code == 400
            assert json.loads(refused.value.read())["error"] == "json_too_deep"
        with urllib.request.urlopen(base + "/api/v1/health", timeout=30) as health:
            assert health.status == 200
        assert server.poll() is None
    finally:
        server.kill()
        server.wait(10)


def test_duplicate_json_keys_are_refused(trader: SignedClient) -> None:
    body = b'{"asset": "BTC", "address": "bc1qfirst", "address": "bc1qsecond"}'
    refused = assert_error(trader.post("/api/v1/whitelist", data=body, content_type="application/json",
                                    mfa=True), 400, "invalid_json")
    assert "duplicate key 'address'" in refused["message"]
    assert trader.get("/api/v1/whitelist").json["entries"] == []


def test_error_messages_cut_echoed_input(trader: SignedClient) -> None:
    huge = "x" * 100_000
    for body in ({"asset": "BTC", "address": 7, "label": 5, huge: 1},
                 {"asset": "BTC", "address": [huge]},
                 {"asset": "BTC", "address": "a" * 1000}):
        refused = trader.post("/api/v1/whitelist", json=body, mfa=True)
        assert refused.status_code == 400
        assert len(refused.json["message"]) <= 512, len(refused.json["message"])
    refused = trader.post("/api/v1/withdrawals", json={"asset": "BTC", "amount": "9" * 5000,
                                                    "destination": "bc1q"}, mfa=True,
                       idempotency_key="huge-amount")
    assert refused.status_code == 400 and len(refused.json["message"]) <= 512


def test_successful_responses_carry_no_retry_after(ops: SignedClient, client: FlaskClient) -> None:
    for response in (client.get("/api/v1/health"), ops.get("/api/v1/me")):
        assert response.status_code == 200
        assert "Retry-After" not in response.headers
        assert "X-RateLimit-Limit" in response.headers


def test_unknown_chain_name_is_a_400_and_a_known_unconfigured_one_a_503(ops: SignedClient) -> None:
    assert_error(ops.get("/api/v1/wallets/reconciliation/latest", query={"chain": "dogecoin"}),
                 400, "invalid_field")
    assert_error(ops.get("/api/v1/wallets/transactions", query={"chain": "x" * 5000}), 400, "invalid_field")
    assert_error(ops.post("/api/v1/wallets/reconciliation", query={"chain": "bitcoin"}),
                 503, "chain_not_configured")


# -- ids beyond the database's integer range ---------------------------------------------------


@pytest.mark.parametrize("path", [
    "/api/v1/ledger/accounts/{n}",
    "/api/v1/ledger/accounts/{n}/history",
    "/api/v1/audit/checkpoints/{n}",
    "/api/v1/audit/reserves/snapshots/{n}",
    "/api/v1/audit/reserves/snapshots/{n}/proof",
])
@pytest.mark.parametrize("n", [2**63, 2**64, 10**40])
def test_ids_beyond_bigint_answer_404_not_500(ops: SignedClient, path: str, n: int) -> None:
    response = ops.get(path.format(n=n))
    assert response.status_code == 404, response.json
    assert response.json["error"] == "not_found"


def test_largest_bigint_id_is_looked_up_and_not_found(ops: SignedClient) -> None:
    assert_error(ops.get(f"/api/v1/ledger/accounts/{2**63 - 1}"), 404, "unknown_account")


# -- dependencies down: 503 with a reason ------------------------------------------------------


def _second_app(database_url: str, tmp_path: Path, keystore: Any, clock: Any) -> Flask:
    settings = Settings(data_dir=tmp_path / "second", database_url=database_url)
    return create_app({"TESTING": True, "CLOCK": clock, "KEYSTORE": keystore}, settings=settings)


def _as(user: SignedClient, app: Flask) -> SignedClient:
    return SignedClient(app, app.test_client(), user.clock, user.username, user.key_id, user.secret,
                        user.totp_secret)


def _locked_keystore(path: Path, passphrase: str) -> LazyKeystore:
    return LazyKeystore(lambda: LocalKeystore(path, passphrase, scrypt_log2_n=TEST_SCRYPT_LOG2_N))


@pytest.mark.parametrize(("damage", "error"), [
    ("wrong_passphrase", "bad_passphrase"),
    ("tampered", "keystore_tampered"),
])
def test_unusable_keystore_answers_503_with_its_reason(
    ops: SignedClient, keystore: LocalKeystore, database_url: str, tmp_path: Path, clock: Any,
    damage: str, error: str,
) -> None:
    path = keystore.path
    passphrase = "test passphrase, not a secret"
    if damage == "wrong_passphrase":
        passphrase = "not the passphrase"
    else:
        raw = bytearray(path.read_bytes())
        raw[-5] ^= 0x01
        path.write_bytes(bytes(raw))
    second = _second_app(database_url, tmp_path, _locked_keystore(path, passphrase), clock)
    refused = _as(ops, second).get("/api/v1/me")
    assert_error(refused, 503, error)
    assert "Traceback" not in refused.get_data(as_text=True)
    health = second.test_client().get("/api/v1/health")
    assert health.status_code == 503 and health.json["keystore"] == error
    ready = second.test_client().get("/api/v1/ready")
    assert ready.status_code == 503 and ready.json["checks"]["keystore"] == error


def test_missing_passphrase_file_answers_503_keystore_locked(
    ops: SignedClient, database_url: str, tmp_path: Path, clock: Any
) -> None:
    from strongroom.keystores import open_keystore

    settings = Settings(data_dir=tmp_path / "second", database_url=database_url,
                        keystore_passphrase_file=tmp_path / "missing-passphrase")
    second = _second_app(database_url, tmp_path, LazyKeystore(lambda: open_keystore(settings)), clock)
    assert_error(_as(ops, second).get("/api/v1/me"), 503, "keystore_locked")
    assert second.test_client().get("/api/v1/ready").json["checks"]["keystore"] == "keystore_locked"


def test_locked_keystore_is_not_reopened_on_every_request(clock: Any) -> None:
    opened: list[int] = []
    now = [0.0]

    def factory() -> Any:
        opened.append(1)
        raise KeystoreError(KeystoreErrorCode.BAD_PASSPHRASE, "the passphrase does not open the keystore")

    lazy = LazyKeystore(factory, monotonic_s=lambda: now[0])
    for _ in range(50):
        with pytest.raises(KeystoreError):
            lazy.get()
    assert len(opened) == 1
    now[0] = 10.0
    with pytest.raises(KeystoreError):
        lazy.get()
    assert len(opened) == 2


def test_health_and_ready_are_ok_when_everything_is(client: FlaskClient) -> None:
    health = client.get("/api/v1/health")
    assert (health.status_code, health.json["status"], health.json["keystore"]) == (200, "ok", "ok")
    ready = client.get("/api/v1/ready")
    assert ready.status_code == 200
    assert ready.json == {"ready": True, "checks": {"database": "ok", "keystore": "ok", "schema": "ok"}}


def test_ready_reports_a_database_behind_the_code(app: Flask, client: FlaskClient) -> None:
    with app.extensions["strongroom.engine"].begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0001_older'"))
    ready = client.get("/api/v1/ready")
    assert ready.status_code == 503
    assert ready.json["error"] == "not_ready" and ready.json["checks"]["schema"] == "not_migrated"


@pytest.fixture
def pg_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from fresh_database_url(request, "postgres", tmp_path)


def test_unreachable_database_answers_503_with_reason(
    pg_url: str, tmp_path: Path, clock: Any, keystore: LocalKeystore
) -> None:
    url = pg_url
    app = _second_app(url, tmp_path, keystore, clock)
    user = make_user(app, app.test_client(), clock, "ops", {Role.AUDITOR})
    assert user.get("/api/v1/me").status_code == 200
    name = url.rsplit("/", 1)[1]
    admin = create_engine(os.environ["STRONGROOM_TEST_POSTGRES_URL"].replace(
        "postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        connection.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = :name"), {"name": name})
    app.extensions["strongroom.engine"].dispose()
    try:
        refused = user.get("/api/v1/me")
        assert_error(refused, 503, "database_unavailable")
        assert refused.headers["Retry-After"]
        health = app.test_client().get("/api/v1/health")
        assert health.status_code == 503 and health.json["database"] == "unreachable"
        assert app.test_client().get("/api/v1/ready").status_code == 503
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        app.extensions["strongroom.engine"].dispose()
        admin.dispose()
    deadline = time.monotonic() + 30
    while user.get("/api/v1/me").status_code != 200:
        assert time.monotonic() < deadline, "the app did not recover once the database was back"
