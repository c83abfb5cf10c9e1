"""``strongroom api`` signs requests the server accepts, against a real server on localhost."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from werkzeug.serving import make_server

from policies.roles import Role
from strongroom.cli import main

from ..custody.access.helpers import make_user


@pytest.fixture
def server(app: Flask) -> Iterator[str]:
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


def test_api_command_signs_requests_and_reports_refusals(
    app: Flask, client: Any, clock: Any, server: str
) -> None:
    # The server checks timestamps against the app clock: bring it to the real time.
    clock.now_ms = time.time_ns() // 1_000_000
    alice = make_user(app, client, clock, "alice", {Role.TRADER}, mfa=False)
    env = {"STRONGROOM_API_KEY": alice.key_id, "STRONGROOM_API_SECRET": alice.secret}
    runner = CliRunner()
    me = runner.invoke(main, ["api", "GET", "/api/v1/me", "--url", server], env=env)
    assert me.exit_code == 0, me.output
    assert json.loads(me.output)["user"]["username"] == "alice"
    wrong = runner.invoke(main, ["api", "GET", "/api/v1/me", "--url", server],
                          env={**env, "STRONGROOM_API_SECRET": "srs_wrong"})
    assert wrong.exit_code == 1
    assert json.loads(wrong.output)["error"] == "signature_invalid"
    missing = runner.invoke(main, ["api", "GET", "/api/v1/me", "--url", server],
                            env={"STRONGROOM_API_KEY": None, "STRONGROOM_API_SECRET": None})
    assert missing.exit_code == 2 and "STRONGROOM_API_KEY" in missing.output


def test_api_command_post_sends_the_json_body(app: Flask, client: Any, clock: Any, server: str) -> None:
    from policies.mfa import totp_code

    alice = make_user(app, client, clock, "alice", {Role.TRADER})
    clock.now_ms = time.time_ns() // 1_000_000
    assert alice.totp_secret is not None
    env = {"STRONGROOM_API_KEY": alice.key_id, "STRONGROOM_API_SECRET": alice.secret}
    body = json.dumps({"asset": "BTC", "address": "bc1qcliposttest", "label": "from the CLI"})
    added = CliRunner().invoke(main, [
        "api", "POST", "/api/v1/whitelist", "--json", body, "--url", server,
        "--mfa", totp_code(alice.totp_secret, clock.now_ms), "--idempotency-key", "cli-post-1"], env=env)
    assert added.exit_code == 0, added.output
    entry = json.loads(added.output)["entry"]
    assert (entry["address"], entry["label"]) == ("bc1qcliposttest", "from the CLI")
    listed = CliRunner().invoke(main, ["api", "GET", "/api/v1/whitelist", "--url", server], env=env)
    assert [e["address"] for e in json.loads(listed.output)["entries"]] == ["bc1qcliposttest"]
