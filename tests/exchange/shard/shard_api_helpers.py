"""Shard-mode API apps for the tests: a shard of its own, signed traders, stream read-back."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
from flask import Flask
from werkzeug.test import TestResponse

from exchange.api.shardmode import EXTENSION
from exchange.commands import Deposit, VenueCommand
from exchange.instruments import DEFAULT_CONFIG, load_instruments
from exchange.stream.shard.gateway import ShardGateway
from exchange.stream.shard.wire import ShardCommand, shard_stream
from exchange.stream.topology import ensure_shard_topology
from policies.api_key import Scope
from policies.request_signing import sign_request
from policies.roles import Role

BASE = "/api/v1/exchange"
USDC = 1_000_000
BTC = 60_000 * USDC  # BTC-PERP: 1 contract = 0.001 BTC = 60 USD at this index
SOURCES = ("coinbase", "kraken", "bitstamp")
WAIT_S = 30.0  # only bounds a hang: the replicas answer in milliseconds
READ_TIMEOUT_S = 30.0
SYMBOLS = sorted(load_instruments(DEFAULT_CONFIG).instruments)
_clock_lock = threading.Lock()


def new_shard(urls: list[str]) -> str:
    """Create the command stream of a fresh shard (the session's cluster keeps every test's)."""
    name = "T" + uuid.uuid4().hex[:10].upper()

    async def create() -> None:
        deadline = time.monotonic() + READ_TIMEOUT_S
        while True:
            nc = await nats.connect(servers=urls, connect_timeout=2)
            try:
                await ensure_shard_topology(nc.jetstream(), [name], 3)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)
            finally:
                await nc.close()

    asyncio.run(create())
    return name


def shard_app(urls: list[str], shard: str, database_url: str, clock: Any, keystore: Any,
              data_dir: Path, **extra: Any) -> Flask:
    """Return an API app in shard mode serving every instrument from `shard`."""
    from strongroom.app import create_app
    from strongroom.settings import Settings

    return create_app({"TESTING": True, "CLOCK": clock, "KEYSTORE": keystore,
                       "EXCHANGE_INSTRUMENTS": DEFAULT_CONFIG, "EXCHANGE_SHARD_NATS_URLS": urls,
                       "EXCHANGE_SHARDS": {shard: SYMBOLS}, "EXCHANGE_SHARD_WAIT_S": WAIT_S,
                       "EXCHANGE_DEV_MODE": True, **extra},
                      settings=Settings(data_dir=data_dir, database_url=database_url))


def two_shard_app(urls: list[str], database_url: str, clock: Any, keystore: Any,
                  data_dir: Path) -> tuple[Flask, str, str]:
    """Return an API app serving the BTC instruments from one fresh shard and ETH's from another."""
    from strongroom.app import create_app
    from strongroom.settings import Settings

    config = load_instruments(DEFAULT_CONFIG)
    btc_shard, eth_shard = new_shard(urls), new_shard(urls)
    shards = {btc_shard: [s for s, i in config.instruments.items() if i.underlying == "BTC"],
              eth_shard: [s for s, i in config.instruments.items() if i.underlying == "ETH"]}
    app = create_app({"TESTING": True, "CLOCK": clock, "KEYSTORE": keystore,
                      "EXCHANGE_INSTRUMENTS": DEFAULT_CONFIG,
                      "EXCHANGE_SHARD_NATS_URLS": urls, "EXCHANGE_SHARDS": shards,
                      "EXCHANGE_SHARD_WAIT_S": WAIT_S, "EXCHANGE_DEV_MODE": True},
                     settings=Settings(data_dir=data_dir, database_url=database_url))
    return app, btc_shard, eth_shard


def snapshot_seq(urls: list[str], shard: str) -> int:
    """Return the sequence of the shard leader's latest snapshot (0 if it has none yet)."""
    from exchange.stream.shard.machine import ShardMachine
    from exchange.stream.shard.snapshots import read_snapshot

    async def read() -> int:
        nc = await nats.connect(servers=urls)
        try:
            data = await read_snapshot(nc.jetstream(), shard)
        finally:
            await nc.close()
        return 0 if data is None else ShardMachine.restore(load_instruments(DEFAULT_CONFIG), shard, data).seq

    return asyncio.run(read())


def gateway(app: Flask) -> ShardGateway:
    """Return the app's shard gateway in this process."""
    found: ShardGateway = app.extensions[EXTENSION].get()
    return found


