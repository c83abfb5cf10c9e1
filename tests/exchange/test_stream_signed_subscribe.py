"""Websocket subscribe signed with an API key: same canonical form, window and replay rule as REST."""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from exchange.api.marketdata import FEED_EXTENSION, SUBSCRIBE_PATH, start_stream_feed, subscribe_body
from exchange.api.stream import ThreadedStreamServer
from policies.request_signing import HEADER_SIGNATURE, sign_request
from policies.roles import Role

from .test_marketdata_api import EX, Caller

TIMEOUT_S = 30  # bounds a hang only
DOC = Path(__file__).resolve().parents[2] / "docs" / "market-data.md"


def signed(caller: Caller, channels: list[str], timestamp_ms: int, *, secret: str | None = None,
           request_id: Any = 1) -> dict[str, Any]:
    headers = sign_request(key_id=caller.key_id, secret=secret or caller.secret, timestamp_ms=timestamp_ms,
                           method="POST", path=SUBSCRIBE_PATH, body=subscribe_body(channels))
    return {"op": "subscribe", "id": request_id, "channels": channels,
            "auth": {"key": caller.key_id, "timestamp": timestamp_ms, "signature": headers[HEADER_SIGNATURE]}}


def answer(ws: ClientConnection, request_id: Any) -> dict[str, Any]:
    """Return the server's answer to ``request_id`` (data messages in between are skipped)."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        m = json.loads(ws.recv(timeout=TIMEOUT_S))
        if m.get("id") == request_id and m.get("type") in ("subscribed", "error"):
            return m
    raise AssertionError("no answer")


class Streams:
    def __init__(self, app: Any, directory: Path) -> None:
        self.app = app
        self.feed = start_stream_feed(app, directory / "feed.sock")
        self.server = ThreadedStreamServer(directory / "feed.sock")
        self.url = f"ws://127.0.0.1:{self.server.port}/"
        deadline = time.monotonic() + TIMEOUT_S
        while not self.server.server.feed_connected.is_set():
            assert time.monotonic() < deadline, "the stream server never got the feed"
            time.sleep(0.01)

    def close(self) -> None:
        self.server.stop()
        self.feed.stop()
        self.app.extensions.pop(FEED_EXTENSION)


@pytest.fixture
def streams(app: Any) -> Iterator[Streams]:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="srw") as directory:
        s = Streams(app, Path(directory))
        yield s
        s.close()


@pytest.fixture
def alice(app: Any, client: Any, clock: Any) -> Caller:
    return Caller(app, client, clock, "alice", {Role.TRADER})


def test_stream_signed_subscribe_opens_private_channels(streams: Streams, alice: Caller, clock: Any) -> None:
    with connect(streams.url) as ws:
        ws.send(json.dumps(signed(alice, ["fills", "orders", "depth:BTC-PERP"], clock.now_ms)))
        got = answer(ws, 1)
        assert got == {"type": "subscribed", "id": 1, "channels": ["fills", "orders", "depth:BTC-PERP"]}
        # Authenticated as alice now: an unsigned subscribe to another private channel is accepted.
        ws.send(json.dumps({"op": "subscribe", "id": 2, "channels": ["balances"]}))
        assert answer(ws, 2)["type"] == "subscribed"


def test_stream_signed_subscribe_replayed_refused_1005(streams: Streams, alice: Caller, clock: Any) -> None:
    message = signed(alice, ["fills"], clock.now_ms)
    with connect(streams.url) as first, connect(streams.url) as second:
        first.send(json.dumps(message))
        assert answer(first, 1)["type"] == "subscribed"
        second.send(json.dumps(message))  # captured and sent again, on another connection
        refused = answer(second, 1)
        assert (refused["code"], refused["error"]) == (1005, "request_replayed")


@pytest.mark.parametrize(("offset_ms", "code", "error"), [
    (-5_001, 1003, "timestamp_stale"), (-60_000, 1003, "timestamp_stale"),
    (5_001, 1004, "timestamp_in_future")])
def test_stream_signed_subscribe_outside_the_window_refused(streams: Streams, alice: Caller, clock: Any,
                                                            offset_ms: int, code: int, error: str) -> None:
    with connect(streams.url) as ws:
        ws.send(json.dumps(signed(alice, ["fills"], clock.now_ms + offset_ms)))
        refused = answer(ws, 1)
        assert (refused["type"], refused["code"], refused["error"]) == ("error", code, error)
        ws.send(json.dumps({"op": "subscribe", "id": 2, "channels": ["fills"]}))
        assert answer(ws, 2)["error"] == "unauthenticated"  # nothing was opened


def test_stream_signed_subscribe_forged_refused(streams: Streams, alice: Caller, clock: Any) -> None:
    with connect(streams.url) as ws:
        ws.send(json.dumps(signed(alice, ["fills"], clock.now_ms, secret="not-the-secret")))
        assert answer(ws, 1)["code"] == 1002
        swapped = signed(alice, ["fills"], clock.now_ms, request_id=2)
        swapped["channels"] = ["fills", "orders"]  # the signature covers the channel list
        ws.send(json.dumps(swapped))
        refused = answer(ws, 2)
        assert (refused["code"], refused["error"]) == (1002, "signature_invalid")
        unknown = signed(alice, ["fills"], clock.now_ms, request_id=3)
        unknown["auth"]["key"] = "srk_nobody"
        ws.send(json.dumps(unknown))
        assert answer(ws, 3)["code"] == 1010
        for n, auth in enumerate([{"key": alice.key_id}, {"key": alice.key_id, "timestamp": "1",
                                                         "signature": "ab"}, "token"], start=4):
            ws.send(json.dumps({"op": "subscribe", "id": n, "channels": ["fills"], "auth": auth}))
            assert (answer(ws, n)["code"], n) == (1001, n)
        zeros = signed(alice, ["fills"], clock.now_ms, request_id=9)
        zeros["auth"]["signature"] = "0" * 64
        ws.send(json.dumps(zeros))
        assert answer(ws, 9)["code"] == 1002


def test_stream_signed_subscribe_needs_a_stream_permission(streams: Streams, app: Any, client: Any,
                                                           clock: Any) -> None:
    auditor = Caller(app, client, clock, "aud", {Role.AUDITOR})
    with connect(streams.url) as ws:
        ws.send(json.dumps(signed(auditor, ["fills"], clock.now_ms)))
        assert answer(ws, 1)["code"] == 1030
        ws.send(json.dumps(signed(auditor, ["trades:BTC-PERP"], clock.now_ms + 1, request_id=2)))
        assert answer(ws, 2)["type"] == "subscribed"  # public channels: any valid key


def test_stream_listen_token_still_works_next_to_signed_subscribe(streams: Streams, alice: Caller) -> None:
    token = alice.call("POST", f"{EX}/stream-token").get_json()["token"]
    with connect(streams.url) as ws:
        deadline = time.monotonic() + TIMEOUT_S
        while True:  # the token reaches the stream server with the next feed round
            ws.send(json.dumps({"op": "auth", "id": 7, "token": token}))
            got = json.loads(ws.recv(timeout=TIMEOUT_S))
            if got.get("type") == "authenticated" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert got == {"type": "authenticated", "id": 7, "user": "alice"}


def test_stream_signed_subscribe_doc_example_signature_is_reproducible() -> None:
    from policies.request_signing import canonical_request, signature_hex

    (body,) = re.findall(r"```json signed-subscribe:example\n(.*?)```", DOC.read_text(), re.S)
    example = json.loads(body)
    (secret,) = re.findall(r"secret `([A-Za-z0-9_-]+)`", DOC.read_text())
    auth = example["auth"]
    canonical = canonical_request(auth["key"], auth["timestamp"], "POST", SUBSCRIBE_PATH, "",
                                  subscribe_body(example["channels"]))
    assert signature_hex(secret, canonical) == auth["signature"]
    assert example["op"] == "subscribe" and set(auth) == {"key", "timestamp", "signature"}


def test_stream_signed_subscribe_doc_error_example_matches_a_served_refusal(
        streams: Streams, alice: Caller, clock: Any) -> None:
    from .test_marketdata_docs import same_shape

    (body,) = re.findall(r"```json stream-signed:error\n(.*?)```", DOC.read_text(), re.S)
    message = signed(alice, ["fills"], clock.now_ms)
    with connect(streams.url) as ws:
        ws.send(json.dumps(message))
        assert answer(ws, 1)["type"] == "subscribed"
        ws.send(json.dumps(message))
        refused = answer(ws, 1)
    same_shape(json.loads(body), refused)
    assert refused == json.loads(body)
