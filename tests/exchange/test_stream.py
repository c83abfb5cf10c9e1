"""Websocket streams: subscribe/unsubscribe, depth sequence gaps resynced, auth, slow consumers cut off."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from exchange.api.blueprint import order_scope
from exchange.api.stream import ThreadedStreamServer
from exchange.api.streamfeed import MAX_PENDING_BATCHES, StreamFeed
from exchange.engine.messages import NewOrder
from exchange.marketdata import MarketData
from exchange.venue import NS_PER_MS, Venue

from .helpers import BTC, NOW, USDC, venue

PERP = "BTC-PERP"
TIMEOUT_S = 30  # bounds a hang only: a loaded CI machine can be slow


class Stack:
    """A venue with its read model, the feed thread and a stream server on a free port."""

    def __init__(self, directory: Path, max_queue: int = 1_000, depth_interval_s: float = 0) -> None:
        self.venue: Venue = venue(accounts={f"{o}@x": 100_000 * USDC for o in ("alice", "bob", "carol")})
        self.market = MarketData()
        self.market.attach(self.venue)
        self.venue.drain()
        self.feed = StreamFeed(self.market, lambda: dict(self.venue.specs), order_scope,
                               directory / "feed.sock")
        self.feed.start()
        # Depth diffs one per batch unless a test asks for the server's coalescing.
        self.server = ThreadedStreamServer(directory / "feed.sock", max_queue=max_queue,
                                           depth_interval_s=depth_interval_s)
        self.url = f"ws://127.0.0.1:{self.server.port}/"
        self.n = 0
        deadline = time.monotonic() + TIMEOUT_S
        while not self.server.server.feed_connected.is_set():
            assert time.monotonic() < deadline, "the stream server never got the feed"
            time.sleep(0.01)

    def order(self, account: str, side: str, qty: int, price: int | None = BTC) -> str:
        self.n += 1
        oid = f"{order_scope(account)}o{self.n}"
        r = self.venue.place(PERP, NewOrder(id=oid, account=account, side=side,  # type: ignore[arg-type]
                                            qty=qty, price=price, ts=(NOW + self.n) * NS_PER_MS))
        assert r.code == 0, r.message
        self.venue.drain()
        self.settle()
        return oid

    def settle(self) -> None:
        """Wait until the stream server has every depth change the read model published."""
        deadline = time.monotonic() + TIMEOUT_S
        self.market.catch_up()  # what the feed thread would fold in within 10 ms
        want = self.market.depth_seq.get(PERP, 0)
        while self.server.call(lambda: self.server.server.depth.get(PERP, (0,))[0]) != want:
            assert time.monotonic() < deadline, "the stream server did not catch up"
            time.sleep(0.005)

    def close(self) -> None:
        self.server.stop()
        self.feed.stop()


@pytest.fixture
def stack() -> Iterator[Stack]:
    # A short directory: a Unix socket path has at most 107 bytes.
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="srs") as directory:
        s = Stack(Path(directory))
        yield s
        s.close()


def recv(ws: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(ws.recv(timeout=TIMEOUT_S))
    return message


def until(ws: ClientConnection, match: Any) -> dict[str, Any]:
    """Read messages until one satisfies ``match``; return it."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        m = recv(ws)
        if match(m):
            return m
    raise AssertionError("no matching message")


def drain_to_pong(ws: ClientConnection) -> list[dict[str, Any]]:
    """Return everything the server sent before it answers a ping (the connection is ordered)."""
    ws.send(json.dumps({"op": "ping", "id": "sync"}))
    seen = []
    while (m := recv(ws)).get("type") != "pong":
        seen.append(m)
    return seen


