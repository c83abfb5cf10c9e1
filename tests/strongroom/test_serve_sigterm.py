"""`strongroom serve` stopped with SIGTERM takes the final exchange snapshot (a real process)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from click.testing import CliRunner

from policies.request_signing import sign_request
from strongroom.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
SNAPSHOT = re.compile(r"venue-snapshot-(\d+)\.snap")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _snapshots(directory: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in directory.iterdir() if (m := SNAPSHOT.fullmatch(p.name)))


def test_serve_sigterm_takes_final_exchange_snapshot(tmp_path: Path) -> None:
    env = {**os.environ, "STRONGROOM_DATA_DIR": str(tmp_path / "data"),
           "STRONGROOM_DATABASE_URL": f"sqlite:///{tmp_path / 'sr.db'}",
           "STRONGROOM_KEYSTORE_PASSPHRASE": "sigterm test passphrase, not a secret",
           "STRONGROOM_EXCHANGE_FEED": "none", "STRONGROOM_STREAM_PORT": "0",
           "PYTHONPATH": str(ROOT)}
    runner = CliRunner()
    assert runner.invoke(cli_main, ["init"], env=env).exit_code == 0
    created = runner.invoke(cli_main, ["users", "create", "--username", "t1", "--role", "trader"],
                            env=env)
    assert created.exit_code == 0, created.output
    key_id = re.search(r"api key id:\s+(\S+)", created.output)
    secret = re.search(r"api key secret:\s+(\S+)", created.output)
    assert key_id and secret
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", "from strongroom.cli import main; main()",
                             "serve", "--port", str(port)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            try:
                if requests.get(f"{base}/api/v1/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "serve did not answer in time"
            time.sleep(0.3)
        journal = tmp_path / "data" / "exchange"
        at_start = _snapshots(journal)
        # One journaled venue command after start: the trader arms their dead man's switch.
        body = json.dumps({"timeout_ms": 60_000}).encode()
        headers = sign_request(key_id=key_id.group(1), secret=secret.group(1),
                               timestamp_ms=int(time.time() * 1000), method="POST",
                               path="/api/v1/exchange/deadman", body=body)
        headers["Content-Type"] = "application/json"
        r = requests.post(f"{base}/api/v1/exchange/deadman", data=body, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        assert _snapshots(journal) == at_start
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    # The final snapshot covers the command: the next start has no journal tail to replay.
    assert max(_snapshots(journal)) > max(at_start), (at_start, _snapshots(journal))
