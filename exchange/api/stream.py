"""The websocket stream server: one endpoint, subscribe/unsubscribe, public and private channels.

Runs as its own process (``python -m exchange.api.stream``, started by
``strongroom serve``) on the ``websockets`` asyncio server (pinned in
pyproject.toml). waitress, which serves the REST API, cannot upgrade a
connection to a websocket, and a separate process fans out to thousands of
subscribers without competing with the engine for the Python interpreter.
It is fed by the app's `exchange.api.streamfeed.StreamFeed` over a Unix
socket (JSON lines: ``hello``, ``batch``, ``token``, ``reset``).

Protocol (docs/market-data.md, "Streams"): the client sends
``{"op": "subscribe" | "unsubscribe", "channels": [...], "id": n}``,
``{"op": "auth", "token": ...}`` (a listen token from
``POST /api/v1/exchange/stream-token``), or a ``subscribe`` that carries
``"auth": {"key", "timestamp", "signature"}``: the API key's request signature
over the subscription (docs/market-data.md, "Signed subscribe"), checked by the
app (the feed's ``verify`` report; this process holds no key secrets), ``{"op": "resync", "channel":
"depth:<symbol>"}``, ``{"op": "ping"}``, ``{"op": "cancel_on_disconnect", "enabled":
true}`` (docs/operations.md). Data messages are
``{"channel": ..., "data": {...}}``. Depth: a ``snapshot`` on subscribe
(and on resync), then ``diff`` messages; each diff carries ``seq`` and
``prev_seq`` and applies only on top of the state whose sequence is
``prev_seq``.

Backpressure: each connection has a queue of ``MAX_QUEUE`` messages; a
client that lets it fill (a slow consumer) is disconnected with close code
4008, never waited for. Limits: ``MAX_SUBSCRIPTIONS`` per connection,
``MAX_CLIENT_MESSAGE_BYTES`` per client message, ``MAX_CONNECTIONS``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

log = logging.getLogger(__name__)

MAX_QUEUE: Final = 1_000
MAX_SUBSCRIPTIONS: Final = 100
MAX_CLIENT_MESSAGE_BYTES: Final = 4_096
MAX_CONNECTIONS: Final = 20_000
MAX_FEED_LINE_BYTES: Final = 64 * 1024 * 1024
SNAPSHOT_LEVELS: Final = 1_000
FORWARDED_FOR: Final = "X-Forwarded-For"
MAX_TRUSTED_PROXY_HOPS: Final = 5  # strongroom/settings.py's bound
DEPTH_INTERVAL_S: Final = 0.1  # depth diffs of one symbol are merged and sent at most this often
FEED_RETRY_S: Final = 0.5
PARENT_CHECK_S: Final = 1.0
CLOSE_SLOW_CONSUMER: Final = 4008
CLOSE_FEED_RESET: Final = 4010
MAX_PENDING_VERIFY: Final = 10_000  # signed subscribes waiting for the app's answer, all connections
MAX_PENDING_VERIFY_PER_CLIENT: Final = 4
MAX_SIGNED_FIELD_CHARS: Final = 128
PUBLIC: Final = frozenset({"depth", "trades", "mark", "liquidations"})
PRIVATE: Final = frozenset({"orders", "fills", "positions", "balances", "income", "withdrawals", "approvals",
                            "alerts"})


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class Client:
    """One websocket connection: its subscriptions, user and outgoing queue."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.user: str | None = None
        self.roles: frozenset[str] = frozenset()
        self.channels: set[str] = set()
        self.queue: asyncio.Queue[str] = asyncio.Queue(MAX_QUEUE)
        self.closed = False
        self.cancel_on_disconnect = False
        self.pending_verify = 0
        self.peer = ""