def authenticate(ws: ClientConnection, token: str, request_id: Any = None) -> dict[str, Any]:
    """Send `auth` until the token has reached the stream server (it travels with a feed round)."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        ws.send(json.dumps({"op": "auth", "id": request_id, "token": token}))
        answer = recv(ws)
        if answer.get("type") == "authenticated" or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def drain_until(ws: ClientConnection, done: Any) -> list[dict[str, Any]]:
    """Collect messages (in ping rounds) until ``done(collected)`` holds; return them."""
    deadline = time.monotonic() + TIMEOUT_S
    seen: list[dict[str, Any]] = []
    while not done(seen):
        assert time.monotonic() < deadline, "the stream never delivered what was expected"
        time.sleep(0.05)
        seen.extend(drain_to_pong(ws))
    return seen


class DepthClient:
    """The documented client rule for a depth channel: snapshot, then diffs by seq/prev_seq."""

    def __init__(self) -> None:
        self.seq: int | None = None
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}
        self.gaps = 0

    def on(self, data: dict[str, Any]) -> bool:
        """Apply a depth message; return False on a gap (the caller resyncs)."""
        if data["type"] == "snapshot":
            self.seq = data["seq"]
            self.bids = {p: q for p, q, _ in data["bids"]}
            self.asks = {p: q for p, q, _ in data["asks"]}
            return True
        if self.seq is None or data["seq"] <= self.seq:
            return True  # before our snapshot: already in it
        if data["prev_seq"] != self.seq:
            self.gaps += 1
            self.seq = None  # discard until the new snapshot
            return False
        for side, book in (("bids", self.bids), ("asks", self.asks)):
            for p, q, _ in data[side]:
                if Decimal(q) == 0:
                    book.pop(p, None)
                else:
                    book[p] = q
        self.seq = data["seq"]
        return True


def served_depth(s: Stack) -> tuple[dict[str, str], dict[str, str]]:
    with s.market.lock:
        view = s.market.depth_view(PERP, 1_000)
    spec = s.venue.specs[PERP]
    from exchange.api.marketdata import price_str, qty_str

    return ({price_str(spec, p): qty_str(spec, q) for p, q, _ in view["bids"]},  # type: ignore[misc]
            {price_str(spec, p): qty_str(spec, q) for p, q, _ in view["asks"]})  # type: ignore[misc]


def test_stream_subscribe_gets_snapshot_then_diffs_and_trades(stack: Stack) -> None:
    stack.order("alice@x", "sell", 10)
    with connect(stack.url) as ws:
        ws.send(json.dumps({"op": "subscribe", "id": 1, "channels": [f"depth:{PERP}", f"trades:{PERP}"]}))
        assert recv(ws) == {"type": "subscribed", "id": 1, "channels": [f"depth:{PERP}", f"trades:{PERP}"]}
        snap = recv(ws)["data"]
        assert snap["type"] == "snapshot" and snap["asks"] == [["60000.0", "0.010", "1"]]
        stack.order("bob@x", "buy", 4)
        (trade,) = until(ws, lambda m: m.get("channel") == f"trades:{PERP}")["data"]
        assert (trade["price"], trade["qty"], trade["side"]) == ("60000.0", "0.004", "buy")
        diff = until(ws, lambda m: m.get("channel") == f"depth:{PERP}")["data"]
        assert diff["type"] == "diff" and diff["prev_seq"] == snap["seq"] < diff["seq"]
        assert diff["asks"] == [["60000.0", "0.006", "1"]]


def test_stream_unsubscribe_stops_the_channel(stack: Stack) -> None:
    with connect(stack.url) as ws:
        ws.send(json.dumps({"op": "subscribe", "channels": [f"trades:{PERP}"]}))
        recv(ws)
        ws.send(json.dumps({"op": "unsubscribe", "id": 2, "channels": [f"trades:{PERP}"]}))
        assert recv(ws)["type"] == "unsubscribed"
        stack.order("alice@x", "sell", 10)
        stack.order("bob@x", "buy", 10)
        time.sleep(0.1)  # the feed thread runs every 10 ms
        assert drain_to_pong(ws) == []


def test_stream_depth_gap_is_detected_and_resynced(stack: Stack) -> None:
    client = DepthClient()
    with connect(stack.url) as ws:
        ws.send(json.dumps({"op": "subscribe", "channels": [f"depth:{PERP}"]}))
        recv(ws)
        assert client.on(recv(ws)["data"])
        for i in range(6):
            stack.order("alice@x", "sell", 5, BTC + (i + 1) * 100_000_000)
        received = 0
        while received < 6:
            m = recv(ws)
            received += 1
            if received == 3:
                continue  # lost: the next diff does not follow on
            if not client.on(m["data"]):
                ws.send(json.dumps({"op": "resync", "channel": f"depth:{PERP}"}))
                snap = until(ws, lambda m: m["data"].get("type") == "snapshot")
                client.on(snap["data"])
                break
        assert client.gaps == 1
        stack.order("bob@x", "buy", 1, BTC - 100_000_000)
        client.on(until(ws, lambda m: m.get("channel") == f"depth:{PERP}")["data"])
        for m in drain_to_pong(ws):
            assert client.on(m["data"])
        assert (client.bids, client.asks) == served_depth(stack)


def test_stream_private_channels_need_a_token_and_show_only_the_owner(stack: Stack) -> None:
    with connect(stack.url) as alice, connect(stack.url) as bob:
        alice.send(json.dumps({"op": "subscribe", "id": 1, "channels": ["fills"]}))
        assert recv(alice)["error"] == "unauthenticated"
        alice.send(json.dumps({"op": "auth", "id": 2, "token": "made-up"}))
        assert recv(alice)["error"] == "unauthenticated"
        token, _ = stack.feed.issue_token("alice@x", ["trader"], int(time.time() * 1000))
        bob_token, _ = stack.feed.issue_token("bob@x", ["trader"], int(time.time() * 1000))
        assert authenticate(alice, token, 3) == {"type": "authenticated", "id": 3, "user": "alice@x"}
        bob.send(json.dumps({"op": "auth", "id": 3, "token": token}))  # used: refused
        assert recv(bob)["error"] == "unauthenticated"
        bob.send(json.dumps({"op": "auth", "id": 4, "token": bob_token}))
        assert recv(bob)["type"] == "authenticated"
        for ws in (alice, bob):
            ws.send(json.dumps({"op": "subscribe", "channels": ["orders", "fills", "balances", "income"]}))
            assert recv(ws)["type"] == "subscribed"
        stack.order("carol@x", "sell", 10)
        oid = stack.order("alice@x", "buy", 10)
        fill = until(alice, lambda m: m.get("channel") == "fills")["data"]
        assert fill["order_id"] == oid.split(":", 1)[1] and fill["fee"] == "0.300000"
        assert fill["margin_mode"] == "cross" and "account" not in fill
        assert [m for m in drain_to_pong(bob) if m.get("channel")] == []


def raw_subscriber(port: int, channel: str) -> socket.socket:
    """Return a websocket client that subscribes to ``channel`` and then never reads (tiny buffer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4_096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)
    assert answer.startswith(b"HTTP/1.1 101")
    payload = json.dumps({"op": "subscribe", "channels": [channel]}).encode()
    assert len(payload) < 126
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)  # zero mask
    return sock


