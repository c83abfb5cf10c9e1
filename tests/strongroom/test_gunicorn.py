"""Production mode: gunicorn workers on PostgreSQL answer signed requests; the exchange process too."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from policies.request_signing import sign_request
from strongroom.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gunicorn:
    """A gunicorn master with its workers, started from deploy/gunicorn.conf.py."""

    def __init__(self, env: dict[str, str], role: str, workers: int) -> None:
        self.port = _free_port()
        self.env = {**env, "STRONGROOM_ROLE": role, "STRONGROOM_WORKERS": str(workers),
                    "STRONGROOM_BIND": f"127.0.0.1:{self.port}", "STRONGROOM_THREADS": "2"}
        self.base = f"http://127.0.0.1:{self.port}"
        gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or "gunicorn"
        self.proc = subprocess.Popen([gunicorn, "-c", str(ROOT / "deploy" / "gunicorn.conf.py"),
                                      "strongroom.wsgi:app"], env=self.env, cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn stopped at start: {self.proc.stdout.read()}")  # type: ignore[union-attr]
            try:
                if requests.get(f"{self.base}/api/v1/health", timeout=10).status_code == 200:
                    return
            except requests.RequestException:  # not listening yet, or a worker still importing
                pass
            time.sleep(0.3)
        raise AssertionError("gunicorn did not answer /health in time")

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out

    def call(self, key_id: str, secret: str, method: str, path: str,
             body: object = None) -> requests.Response:
        raw = b"" if body is None else json.dumps(body).encode()
        headers = sign_request(key_id=key_id, secret=secret, timestamp_ms=int(time.time() * 1000),
                               method=method, path=path, body=raw)
        if body is not None:
            headers["Content-Type"] = "application/json"
        time.sleep(0.002)  # never two identical signatures in one millisecond
        return requests.request(method, self.base + path, data=raw, headers=headers, timeout=10)


@pytest.fixture
def env(postgres_url: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "STRONGROOM_DATA_DIR": str(tmp_path / "data"),
            "STRONGROOM_DATABASE_URL": postgres_url,
            "STRONGROOM_KEYSTORE_PASSPHRASE": "gunicorn test passphrase, not a secret",
            "STRONGROOM_EXCHANGE_FEED": "none", "PYTHONPATH": str(ROOT), "STRONGROOM_LOG_FORMAT": "json"}


def _user(env: dict[str, str], name: str, *roles: str) -> tuple[str, str]:
    args = ["users", "create", "--username", name]
    for role in roles:
        args += ["--role", role]
    created = CliRunner().invoke(cli_main, args, env=env)
    assert created.exit_code == 0, created.output
    key_id = re.search(r"api key id:\s+(\S+)", created.output)
    secret = re.search(r"api key secret:\s+(\S+)", created.output)
    assert key_id and secret
    return key_id.group(1), secret.group(1)


def test_gunicorn_api_workers_on_postgres_answer_signed_requests(env: dict[str, str]) -> None:
    key_id, secret = _user(env, "trader1", "trader")
    pool = Gunicorn(env, "api", workers=2)
    try:
        pool.wait_ready()
        for _ in range(20):
            r = pool.call(key_id, secret, "GET", "/api/v1/me")
            assert r.status_code == 200, r.text
            assert r.json()["user"]["username"] == "trader1"
            assert re.fullmatch(r"[0-9a-f]{16}", r.headers["X-Request-Id"])
        # A replayed signature is refused by whichever worker gets it: the nonce store is the database.
        raw_headers = sign_request(key_id=key_id, secret=secret, timestamp_ms=int(time.time() * 1000),
                                   method="GET", path="/api/v1/me", body=b"")
        first = requests.get(pool.base + "/api/v1/me", headers=raw_headers, timeout=10)
        replay = requests.get(pool.base + "/api/v1/me", headers=raw_headers, timeout=10)
        assert first.status_code == 200 and replay.status_code == 401, replay.text
        # The exchange is not in this tier: its routes are not served here.
        assert pool.call(key_id, secret, "GET", "/api/v1/exchange/orders").status_code == 404
        metrics = requests.get(pool.base + "/metrics", timeout=10)
        assert metrics.status_code == 200 and "strongroom_http_requests_total" in metrics.text
    finally:
        out = pool.stop()
    booted = re.findall(r"Booting worker with pid: (\d+)", out)
    assert len(booted) == 2, out[-2000:]
    assert "Traceback" not in out, out[-3000:]


def test_gunicorn_exchange_process_runs_one_worker_and_takes_orders(env: dict[str, str]) -> None:
    env = {**env, "STRONGROOM_EXCHANGE_DEV_MODE": "1"}
    key_id, secret = _user(env, "trader2", "trader", "admin")
    exchange = Gunicorn(env, "all", workers=4)  # the config holds the exchange role to one worker
    try:
        exchange.wait_ready()
        r = exchange.call(key_id, secret, "GET", "/api/v1/exchange/instruments")
        assert r.status_code == 200, r.text
        r = exchange.call(key_id, secret, "POST", "/api/v1/exchange/orders",
                          {"symbol": "BTC-PERP", "id": "g1", "side": "buy", "qty": 10, "price": 1})
        # No collateral yet: refused by the venue's risk check in this worker, with its stable code.
        assert (r.status_code, r.json()["code"]) == (404, 2005), r.text
    finally:
        out = exchange.stop()
    assert len(re.findall(r"Booting worker with pid: (\d+)", out)) == 1, out[-2000:]