def client_address(peer: str, forwarded_for: list[str], trusted_proxy_hops: int) -> str:
    """Return the client's address: the socket's, or the one the outermost trusted proxy saw.

    The REST API's rule (werkzeug ProxyFix, ``STRONGROOM_TRUSTED_PROXY_HOPS``): with N trusted
    hops, the Nth X-Forwarded-For entry from the right; entries a client wrote further left are
    ignored; with fewer than N entries (or N = 0) the socket's address.
    """
    if trusted_proxy_hops <= 0:
        return peer
    entries = [e.strip() for value in forwarded_for for e in value.split(",")]
    if len(entries) < trusted_proxy_hops or not entries[-trusted_proxy_hops]:
        return peer
    return entries[-trusted_proxy_hops]


class StreamServer:
    """Fan-out of the feed to websocket clients; see the module docstring."""

    def __init__(self, feed_path: Path, max_queue: int = MAX_QUEUE,
                 depth_interval_s: float = DEPTH_INTERVAL_S, trusted_proxy_hops: int = 0) -> None:
        if not 0 <= trusted_proxy_hops <= MAX_TRUSTED_PROXY_HOPS:
            raise ValueError(f"trusted_proxy_hops was {trusted_proxy_hops}, "
                             f"must be 0..{MAX_TRUSTED_PROXY_HOPS}")
        self.trusted_proxy_hops = trusted_proxy_hops
        self.feed_path = feed_path
        self.max_queue = max_queue
        self.depth_interval_s = depth_interval_s
        # symbol -> the diffs received since the last flush, merged (the first prev_seq, the last seq)
        self.pending_depth: dict[str, dict[str, Any]] = {}
        self.pending_trades: dict[str, list[dict[str, Any]]] = {}  # symbol -> trades not sent yet
        self.clients: set[Client] = set()
        self.public: dict[str, set[Client]] = {}  # "trades:BTC-PERP" -> clients
        self.private: dict[str, set[Client]] = {}  # username -> clients
        self.depth: dict[str, tuple[int, dict[str, list[str]], dict[str, list[str]]]] = {}
        self.marks: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, tuple[str, list[str], float]] = {}  # sha256 -> (user, roles, deadline)
        self.feed_connected = asyncio.Event()
        self.slow_disconnects = 0
        self.feed_writer: asyncio.StreamWriter | None = None  # cancel-on-disconnect reports go back here
        self.disconnects_reported = 0
        # Signed subscribes sent to the app for verification: request number -> (client, id, channels).
        self.verifying: dict[int, tuple[Client, Any, list[str]]] = {}
        self._verify_n = 0

    # ------------------------------------------------------------------ the feed

    async def follow_feed(self) -> None:
        """Read the app's feed forever, reconnecting when it goes away."""
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.feed_path),
                                                                   limit=MAX_FEED_LINE_BYTES)
                self.feed_writer = writer
            except OSError:
                await asyncio.sleep(FEED_RETRY_S)
                continue
            try:
                while line := await reader.readline():
                    self.on_feed(json.loads(line))
            except (OSError, ValueError, asyncio.LimitOverrunError):
                log.exception("stream feed broke; reconnecting")
            self.feed_connected.clear()
            await asyncio.sleep(FEED_RETRY_S)

    def on_feed(self, frame: dict[str, Any]) -> None:
        """Apply one feed frame."""
        kind = frame.get("t")
        if kind == "hello":
            self.depth = {s: (v["seq"], {p: [p, q, n] for p, q, n in v["bids"]},
                              {p: [p, q, n] for p, q, n in v["asks"]}) for s, v in frame["depth"].items()}
            self.marks = dict(frame["marks"])
            self.pending_depth.clear()  # the snapshots below replace whatever was merged
            for t in frame["tokens"]:
                self.tokens[t["hash"]] = (t["user"], t["roles"], time.monotonic() + t["ttl_ms"] / 1000)
            self.feed_connected.set()
            # Whatever a depth subscriber had may be behind: everyone gets a fresh snapshot.
            for key, clients in self.public.items():
                if key.startswith("depth:"):
                    for c in list(clients):
                        self.send(c, self.snapshot(key[len("depth:"):]))
        elif kind == "token":
            deadline = time.monotonic() + frame["ttl_ms"] / 1000
            self.tokens[frame["hash"]] = (frame["user"], frame["roles"], deadline)
        elif kind == "reset":
            for c in list(self.clients):
                self.send(c, _dumps({"type": "reset", "message": "the feed lost messages; private "
                                     "channels may have missed updates, depth resyncs"}))
        elif kind == "batch":
            for channel, owner, data in frame["m"]:
                self.route(channel, owner, data)
        elif kind == "verified":
            self.on_verified(frame)

    def route(self, channel: str, owner: str | None, data: dict[str, Any]) -> None:
        """Deliver one message to its subscribers (encoded once)."""
        if channel in PUBLIC:
            symbol = data.get("symbol", "")
            if channel == "depth":
                self._apply_depth(symbol, data)
                if self.depth_interval_s > 0:
                    self._merge_depth(symbol, data)
                    return
                data = {**data, "type": "diff"}
            elif channel == "trades":
                # Trades of one symbol go out as a list, every ``depth_interval_s`` (Deribit's
                # ``trades.<instrument>.100ms``): one frame per subscriber per interval.
                if f"trades:{symbol}" in self.public:
                    self.pending_trades.setdefault(symbol, []).append(data)
                if self.depth_interval_s > 0:
                    return
                self.flush_trades(symbol)
                return
            elif channel == "mark":
                self.marks[symbol] = data
            key = f"{channel}:{symbol}"
            clients: Iterable[Client] = self.public.get(key, ())
            text = _dumps({"channel": key, "data": data})
        elif channel == "approvals":
            group = data.get("group")
            clients = [c for c in self.clients if "approvals" in c.channels and group in c.roles
                       and c.user != data.get("username")]
            text = _dumps({"channel": channel, "data": data})
        else:
            clients = [c for c in self.private.get(owner or "", ()) if channel in c.channels]
            text = _dumps({"channel": channel, "data": data})
        for c in list(clients):
            self.send(c, text)

    def _apply_depth(self, symbol: str, diff: dict[str, Any]) -> None:
        _, bids, asks = self.depth.get(symbol, (0, {}, {}))
        for side, book in (("bids", bids), ("asks", asks)):
            for p, q, n in diff[side]:
                if Decimal(q) == 0:
                    book.pop(p, None)
                else:
                    book[p] = [p, q, n]
        self.depth[symbol] = (diff["seq"], bids, asks)

    def _merge_depth(self, symbol: str, diff: dict[str, Any]) -> None:
        merged = self.pending_depth.get(symbol)
        if merged is None:
            merged = self.pending_depth[symbol] = {"prev_seq": diff["prev_seq"], "bids": {}, "asks": {}}
        merged["seq"] = diff["seq"]
        for side in ("bids", "asks"):
            for level in diff[side]:
                merged[side][level[0]] = level

    def flush_depth(self, only: str | None = None) -> None:
        """Send the merged depth diffs (of ``only``, or of every symbol) to their subscribers."""
        for symbol in ([only] if only is not None else sorted(self.pending_depth)):
            merged = self.pending_depth.pop(symbol, None)
            if merged is None:
                continue
            key = f"depth:{symbol}"
            clients = list(self.public.get(key, ()))
            if not clients:
                continue
            data = {"symbol": symbol, "seq": merged["seq"], "prev_seq": merged["prev_seq"],
                    "bids": sorted(merged["bids"].values(), key=lambda lv: Decimal(lv[0]), reverse=True),
                    "asks": sorted(merged["asks"].values(), key=lambda lv: Decimal(lv[0])), "type": "diff"}
            text = _dumps({"channel": key, "data": data})
            for c in clients:
                self.send(c, text)

    def flush_trades(self, only: str | None = None) -> None:
        """Send the trades collected (of ``only``, or of every symbol) as one list per symbol."""
        for symbol in ([only] if only is not None else sorted(self.pending_trades)):
            trades = self.pending_trades.pop(symbol, None)
            key = f"trades:{symbol}"
            if not trades or key not in self.public:
                continue
            text = _dumps({"channel": key, "data": trades})
            for c in list(self.public[key]):
                self.send(c, text)

    async def flush_depth_forever(self) -> None:
        """Flush merged depth diffs and collected trades every ``depth_interval_s``."""
        while self.depth_interval_s > 0:
            await asyncio.sleep(self.depth_interval_s)
            self.flush_depth()
            self.flush_trades()

    def snapshot(self, symbol: str) -> str:
        """Return the depth snapshot message of ``symbol`` (best first, the first SNAPSHOT_LEVELS)."""
        seq, bids, asks = self.depth.get(symbol, (0, {}, {}))
        top_bids = sorted(bids.values(), key=lambda lv: Decimal(lv[0]), reverse=True)[:SNAPSHOT_LEVELS]
        top_asks = sorted(asks.values(), key=lambda lv: Decimal(lv[0]))[:SNAPSHOT_LEVELS]
        return _dumps({"channel": f"depth:{symbol}", "data": {"type": "snapshot", "symbol": symbol,
                                                             "seq": seq, "bids": top_bids, "asks": top_asks}})

    # ------------------------------------------------------------------ clients

    def send(self, c: Client, text: str) -> None:
        """Queue ``text`` for ``c``; a full queue is a slow consumer: disconnect it, never wait."""
        if c.closed:
            return
        try:
            c.queue.put_nowait(text)
        except asyncio.QueueFull:
            self.slow_disconnects += 1
            self._forget(c)
            asyncio.get_running_loop().create_task(
                c.ws.close(CLOSE_SLOW_CONSUMER, "slow consumer: messages not read in time"))

    def _forget(self, c: Client) -> None:
        c.closed = True
        self.clients.discard(c)
        for key in list(c.channels):
            self._unsubscribe(c, key)

    def _unsubscribe(self, c: Client, key: str) -> None:
        c.channels.discard(key)
        if key in PRIVATE:
            if c.user is not None and not any(k in PRIVATE for k in c.channels):
                self.private.get(c.user, set()).discard(c)
        else:
            subs = self.public.get(key)
            if subs is not None:
                subs.discard(c)
                if not subs:
                    del self.public[key]

    async def handler(self, ws: ServerConnection) -> None:
        """Serve one websocket connection."""
        if len(self.clients) >= MAX_CONNECTIONS:
            await ws.close(1013, "too many connections")
            return
        c = Client(ws)
        c.queue = asyncio.Queue(self.max_queue)
        remote = ws.remote_address
        peer = str(remote[0]) if isinstance(remote, tuple) and remote else ""
        forwarded = ws.request.headers.get_all(FORWARDED_FOR) if ws.request is not None else []
        # The address the IP allowlist of a signed subscribe is checked against.
        c.peer = client_address(peer, forwarded, self.trusted_proxy_hops)
        self.clients.add(c)
        writer = asyncio.get_running_loop().create_task(self._write(c))
        try:
            async for raw in ws:
                if isinstance(raw, bytes) or len(raw) > MAX_CLIENT_MESSAGE_BYTES:
                    self.send(c, self._error(None, "bad_message", "send JSON text of at most "
                                             f"{MAX_CLIENT_MESSAGE_BYTES} bytes"))
                    continue
                self.on_client(c, raw)
        except ConnectionClosed:
            pass
        finally:
            self.report_disconnect(c)
            self._forget(c)
            writer.cancel()

    async def _write(self, c: Client) -> None:
        with contextlib.suppress(ConnectionClosed, asyncio.CancelledError):
            while True:
                await c.ws.send(await c.queue.get())

    @staticmethod
    def _error(ref: Any, error: str, message: str) -> str:
        return _dumps({"type": "error", "id": ref, "error": error, "message": message})

    def on_client(self, c: Client, raw: str) -> None:
        """Handle one client message."""
        try:
            msg = json.loads(raw)
        except ValueError:
            self.send(c, self._error(None, "bad_json", "the message is not JSON"))
            return
        if not isinstance(msg, dict):
            self.send(c, self._error(None, "bad_message", "a message is a JSON object with op"))
            return
        ref = msg.get("id") if isinstance(msg.get("id"), (int, str)) else None
        op = msg.get("op")
        if op == "ping":
            self.send(c, _dumps({"type": "pong", "id": ref, "time_ms": int(time.time() * 1000)}))
        elif op == "auth":
            self._auth(c, ref, msg.get("token"))
        elif op in ("subscribe", "unsubscribe"):
            channels = msg.get("channels")
            if not isinstance(channels, list) or not all(isinstance(k, str) for k in channels):
                self.send(c, self._error(ref, "bad_channels", "channels must be a list of strings"))
                return
            if op == "subscribe" and "auth" in msg:
                self._signed_subscribe(c, ref, channels, msg["auth"])
            elif op == "subscribe":
                self._subscribe(c, ref, channels)
            else:
                for key in channels:
                    self._unsubscribe(c, key)
                self.send(c, _dumps({"type": "unsubscribed", "id": ref, "channels": channels}))
        elif op == "cancel_on_disconnect":
            self._cancel_on_disconnect(c, ref, msg.get("enabled", True))
        elif op == "resync":
            key = msg.get("channel")
            if not isinstance(key, str) or not key.startswith("depth:") or key not in c.channels:
                self.send(c, self._error(ref, "bad_channel", "resync a depth:<symbol> you subscribed to"))
                return
            # What is merged but unsent goes out first, so the snapshot's seq is where the
            # next diff starts (its prev_seq).
            self.flush_depth(key[len("depth:"):])
            self.send(c, self.snapshot(key[len("depth:"):]))
        else:
            self.send(c, self._error(ref, "bad_op", "op must be subscribe|unsubscribe|auth|resync|ping|"
                                     "cancel_on_disconnect"))

    def _cancel_on_disconnect(self, c: Client, ref: Any, enabled: Any) -> None:
        """Deribit-style: when this session closes, every order of its user is cancelled.

        The report travels back up the feed socket; if the feed is down at that moment
        it is lost, which is why docs/operations.md pairs it with the dead man's switch.
        """
        if c.user is None:
            self.send(c, self._error(ref, "unauthenticated", "auth first: cancel-on-disconnect is per user"))
            return
        if not isinstance(enabled, bool):
            self.send(c, self._error(ref, "bad_message", "enabled must be true or false"))
            return
        c.cancel_on_disconnect = enabled
        self.send(c, _dumps({"type": "cancel_on_disconnect", "id": ref, "enabled": enabled}))

    def report_disconnect(self, c: Client) -> None:
        """Tell the app (back up the feed socket) that a cancel-on-disconnect session closed."""
        writer = self.feed_writer
        if c.user is None or not c.cancel_on_disconnect or writer is None:
            return
        self.disconnects_reported += 1
        with contextlib.suppress(OSError, RuntimeError):
            writer.write(json.dumps({"t": "disconnected", "user": c.user}).encode() + b"\n")

    def _auth(self, c: Client, ref: Any, token: Any) -> None:
        now = time.monotonic()
        digest = hashlib.sha256(token.encode()).hexdigest() if isinstance(token, str) else ""
        found = None
        for key in list(self.tokens):
            user, roles, expires = self.tokens[key]
            if expires <= now:
                del self.tokens[key]
            elif hmac.compare_digest(key, digest):
                found = key
        if found is None or c.user is not None:
            self.send(c, self._error(ref, "unauthenticated", "unknown, used or expired listen token "
                                     "(POST /api/v1/exchange/stream-token)"))
            return
        user, roles, _ = self.tokens.pop(found)  # once
        c.user, c.roles = user, frozenset(roles)
        self.send(c, _dumps({"type": "authenticated", "id": ref, "user": user}))

    def _signed_subscribe(self, c: Client, ref: Any, channels: list[str], auth: Any) -> None:
        """Send a signed subscribe up to the app to verify; the answer comes back as ``verified``."""
        fields = auth if isinstance(auth, dict) else {}
        key, timestamp, signature = fields.get("key"), fields.get("timestamp"), fields.get("signature")
        if not (isinstance(key, str) and isinstance(signature, str) and len(key) <= MAX_SIGNED_FIELD_CHARS
                and len(signature) <= MAX_SIGNED_FIELD_CHARS and isinstance(timestamp, int)
                and not isinstance(timestamp, bool) and set(fields) == {"key", "timestamp", "signature"}):
            self.send(c, self._coded_error(ref, 1001, "auth_headers_malformed",
                                           "auth must be {key, timestamp (ms, integer), signature (hex)}"))
            return
        writer = self.feed_writer
        if writer is None or not self.feed_connected.is_set():
            self.send(c, self._error(ref, "stream_unavailable", "cannot verify signatures now; retry"))
            return
        if c.pending_verify >= MAX_PENDING_VERIFY_PER_CLIENT or len(self.verifying) >= MAX_PENDING_VERIFY:
            self.send(c, self._error(ref, "too_many_pending", "wait for the answers to earlier subscribes"))
            return
        self._verify_n += 1
        self.verifying[self._verify_n] = (c, ref, channels)
        c.pending_verify += 1
        with contextlib.suppress(OSError, RuntimeError):
            writer.write(json.dumps({"t": "verify", "n": self._verify_n, "key": key, "timestamp": timestamp,
                                     "signature": signature, "channels": channels, "ip": c.peer}).encode()
                         + b"\n")

    def on_verified(self, frame: dict[str, Any]) -> None:
        """Finish a signed subscribe with the app's verdict (a user, or a stable refusal code)."""
        pending = self.verifying.pop(frame.get("n", -1), None)
        if pending is None:
            return
        c, ref, channels = pending
        c.pending_verify -= 1
        if c.closed:
            return
        user = frame.get("user")
        if not isinstance(user, str):
            code, error = int(frame.get("code", 1002)), str(frame.get("error", "refused"))
            self.send(c, self._coded_error(ref, code, error, str(frame.get("message", ""))[:300]))
            return
        if c.user is not None and c.user != user:
            self.send(c, self._error(ref, "unauthenticated",
                                     "this connection is authenticated as another user"))
            return
        c.user, c.roles = user, frozenset(frame.get("roles", ()))
        self._subscribe(c, ref, channels)

    @staticmethod
    def _coded_error(ref: Any, code: int, error: str, message: str) -> str:
        return _dumps({"type": "error", "id": ref, "code": code, "error": error, "message": message})

    def _subscribe(self, c: Client, ref: Any, channels: list[str]) -> None:
        if len(c.channels) + len(channels) > MAX_SUBSCRIPTIONS:
            self.send(c, self._error(ref, "too_many_subscriptions", f"at most {MAX_SUBSCRIPTIONS}"))
            return
        for key in channels:
            name, _, symbol = key.partition(":")
            if name in PUBLIC and symbol and len(symbol) <= 32:
                continue
            if name in PRIVATE and not symbol:
                if c.user is None:
                    self.send(c, self._error(ref, "unauthenticated", f"{name} needs auth first"))
                    return
                continue
            self.send(c, self._error(ref, "bad_channel", f"unknown channel {key[:40]!r}"))
            return
        for key in channels:
            if key.startswith("depth:"):
                self.flush_depth(key[len("depth:"):])  # before this client joins: see resync
            c.channels.add(key)
            if key in PRIVATE:
                assert c.user is not None
                self.private.setdefault(c.user, set()).add(c)
            else:
                self.public.setdefault(key, set()).add(c)
        self.send(c, _dumps({"type": "subscribed", "id": ref, "channels": channels}))
        for key in channels:
            if key.startswith("depth:"):
                self.send(c, self.snapshot(key[len("depth:"):]))
            elif key.startswith("mark:") and key[len("mark:"):] in self.marks:
                self.send(c, _dumps({"channel": key, "data": self.marks[key[len("mark:"):]]}))


