"""The websocket stream server behind a proxy: the IP allowlist of a signed subscribe sees the client."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from exchange.api.marketdata import FEED_EXTENSION, start_stream_feed
from exchange.api.stream import ThreadedStreamServer, client_address
from policies.api_key import Scope
from policies.roles import Role

from .test_marketdata_api import Caller
from .test_stream_signed_subscribe import TIMEOUT_S, answer, signed


@pytest.mark.parametrize(("forwarded", "hops", "expected"), [
    ([], 0, "10.0.0.1"),
    (["198.51.100.4"], 0, "10.0.0.1"),                      # never believed without trusted hops
    (["198.51.100.4"], 1, "198.51.100.4"),
    (["203.0.113.9, 198.51.100.4"], 1, "198.51.100.4"),      # what the client wrote, to the left
    (["203.0.113.9", "198.51.100.4, 10.0.0.7"], 2, "198.51.100.4"),  # header lines joined
    (["198.51.100.4"], 2, "10.0.0.1"),                      # fewer entries than hops: the socket
])
def test_stream_client_address_takes_the_nth_forwarded_entry_from_the_right(
        forwarded: list[str], hops: int, expected: str) -> None:
    assert client_address("10.0.0.1", forwarded, hops) == expected


@pytest.fixture
def carol(app: Any, client: Any, clock: Any) -> Caller:
    caller = Caller(app, client, clock, "carol", {Role.TRADER})
    key = app.extensions["strongroom.access"].users.create_api_key(
        "carol", frozenset(Scope), ip_allowlist=["198.51.100.0/24"])
    caller.key_id, caller.secret = key.credentials.key_id, key.credentials.secret
    return caller


def _subscribe_via_proxy(app: Any, caller: Caller, clock: Any, hops: int,
                         forwarded_for: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="srp") as directory:
        feed = start_stream_feed(app, Path(directory) / "feed.sock")
        server = ThreadedStreamServer(Path(directory) / "feed.sock", trusted_proxy_hops=hops)
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while not server.server.feed_connected.is_set():
                assert time.monotonic() < deadline, "the stream server never got the feed"
                time.sleep(0.01)
            with connect(f"ws://127.0.0.1:{server.port}/",
                         additional_headers={"X-Forwarded-For": forwarded_for}) as ws:
                ws.send(json.dumps(signed(caller, ["fills"], clock.now_ms)))
                return answer(ws, 1)
        finally:
            server.stop()
            feed.stop()
            app.extensions.pop(FEED_EXTENSION)


def test_stream_signed_subscribe_behind_trusted_proxy_checks_the_forwarded_client(
        app: Any, carol: Caller, clock: Any) -> None:
    got = _subscribe_via_proxy(app, carol, clock, 1, "203.0.113.9, 198.51.100.4")
    assert got["type"] == "subscribed", got


def test_stream_signed_subscribe_forged_forwarded_for_without_trusted_proxy_refused(
        app: Any, carol: Caller, clock: Any) -> None:
    got = _subscribe_via_proxy(app, carol, clock, 0, "198.51.100.4")  # the socket is 127.0.0.1
    assert (got["type"], got["error"]) == ("error", "ip_not_allowed"), got