def close(app: Flask) -> None:
    app.extensions[EXTENSION].close()
    app.extensions["strongroom.engine"].dispose()


def seed(app: Flask, shard: str, cmd: VenueCommand, now_ms: int) -> Any:
    """Append an operator command (collateral, marks) straight to the shard; return its result."""
    sent = gateway(app).submit(shard, "r." + uuid.uuid4().hex, ShardCommand(cmd=cmd, ts_ms=now_ms))
    assert sent.result is not None and sent.result.code == 0, sent
    return sent.result


def fund(app: Flask, shard: str, user: str, amount: int, now_ms: int) -> None:
    seed(app, shard, Deposit(user, amount), now_ms)


class Trader:
    """A user with an API key; every request is HMAC-signed at the shared fake clock's time."""

    def __init__(self, app: Flask, clock: Any, name: str, *, tier: int = 2,
                 roles: frozenset[Role] = frozenset({Role.TRADER})) -> None:
        _, key = app.extensions["strongroom.access"].users.create_user(
            name, roles, kyc_tier=tier, key_scopes=frozenset(Scope))
        self.app, self.clock, self.name = app, clock, name
        self.key_id, self.secret = key.credentials.key_id, key.credentials.secret

    def call(self, method: str, path: str, body: Any = None, *, app: Flask | None = None,
             query: str = "") -> TestResponse:
        raw = b"" if body is None else json.dumps(body).encode()
        with _clock_lock:
            self.clock.advance(1)
            now = self.clock.now_ms
        headers = sign_request(key_id=self.key_id, secret=self.secret, timestamp_ms=now,
                               method=method, path=path, query=query, body=raw)
        client = (app or self.app).test_client()
        return client.open(path + (f"?{query}" if query else ""), method=method, data=raw,
                           headers=headers, content_type="application/json" if raw else None,
                           environ_base={"REMOTE_ADDR": "127.0.0.1"})

    def order(self, oid: str, side: str, qty: int, price: int = BTC, *, symbol: str = "BTC-PERP",
              app: Flask | None = None, **extra: Any) -> TestResponse:
        return self.call("POST", f"{BASE}/orders", {"symbol": symbol, "id": oid, "side": side,
                                                    "qty": qty, "price": price, **extra}, app=app)


def mark(admin: Trader, underlying: str, price: int, app: Flask | None = None) -> None:
    """Quote `underlying` at `price` from every source (dev mode): the shard's index and marks."""
    for source in SOURCES:
        r = admin.call("POST", f"{BASE}/operator/quotes",
                       {"underlying": underlying, "source": source, "price": price}, app=app)
        assert r.status_code == 200, r.get_json()


def mark_btc(admin: Trader, app: Flask | None = None) -> None:
    """Quote BTC at 60,000 USD from every source (dev mode): the shard's index and marks."""
    mark(admin, "BTC", BTC, app)


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = READ_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def stream_bodies(urls: list[str], shard: str) -> list[bytes]:
    """Return every command body of the shard's stream, in stream order."""
    async def read() -> list[bytes]:
        nc = await nats.connect(servers=urls)
        try:
            js = nc.jetstream()
            info = await js.stream_info(shard_stream(shard))
            return [(await js.get_msg(shard_stream(shard), seq)).data or b""
                    for seq in range(1, int(info.state.last_seq or 0) + 1)]
        finally:
            await nc.close()

    return asyncio.run(read())


class WorkerThread:
    """A shard leader (`run_shard_worker`) on its own event loop in a thread, stopped cleanly."""

    def __init__(self, urls: list[str], config: Any, shard: str, *, snapshot_every: int) -> None:
        from exchange.stream.shard.worker import run_shard_worker

        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._run = lambda: run_shard_worker(urls, config, shard, name="leader",
                                             snapshot_every=snapshot_every, stop=self._stop)
        self._thread = threading.Thread(target=self._main, name=f"worker-{shard}", daemon=True)
        self.error: BaseException | None = None

    def _main(self) -> None:
        try:
            self._loop.run_until_complete(self._run())
        except BaseException as exc:  # reported by the test through `error`
            self.error = exc

    def __enter__(self) -> WorkerThread:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(READ_TIMEOUT_S)
        assert not self._thread.is_alive(), "the shard worker did not stop"
        assert self.error is None, self.error