async def exit_with_parent(parent: int) -> None:
    """Return once the process that started this one is gone (even killed with SIGKILL)."""
    while os.getppid() == parent:
        await asyncio.sleep(PARENT_CHECK_S)
    log.info("the server that started the stream server is gone; stopping")


async def run(feed_path: Path, host: str, port: int, ready: threading.Event | None = None,
              holder: list[Any] | None = None, max_queue: int = MAX_QUEUE,
              depth_interval_s: float = DEPTH_INTERVAL_S, parent: int | None = None,
              trusted_proxy_hops: int = 0) -> None:
    """Serve websockets on ``host:port`` fed from ``feed_path`` until cancelled (or ``parent`` exits)."""
    server = StreamServer(feed_path, max_queue, depth_interval_s, trusted_proxy_hops)
    feed = asyncio.get_running_loop().create_task(server.follow_feed())
    flusher = asyncio.get_running_loop().create_task(server.flush_depth_forever())
    async with serve(server.handler, host, port, max_size=MAX_CLIENT_MESSAGE_BYTES, max_queue=16,
                     ping_interval=20, ping_timeout=20) as ws_server:
        if holder is not None:
            holder.extend([server, ws_server, asyncio.get_running_loop()])
        if ready is not None:
            ready.set()
        try:
            await (exit_with_parent(parent) if parent is not None else asyncio.Future())
        finally:
            feed.cancel()
            flusher.cancel()


