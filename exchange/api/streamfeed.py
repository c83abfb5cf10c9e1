"""The app side of the websocket streams: a feed of market-data batches to the stream server(s).

The engine thread only appends each batch the read model publishes to a
bounded list (`StreamFeed.publish`, O(1), never blocks). A feed thread takes
the batches every ``FEED_INTERVAL_S``, renders them once in the trader-facing
format (decimal strings, client order ids, docs/market-data.md) and writes
them as JSON lines to every stream server connected to the feed's Unix
socket (exchange/api/stream.py runs in its own process, so fanning out to
thousands of websockets never competes with the engine for the interpreter).

A stream server that connects first gets a ``hello``: the full depth of
every book with its sequence, the marks, and the live listen tokens. When
more than ``MAX_PENDING_BATCHES`` batches wait (the feed thread starved),
they are dropped and every server gets a new ``hello`` (its depth
subscribers get fresh snapshots; other messages of the gap are lost and
clients are told with a ``reset``). Writes never block the feed thread: what
a server has not taken yet waits in its buffer; a server more than
``MAX_SERVER_BUFFER_BYTES`` behind is disconnected (it reconnects and gets a
hello).

Listen tokens (``POST /api/v1/exchange/stream-token``): 32 random bytes,
valid ``TOKEN_TTL_MS`` and once; only their SHA-256 leaves this process.
Withdrawal state changes and pending approvals are polled from the
withdrawal service every ``POLL_EVERY_S`` seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import msgspec

from exchange.api.marketdata import money_str, price_str, qty_str
from exchange.instruments import InstrumentSpec
from exchange.marketdata import MarketData, Message, owner_of

log = logging.getLogger(__name__)

FEED_INTERVAL_S: Final = 0.01
MAX_PENDING_BATCHES: Final = 50_000
MAX_SERVER_BUFFER_BYTES: Final = 256 * 1024 * 1024
MAX_SERVERS: Final = 8
MAX_REPORT_BYTES: Final = 64 * 1024  # what one round reads back from a stream server
TOKEN_TTL_MS: Final = 60_000
MAX_TOKENS: Final = 10_000
POLL_EVERY_S: Final = 2.0
MAX_DEPTH_HELLO: Final = 1_000  # levels per side in a hello (the rest arrives as diffs)

_encode = msgspec.json.Encoder().encode

PRICE_FIELDS: Final = ("price", "avg_price", "trigger_price", "entry_price", "mark", "index")
QTY_FIELDS: Final = ("qty", "filled_qty", "size")
EXCHANGE_PRIVATE: Final = frozenset({"orders", "fills", "positions", "balances", "income"})
MONEY_FIELDS: Final = ("fee", "realised_pnl", "amount", "funding", "fees", "collateral")


def render(spec: InstrumentSpec | None, scope_of: Callable[[str], str], account: str | None,
           payload: dict[str, Any]) -> dict[str, Any]:
    """Return a read-model payload in the trader-facing units of docs/market-data.md."""
    out = dict(payload)
    if spec is not None:
        for key in PRICE_FIELDS:
            if key in out and isinstance(out[key], int):
                out[key] = price_str(spec, out[key])
        for key in QTY_FIELDS:
            if key in out and isinstance(out[key], int):
                out[key] = qty_str(spec, out[key])
        for side in ("bids", "asks"):
            if side in out:
                out[side] = [[price_str(spec, p), qty_str(spec, q), str(n)] for p, q, n in out[side]]
    for key in MONEY_FIELDS:
        if key in out and isinstance(out[key], int):
            out[key] = money_str(out[key])
    if account is not None:
        owner = owner_of(account)
        out.pop("account", None)
        out["margin_mode"] = "cross" if owner == account else "isolated"
        order_id = out.get("order_id")
        if isinstance(order_id, str):
            scope = scope_of(owner)
            out["order_id"] = order_id[len(scope):] if order_id.startswith(scope) else order_id
        out.pop("filled_notional", None)
    return out


class StreamFeed:
    """Batches from the read model to the stream servers; listen tokens; withdrawal polling."""

    def __init__(self, market: MarketData, specs: Callable[[], dict[str, InstrumentSpec]],
                 scope_of: Callable[[str], str], path: Path,
                 poll: Callable[[], list[Message]] | None = None,
                 markets: Callable[[], list[MarketData]] | None = None) -> None:
        self.market = market
        # Every read model feeding the streams: `market` alone, or (shard mode) each shard's
        # model in this process's gateway, whose listeners list the app gives `publish` to.
        self.markets: Callable[[], list[MarketData]] = markets or (lambda: [market])
        self.specs = specs
        self.scope_of = scope_of
        self.path = path
        self.poll = poll
        self.pending: list[list[Message]] = []
        self.overrun = False
        self.tokens: dict[str, tuple[str, list[str], float]] = {}  # sha256 -> (user, roles, deadline)
        self._control: list[dict[str, Any]] = []
        self._servers: dict[socket.socket, bytearray] = {}  # server -> bytes it has not taken yet
        self._inbound: dict[socket.socket, bytearray] = {}  # server -> a partial report line
        # Called with a user whose cancel-on-disconnect stream session closed (set by the app).
        self.on_disconnect: Callable[[str], object] | None = None
        # Checks a signed subscribe (docs/market-data.md, "Signed subscribe"); set by the app. It
        # answers {"user", "roles"} or {"code", "error", "message"}.
        self.on_verify: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._next_poll = 0.0
        market.listeners.append(self.publish)

    # ------------------------------------------------------------------ engine side

    def publish(self, batch: list[Message]) -> None:
        """Take one batch (engine thread): append, or drop and flag an overrun; never block."""
        if not batch:
            return
        if len(self.pending) >= MAX_PENDING_BATCHES:
            self.overrun = True
            return
        self.pending.append(batch)

    # ------------------------------------------------------------------ tokens

    def issue_token(self, username: str, roles: list[str], now_ms: int) -> tuple[str, int]:
        """Return a new listen token for ``username`` and when it expires (``now_ms`` + TTL).

        Expiry travels as a time to live: the stream server judges it on its own
        monotonic clock, so the two processes need no common wall clock.
        """
        token = secrets.token_urlsafe(32)
        digest = hashlib.sha256(token.encode()).hexdigest()
        deadline = time.monotonic() + TOKEN_TTL_MS / 1000
        with self._lock:
            now = time.monotonic()
            for key in [k for k, (_, _, end) in self.tokens.items() if end <= now]:
                del self.tokens[key]
            if len(self.tokens) >= MAX_TOKENS:
                raise OverflowError("too many live listen tokens")
            self.tokens[digest] = (username, sorted(roles), deadline)
            self._control.append({"t": "token", "hash": digest, "user": username, "roles": sorted(roles),
                                  "ttl_ms": TOKEN_TTL_MS})
        return token, now_ms + TOKEN_TTL_MS

    # ------------------------------------------------------------------ feed thread

    def start(self) -> None:
        """Listen on the feed socket and start the feed thread."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        os.chmod(self.path, 0o600)
        listener.listen(MAX_SERVERS)
        listener.setblocking(False)
        self._listener = listener
        self._thread = threading.Thread(target=self._run, name="stream-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the feed thread and close the sockets."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for s in [*self._servers, *([self._listener] if self._listener else [])]:
            s.close()
        self._servers = {}
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _run(self) -> None:
        while not self._stop.wait(FEED_INTERVAL_S):
            try:
                self.step()
            except Exception:  # the feed must outlive one bad batch; say so
                log.exception("stream feed step failed")

    def step(self) -> None:
        """Send what is pending to every server, then greet new ones (one round of the thread).

        New servers are accepted after this round's batches went out: their hello is
        rendered from the models *after* the batches, so they never receive a diff that
        their snapshot already contains (a subscriber would see it as a sequence gap).
        """
        for md in self.markets():
            md.catch_up()  # the read model's work happens here, off the engine thread
        self._read_reports()
        lines: list[bytes] = []
        if self.overrun:
            self.pending, self.overrun = [], False
            lines.append(_encode({"t": "reset"}) + b"\n")
            lines.append(self._hello())
        batches, self.pending = self.pending, []
        with self._lock:
            control, self._control = self._control, []
        lines.extend(_encode(c) + b"\n" for c in control)
        if self.poll is not None and time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + POLL_EVERY_S
            polled = self.poll()
            if polled:
                batches.append(polled)
        if batches:
            specs = self.specs()
            rendered = [[c, owner_of(a) if a is not None else None,
                         render(specs.get(p.get("symbol", "")), self.scope_of,
                                a if c in EXCHANGE_PRIVATE else None, p)]
                        for batch in batches for c, a, p in batch]
            lines.append(_encode({"t": "batch", "m": rendered}) + b"\n")
        data = b"".join(lines)
        for server in list(self._servers):
            self._write(server, data)
        self._accept()

    def _read_reports(self) -> None:
        """Take what stream servers sent back: cancel-on-disconnect reports (docs/operations.md)."""
        for server in list(self._servers):
            try:
                data = server.recv(MAX_REPORT_BYTES)
            except BlockingIOError:
                continue
            except OSError:
                self._drop(server, "went away")
                continue
            if not data:
                continue
            inbound = self._inbound.setdefault(server, bytearray())
            inbound += data
            *lines, rest = bytes(inbound).split(b"\n")
            inbound[:] = rest[-MAX_REPORT_BYTES:]
            for line in lines:
                self._report(server, line)

    def _report(self, server: socket.socket, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            return
        if isinstance(msg, dict) and msg.get("t") == "verify":
            self._verify(server, msg)
            return
        user = msg.get("user") if isinstance(msg, dict) and msg.get("t") == "disconnected" else None
        if isinstance(user, str) and self.on_disconnect is not None:
            try:
                self.on_disconnect(user)
            except Exception:  # the feed must keep running; the dead man's switch is the backstop
                log.exception("cancel-on-disconnect for a stream session failed")

    def _verify(self, server: socket.socket, msg: dict[str, Any]) -> None:
        """Answer one signed subscribe, to the stream server that asked only (its numbers are its own)."""
        if self.on_verify is None:
            verdict: dict[str, Any] = {"code": 9504, "error": "not_ready", "message": "no verifier"}
        else:
            try:
                verdict = self.on_verify(msg)
            except Exception:  # a verifier failure refuses this subscribe, never the feed
                log.exception("verifying a signed stream subscribe failed")
                verdict = {"code": 9099, "error": "internal_error", "message": "internal error"}
        if server in self._servers:
            self._write(server, _encode({"t": "verified", "n": msg.get("n"), **verdict}) + b"\n")

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except BlockingIOError:
                return
            if len(self._servers) >= MAX_SERVERS:
                conn.close()
                continue
            conn.setblocking(False)
            self._servers[conn] = bytearray()
            self._write(conn, self._hello())

    def _write(self, server: socket.socket, data: bytes) -> None:
        """Send what the server can take now; keep the rest for the next round (never block)."""
        buffer = self._servers[server]
        buffer += data
        try:
            while buffer:
                sent = server.send(buffer)
                del buffer[:sent]
        except BlockingIOError:
            pass
        except OSError:
            self._drop(server, "went away")
            return
        if len(buffer) > MAX_SERVER_BUFFER_BYTES:
            self._drop(server, f"is more than {MAX_SERVER_BUFFER_BYTES} bytes behind")

    def _drop(self, server: socket.socket, why: str) -> None:
        log.warning("stream server %s; disconnected (it reconnects and gets the current state)", why)
        server.close()
        self._servers.pop(server, None)
        self._inbound.pop(server, None)

    def _hello(self) -> bytes:
        specs = self.specs()
        now = time.monotonic()
        depth: dict[str, dict[str, Any]] = {}
        marks: dict[str, dict[str, Any]] = {}
        for md in self.markets():
            with md.lock:
                depth |= {s: md.depth_view(s, MAX_DEPTH_HELLO) for s in sorted(md.depth) if s in specs}
                marks |= {s: dict(m) for s, m in md.marks.items() if s in specs}
        with self._lock:
            tokens = [{"hash": h, "user": u, "roles": r, "ttl_ms": int((end - now) * 1000)}
                      for h, (u, r, end) in self.tokens.items() if end > now]
        return _encode({"t": "hello",
                        "depth": {s: render(specs[s], self.scope_of, None, v) for s, v in depth.items()},
                        "marks": {s: render(specs[s], self.scope_of, None, v) for s, v in marks.items()},
                        "tokens": tokens}) + b"\n"


def withdrawal_poller(app: Any) -> Callable[[], list[Message]]:
    """Return a poll that reports withdrawal state changes and pending approvals as messages."""
    seen: dict[str, tuple[str, int]] = {}

    def poll() -> list[Message]:
        with app.app_context():
            service = app.extensions["strongroom.access"].withdrawals
            views = service.query(limit=100)
        out: list[Message] = []
        for view in reversed(views):
            data = view.to_json()
            key = (data["state"], data["updated_ms"])
            if seen.get(data["id"]) == key:
                continue
            seen[data["id"]] = key
            row = {"id": data["id"], "asset": data["asset"], "amount": data["amount"],
                   "destination": data["destination"], "state": data["state"],
                   "updated_ms": data["updated_ms"]}
            out.append(("withdrawals", data["username"], row))
            required = data.get("required") or {}
            if data["state"] == "pending_approval" and required.get("group"):
                out.append(("approvals", None, {**row, "username": data["username"],
                                                "group": required["group"],
                                                "approvals": len(data.get("approvals") or []),
                                                "required": required.get("count")}))
        if len(seen) > 1_000:
            for old in list(seen)[:500]:
                del seen[old]
        return out

    return poll
