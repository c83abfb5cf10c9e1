"""Private stream channels fed from custody: withdrawal states and approvals pending, by role."""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from websockets.sync.client import connect

from exchange.api.marketdata import FEED_EXTENSION, start_stream_feed
from exchange.api.stream import ThreadedStreamServer
from policies.roles import Role

from ..custody.access.conftest import fund
from ..custody.access.helpers import make_user
from ..custody.access.test_withdrawals_api import LARGE_BTC, whitelist, withdraw
from .test_stream import TIMEOUT_S, recv, until


@contextlib.contextmanager
def _listen(url: str, token: str, channels: list[str]) -> Iterator[Any]:
    with connect(url) as ws:
        deadline = time.monotonic() + TIMEOUT_S
        while True:  # the token reaches the stream server with the next feed round
            ws.send(json.dumps({"op": "auth", "token": token}))
            if recv(ws).get("type") == "authenticated":
                break
            assert time.monotonic() < deadline, "token never accepted"
            time.sleep(0.05)
        ws.send(json.dumps({"op": "subscribe", "channels": channels}))
        assert recv(ws)["type"] == "subscribed"
        yield ws


def test_stream_withdrawal_states_reach_the_owner_and_approvals_the_treasury(
        app: Flask, client: FlaskClient, clock: Any) -> None:
    alice = make_user(app, client, clock, "alice", {Role.TRADER}, kyc_tier=2)
    fund(app, "alice")
    bob = make_user(app, client, clock, "bob", {Role.TRADER}, kyc_tier=2)
    treasurer = make_user(app, client, clock, "treasury1", {Role.TREASURY}, approver=True)
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="srs") as directory:
        feed = start_stream_feed(app, Path(directory) / "feed.sock")
        server = ThreadedStreamServer(Path(directory) / "feed.sock")
        url = f"ws://127.0.0.1:{server.port}/"
        try:
            tokens = {}
            for who in (alice, bob, treasurer):
                r = who.post("/api/v1/exchange/stream-token")
                assert r.status_code == 201, r.json
                tokens[who.username] = r.json["token"]
            with _listen(url, tokens["alice"], ["withdrawals", "approvals"]) as a, \
                    _listen(url, tokens["bob"], ["withdrawals", "approvals"]) as b, \
                    _listen(url, tokens["treasury1"], ["approvals"]) as t:
                whitelist(alice)
                body = withdraw(alice, LARGE_BTC).json["withdrawal"]
                assert body["state"] == "pending_approval"
                mine = until(a, lambda m: m.get("channel") == "withdrawals")["data"]
                assert (mine["id"], mine["state"], mine["amount"]) == (body["id"], "pending_approval",
                                                                       str(LARGE_BTC))
                pending = until(t, lambda m: m.get("channel") == "approvals")["data"]
                assert (pending["id"], pending["group"], pending["username"]) == (body["id"], "treasury",
                                                                                  "alice")
                # Bob sees neither Alice's withdrawal nor approvals he is not in the group of;
                # Alice does not approve her own.
                for ws in (a, b):
                    ws.send(json.dumps({"op": "ping"}))
                    seen = []
                    while (m := recv(ws)).get("type") != "pong":
                        seen.append(m)
                    assert not [m for m in seen if m.get("channel") == "approvals"]
                    if ws is b:
                        assert not [m for m in seen if m.get("channel") == "withdrawals"]
        finally:
            server.stop()
            feed.stop()
            app.extensions.pop(FEED_EXTENSION)