class ThreadedStreamServer:
    """The stream server on its own event loop in a thread (tests, the benchmark)."""

    def __init__(self, feed_path: Path, host: str = "127.0.0.1", port: int = 0,
                 max_queue: int = MAX_QUEUE, depth_interval_s: float = DEPTH_INTERVAL_S,
                 trusted_proxy_hops: int = 0) -> None:
        self._ready = threading.Event()
        self._holder: list[Any] = []
        self._thread = threading.Thread(target=lambda: asyncio.run(
            self._main(feed_path, host, port, max_queue, depth_interval_s, trusted_proxy_hops)),
            daemon=True, name="stream-server")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("stream server did not start")
        self.server: StreamServer = self._holder[0]
        ws: Server = self._holder[1]
        self.loop: asyncio.AbstractEventLoop = self._holder[2]
        self.port = next(iter(ws.sockets)).getsockname()[1]

    async def _main(self, feed_path: Path, host: str, port: int, max_queue: int,
                    depth_interval_s: float, trusted_proxy_hops: int) -> None:
        self._task: asyncio.Task[Any] | None = asyncio.current_task()
        with contextlib.suppress(asyncio.CancelledError):
            await run(feed_path, host, port, self._ready, self._holder, max_queue, depth_interval_s,
                      trusted_proxy_hops=trusted_proxy_hops)

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the server's loop and return its result."""
        async def _do() -> Any:
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(_do(), self.loop).result(10)

    def stop(self) -> None:
        """Stop serving."""
        task = self._task
        assert task is not None
        self.loop.call_soon_threadsafe(task.cancel)
        self._thread.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description="Strongroom websocket streams (fed by strongroom serve)")
    parser.add_argument("--feed", type=Path, required=True, help="the app's feed socket")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--trusted-proxy-hops", type=int, default=0,
                        choices=range(MAX_TRUSTED_PROXY_HOPS + 1), help="STRONGROOM_TRUSTED_PROXY_HOPS")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    # Started by `strongroom serve`: never outlive it, even when it is killed with SIGKILL.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args.feed, args.host, args.port, parent=os.getppid(),
                        trusted_proxy_hops=args.trusted_proxy_hops))


if __name__ == "__main__":
    main()