def test_stream_slow_consumer_is_disconnected_and_others_keep_their_stream() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="srs") as directory:
        s = Stack(Path(directory), max_queue=8)
        try:
            slow = raw_subscriber(s.server.port, f"trades:{PERP}")
            with connect(s.url) as fast:
                fast.send(json.dumps({"op": "subscribe", "channels": [f"trades:{PERP}"]}))
                recv(fast)
                time.sleep(0.2)  # the slow client's subscription is in
                padding = "x" * 16_384
                sent = 0
                while s.server.server.slow_disconnects == 0 and sent < 5_000:
                    s.server.call(s.server.server.route, "trades", None,
                                  {"symbol": PERP, "trade_id": str(sent), "pad": padding})
                    sent += 1
                    got = fast.recv(timeout=TIMEOUT_S)  # the fast client keeps up
                    assert json.loads(got)["data"][0]["trade_id"] == str(sent - 1)
                assert s.server.server.slow_disconnects == 1
                assert len(s.server.server.clients) == 1  # only the fast one is left
                slow.close()
                s.order("alice@x", "sell", 1)
                s.order("bob@x", "buy", 1)
                assert until(fast, lambda m: m["data"][0].get("price") == "60000.0")
        finally:
            s.close()


def test_stream_feed_never_blocks_the_engine_and_resets_after_an_overrun() -> None:
    md = MarketData()
    feed = StreamFeed(md, dict, order_scope, Path("/nonexistent/feed.sock"))
    feed.pending = [[("trades", None, {})]] * MAX_PENDING_BATCHES
    started = time.perf_counter()
    feed.publish([("trades", None, {"symbol": PERP})])
    assert time.perf_counter() - started < 0.01
    assert feed.overrun and len(feed.pending) == MAX_PENDING_BATCHES


def test_stream_feed_overrun_sends_reset_and_fresh_snapshots(stack: Stack) -> None:
    client = DepthClient()
    with connect(stack.url) as ws:
        ws.send(json.dumps({"op": "subscribe", "channels": [f"depth:{PERP}"]}))
        recv(ws)
        client.on(recv(ws)["data"])
        stack.feed.overrun = True  # as if the feed thread had starved and dropped batches
        stack.order("alice@x", "sell", 3)
        reset = until(ws, lambda m: m.get("type") == "reset")
        assert "resync" in reset["message"]
        snap = until(ws, lambda m: m.get("data", {}).get("type") == "snapshot")
        client.on(snap["data"])
        assert (client.bids, client.asks) == served_depth(stack)


def test_stream_bad_messages_get_errors_not_disconnects(stack: Stack) -> None:
    with connect(stack.url) as ws:
        for raw, error in (("not json", "bad_json"), ("[1]", "bad_message"),
                           (json.dumps({"op": "fly"}), "bad_op"),
                           (json.dumps({"op": "subscribe", "channels": "x"}), "bad_channels"),
                           (json.dumps({"op": "subscribe", "channels": ["nope:X"]}), "bad_channel"),
                           (json.dumps({"op": "resync", "channel": "depth:X"}), "bad_channel"),
                           (b"\x00binary", "bad_message")):
            ws.send(raw)
            assert recv(ws)["error"] == error
        ws.send("x" * 5_000)  # past the frame limit: the protocol closes with 1009
        with pytest.raises(ConnectionClosed) as closed:
            recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_stream_token_endpoint_issues_a_token_the_stream_accepts(app: Any, client: Any, clock: Any) -> None:
    from exchange.api.marketdata import FEED_EXTENSION, start_stream_feed
    from policies.roles import Role

    from .test_marketdata_api import EX, Caller

    alice = Caller(app, client, clock, "alice", {Role.TRADER})
    r = alice.call("POST", f"{EX}/stream-token")
    assert r.status_code == 503 and r.get_json()["code"] == 9504  # no stream server on this app
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="srs") as directory:
        feed = start_stream_feed(app, Path(directory) / "feed.sock")
        server = ThreadedStreamServer(Path(directory) / "feed.sock")
        try:
            r = alice.call("POST", f"{EX}/stream-token")
            assert r.status_code == 201, r.get_json()
            token = r.get_json()["token"]
            assert r.get_json()["expires_ms"] == clock.now_ms + 60_000
            with connect(f"ws://127.0.0.1:{server.port}/") as ws:
                deadline = time.monotonic() + TIMEOUT_S
                while True:  # the token reaches the stream server with the next feed round
                    ws.send(json.dumps({"op": "auth", "token": token}))
                    answer = recv(ws)
                    if answer.get("type") == "authenticated" or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                assert answer == {"type": "authenticated", "id": None, "user": "alice"}
        finally:
            server.stop()
            feed.stop()
            app.extensions.pop(FEED_EXTENSION)


def test_stream_doc_examples_parse_and_match_served_messages(stack: Stack) -> None:
    import re

    from .test_marketdata_docs import DOC, same_shape

    found = {name: json.loads(body) for name, body in
             re.findall(r"```json stream:([a-z-]+)\n(.*?)```", DOC.read_text(), re.S)}
    assert set(found) == {"subscribe", "error", "trade", "fill", "depth-snapshot", "depth-diff"}
    stack.order("carol@x", "sell", 10)
    token, _ = stack.feed.issue_token("alice@x", ["trader"], 0)
    with connect(stack.url) as ws:
        ws.send(json.dumps(found["subscribe"]))
        assert recv(ws)["type"] == "subscribed"
        snapshot = until(ws, lambda m: m.get("data", {}).get("type") == "snapshot")
        same_shape(found["depth-snapshot"], snapshot)
        ws.send(json.dumps({"op": "subscribe", "id": 1, "channels": ["fills"]}))
        same_shape(found["error"], until(ws, lambda m: m.get("type") == "error"))
        assert authenticate(ws, token)["type"] == "authenticated"
        ws.send(json.dumps({"op": "subscribe", "channels": ["fills"]}))
        until(ws, lambda m: m.get("type") == "subscribed")
        stack.order("alice@x", "buy", 4)
        channels = {"fills", "trades:BTC-PERP", "depth:BTC-PERP"}
        seen = {m["channel"]: m for m in drain_until(
            ws, lambda got: channels <= {m.get("channel") for m in got}) if "channel" in m}
        same_shape(found["fill"], seen["fills"])
        same_shape(found["trade"], seen["trades:BTC-PERP"])
        same_shape(found["depth-diff"], seen["depth:BTC-PERP"])


def test_stream_depth_diffs_are_coalesced_and_keep_the_sequence_rule() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="srs") as directory:
        s = Stack(Path(directory), depth_interval_s=0.1)
        try:
            client = DepthClient()
            with connect(s.url) as ws:
                ws.send(json.dumps({"op": "subscribe", "channels": [f"depth:{PERP}"]}))
                recv(ws)
                snapshot = recv(ws)["data"]
                assert client.on(snapshot)
                for i in range(20):
                    s.order("alice@x", "sell", 1 + i % 3, BTC + (i % 7 + 1) * 100_000_000)
                # Past the coalescing interval the client is level with the book.
                def level(got: list[dict[str, Any]]) -> bool:
                    mirror = DepthClient()
                    mirror.on(snapshot)
                    for m in got:
                        mirror.on(m["data"])
                    return (mirror.bids, mirror.asks) == served_depth(s)

                diffs = drain_until(ws, level)
                assert 0 < len(diffs) < 20  # merged
                for m in diffs:
                    assert client.on(m["data"])  # no gap
                assert client.gaps == 0 and (client.bids, client.asks) == served_depth(s)
                # A second subscriber joining now starts from a snapshot the next diff follows.
                with connect(s.url) as late:
                    late.send(json.dumps({"op": "subscribe", "channels": [f"depth:{PERP}"]}))
                    recv(late)
                    other = DepthClient()
                    other.on(recv(late)["data"])
                    s.order("bob@x", "buy", 2, BTC - 100_000_000)

                    def caught_up(got: list[dict[str, Any]]) -> bool:
                        return bool(got) and got[-1]["data"]["seq"] == s.market.depth_seq.get(PERP, 0)

                    for m in drain_until(late, caught_up):
                        assert other.on(m["data"])
                    assert other.gaps == 0 and (other.bids, other.asks) == served_depth(s)
        finally:
            s.close()


def test_stream_trades_of_an_interval_arrive_as_one_list_in_order() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="srs") as directory:
        s = Stack(Path(directory), depth_interval_s=1.0)  # wide: a loaded machine is slow between orders
        try:
            with connect(s.url) as ws:
                ws.send(json.dumps({"op": "subscribe", "channels": [f"trades:{PERP}"]}))
                recv(ws)
                s.order("alice@x", "sell", 30)
                for _ in range(5):
                    s.order("bob@x", "buy", 2)
                frames = [m["data"] for m in drain_until(
                    ws, lambda got: sum(len(m["data"]) for m in got) >= 5)]
                trades = [t for frame in frames for t in frame]
                assert len(frames) < 5 and len(trades) == 5
                assert [int(t["trade_id"]) for t in trades] == sorted(int(t["trade_id"]) for t in trades)
        finally:
            s.close()


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited


def test_stream_server_exits_when_the_server_that_started_it_is_killed() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    starter = ("import subprocess, sys, time\n"
               "p = subprocess.Popen([sys.executable, '-m', 'exchange.api.stream', '--feed',"
               " '/nonexistent/feed.sock', '--port', '0'])\n"
               "print(p.pid, flush=True)\n"
               "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True,
                              cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    time.sleep(1.0)
    assert _running(child)
    parent.kill()  # SIGKILL: `strongroom serve` gets no chance to stop its stream server
    parent.wait()
    deadline = time.monotonic() + 30
    while _running(child):
        assert time.monotonic() < deadline, "the stream server outlived the server that started it"
        time.sleep(0.1)


def test_stream_feed_new_server_greeted_after_the_rounds_batches_gets_no_diff_its_hello_holds() -> None:
    """A server connecting while changes are pending gets them in its hello, never again as a diff."""
    v = venue(accounts={"alice@x": 100_000 * USDC})
    md = MarketData()
    md.attach(v)
    v.drain()
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="srs") as directory:
        feed = StreamFeed(md, lambda: dict(v.specs), order_scope, Path(directory) / "feed.sock")
        feed.start()
        feed._stop.set()  # drive the rounds by hand
        assert feed._thread is not None
        feed._thread.join(timeout=TIMEOUT_S)
        early = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        early.connect(str(feed.path))
        feed.step()  # the first server is greeted
        r = v.place(PERP, NewOrder(id="alice@x:o1", account="alice@x", side="buy", qty=2, price=BTC,
                                   ts=NOW * NS_PER_MS))
        assert r.code == 0
        v.drain()
        late = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        late.connect(str(feed.path))  # connects while the order's depth change is pending
        feed.step()
        try:
            late_lines = _read_lines(late)
            early_lines = _read_lines(early)
        finally:
            late.close()
            early.close()
            feed.stop()
    assert [m["t"] for m in late_lines] == ["hello"], "the late server got the diff its hello holds"
    assert late_lines[0]["depth"][PERP]["bids"], "its hello has the new bid"
    assert [m["t"] for m in early_lines] == ["hello", "batch"]


def _read_lines(s: socket.socket) -> list[dict[str, Any]]:
    s.settimeout(0.5)
    data = b""
    with contextlib.suppress(TimeoutError, socket.timeout):
        while chunk := s.recv(1 << 20):
            data += chunk
    return [json.loads(line) for line in data.splitlines() if line]
