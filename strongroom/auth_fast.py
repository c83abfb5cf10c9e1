"""Signed requests without the database in scale-out mode (docs/scale-out.md, docs/request-signing.md).

The embedded mode (``make run``) checks every signed request against the
database: the key row and its sealed secret, a nonce INSERT for replay
protection, and the KYC standing for trading limits. Several API processes
(gunicorn workers, replicas) would put those round trips on every order. In
scale-out mode this module replaces them, per process:

- **Nonces** go to a NATS JetStream key-value bucket (``AUTH_NONCE``, R3):
  ``create`` of the key ``n.<sha256 of key id:signature>`` is create-if-absent,
  decided by the stream's leader in one order for every process, so of two
  gateways racing with the same signed request exactly one succeeds and the
  other answers ``request_replayed``. The bucket's max age (entries expire)
  is twice the receive window plus a clock-skew margin: a signed request is
  accepted only inside ``timestamp +- window`` on any gateway, so its nonce is
  remembered for as long as any gateway could accept it. NATS unreachable:
  refused with 503 ``auth_store_unavailable`` (never accepted unchecked).
- **Keys, users and KYC standings** come from `custody.access.auth_cache.AuthCache`.
  Every change that can make an entry stale (key revoked, user disabled, KYC
  decision) is published after its commit on the core NATS subject
  ``strongroom.auth.changed`` (the username); every process evicts that
  user's entries when it arrives, typically within milliseconds. An entry
  lives at most ``AUTH_CACHE_TTL_MS`` (default 10 s) whatever happens, which
  bounds a missed message (a change made while NATS was down, or straight in
  the database). The cache is used only while this process's NATS connection
  is up; on disconnect and on reconnect it is emptied (messages may have been
  missed) and requests read the database until the connection is back.

Scale-out mode is on when ``AUTH_NONCE_STORE`` is ``nats``, or when it is
unset and NATS servers are configured for the exchange
(``EXCHANGE_SHARD_NATS_URLS`` or ``EXCHANGE_NATS_URLS``). ``AUTH_NONCE_STORE=db``
keeps the database path. Each setting is read from the app config first,
then from the environment with the ``STRONGROOM_`` prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Final, Protocol

import nats
from flask import Flask
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import APIError, BucketNotFoundError, ServiceUnavailableError

from custody.access.auth_cache import DEFAULT_TTL_MS, MAX_TTL_MS, AuthCache, monotonic_ms
from custody.api.errors import ApiError, RequestCode
from custody.api.services import AccessServices
from policies.request_signing import MAX_RECV_WINDOW_MS

log = logging.getLogger(__name__)

EXTENSION: Final = "strongroom.auth_fast"
STORES: Final = ("db", "nats")
CHANGED_SUBJECT: Final = "strongroom.auth.changed"
NONCE_BUCKET: Final = "AUTH_NONCE"
# Gateways' clocks may disagree by this much and a nonce is still remembered long enough.
NONCE_SKEW_MARGIN_MS: Final = 10_000
NONCE_TOKEN_BYTES: Final = 16
NONCE_ATTEMPTS: Final = 3
NONCE_RETRY_PAUSE_S: Final = 0.1
NONCE_SUBJECT_PREFIX: Final = f"$KV.{NONCE_BUCKET}."
EXPECTED_LAST_SUBJECT_SEQUENCE: Final = "Nats-Expected-Last-Subject-Sequence"
# JetStream's "wrong last sequence" refusals: the key exists, so the nonce was used.
WRONG_LAST_SEQUENCE_CODES: Final = (10071, 10164)
# The whole message counts (headers too): a bound, so the bucket holds nonces and nothing else.
NONCE_MESSAGE_BYTES_MAX: Final = 1024
DEFAULT_TIMEOUT_S: Final = 5.0
CONNECT_TIMEOUT_S: Final = 5.0
RETRY_BACKOFF_S: Final = 1.0
REPLICAS_MAX: Final = 3
USERNAME_BYTES_MAX: Final = 256


class AuthStoreUnavailable(ApiError):
    """The nonce store (NATS) did not answer: the request is refused, never accepted unchecked."""

    def __init__(self, message: str) -> None:
        super().__init__(RequestCode.AUTH_STORE_UNAVAILABLE, message, 503)


@dataclass(frozen=True, slots=True)
class AuthFastSettings:
    """Where signed requests are checked: ``db`` (the embedded default) or ``nats``."""

    store: str
    urls: tuple[str, ...] = ()
    cache_ttl_ms: int = DEFAULT_TTL_MS
    replicas: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def of(cls, config: Mapping[str, Any], settings: Any = None,
           environ: Mapping[str, str] | None = None) -> AuthFastSettings:
        """Read the settings from the app config, then the ``Settings``, then the environment."""
        env = os.environ if environ is None else environ

        def read(name: str) -> Any:
            if config.get(name) is not None:
                return config[name]
            return env.get(f"STRONGROOM_{name}") or None

        exchange_urls = (_urls(read("EXCHANGE_SHARD_NATS_URLS"))
                         or _urls(getattr(settings, "exchange_shard_nats_urls", ()))
                         or _urls(read("EXCHANGE_NATS_URLS"))
                         or _urls(getattr(settings, "exchange_nats_urls", ())))
        store = str(read("AUTH_NONCE_STORE") or ("nats" if exchange_urls else "db")).strip().lower()
        if store not in STORES:
            raise ValueError(f"AUTH_NONCE_STORE was {store[:20]!r}, must be db or nats")
        if store == "db":
            return cls("db")
        urls = _urls(read("AUTH_NATS_URLS")) or exchange_urls
        if not urls:
            raise ValueError("AUTH_NONCE_STORE is nats but no NATS servers are configured "
                             "(AUTH_NATS_URLS, EXCHANGE_SHARD_NATS_URLS or EXCHANGE_NATS_URLS)")
        ttl_ms = _int(read("AUTH_CACHE_TTL_MS"), DEFAULT_TTL_MS, "AUTH_CACHE_TTL_MS", 1, MAX_TTL_MS)
        replicas = _int(read("AUTH_NATS_REPLICAS"), min(REPLICAS_MAX, len(urls)), "AUTH_NATS_REPLICAS",
                        1, 5)
        timeout_s = float(read("AUTH_NATS_TIMEOUT_S") or DEFAULT_TIMEOUT_S)
        if not 0 < timeout_s <= 60:
            raise ValueError(f"AUTH_NATS_TIMEOUT_S was {timeout_s}, must be in (0, 60]")
        return cls("nats", urls, ttl_ms, replicas, timeout_s)


def _urls(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(str(u).strip() for u in items if str(u).strip())


def _int(value: Any, default: int, name: str, low: int, high: int) -> int:
    if value is None:
        return default
    text = str(value).strip()
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"{name} was {text[:20]!r}, must be an integer {low}..{high}")
    return int(text)


class SharedConnection(Protocol):
    """Another user's started NATS connection and loop this bus can ride on (the shard gateway)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def connection(self) -> Any: ...

    disconnected_cbs: list[Callable[[], Awaitable[None]]]
    reconnected_cbs: list[Callable[[], Awaitable[None]]]


class AuthBus:
    """This process's NATS connection for signed requests: the nonce bucket and the change feed.

    Started lazily in the process that uses it (gunicorn forks after the app
    is built); a background thread runs its event loop. With ``share`` (shard
    mode, same servers: `share_with_shard_gateway`) it opens no connection of its
    own: it uses the process's shard gateway's connection and loop thread, so a
    signed order wakes one event loop, not two (its disconnects and reconnects
    reach this bus through the gateway's callback lists).
    """

    def __init__(self, settings: AuthFastSettings, cache: AuthCache, recv_window_ms: int,
                 share: Callable[[], SharedConnection] | None = None) -> None:
        assert settings.store == "nats" and settings.urls
        self.settings = settings
        self.cache = cache
        self.share = share
        self._host: SharedConnection | None = None
        self._sub: Any = None
        self.nonce_ttl_ms = 2 * max(recv_window_ms, 1) + NONCE_SKEW_MARGIN_MS
        assert self.nonce_ttl_ms <= 2 * MAX_RECV_WINDOW_MS + NONCE_SKEW_MARGIN_MS
        self._lock = threading.Lock()
        self._pid = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nc: Any = None
        self._kv: Any = None
        self._js: Any = None
        self._live = False
        self._retry_at = 0.0
        self._connect_timeout_s = min(CONNECT_TIMEOUT_S, settings.timeout_s)

    # -- lifecycle ---------------------------------------------------------------------------

    def feed_live(self) -> bool:
        """True while this process is connected and subscribed to the change feed (connect first)."""
        try:
            self.ensure()
        except AuthStoreUnavailable:
            return False
        return self._live and self._pid == os.getpid()

    def ensure(self) -> None:
        """Connect in this process if not yet; raise `AuthStoreUnavailable` if NATS does not answer."""
        if self._kv is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._kv is not None and self._pid == os.getpid():
                return
            self._live = False
            if time.monotonic() < self._retry_at and self._pid == os.getpid():
                raise AuthStoreUnavailable("the nonce store (NATS) is unreachable; retry in a moment")
            if self.share is not None:
                self._attach_shared()
            elif self._loop is None or self._pid != os.getpid():
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="auth-nats", daemon=True).start()
                self._pid = os.getpid()
                self._nc = self._kv = None
            try:
                self._run(self._connect(), 2 * self._connect_timeout_s + self.settings.timeout_s)
            except Exception as exc:
                # Requests arriving meanwhile are refused at once instead of each waiting to connect.
                self._retry_at = time.monotonic() + RETRY_BACKOFF_S
                if isinstance(exc, AuthStoreUnavailable):
                    raise
                raise AuthStoreUnavailable(f"the nonce store (NATS) is unreachable: {type(exc).__name__}") \
                    from None

    def _attach_shared(self) -> None:
        """Ride on the shard gateway's connection and loop in this process (the caller holds the lock)."""
        assert self.share is not None
        try:
            host = self.share()  # starts this process's gateway if it is not yet
        except Exception as exc:
            # Requests arriving meanwhile are refused at once instead of each waiting to connect.
            self._pid, self._retry_at = os.getpid(), time.monotonic() + RETRY_BACKOFF_S
            raise AuthStoreUnavailable(f"the nonce store (NATS) is unreachable: {type(exc).__name__}") \
                from None
        if host is self._host and self._pid == os.getpid():
            return
        self._host, self._pid, self._loop = host, os.getpid(), host.loop
        self._nc = self._kv = self._sub = None
        host.disconnected_cbs.append(self._on_disconnected)
        host.reconnected_cbs.append(self._on_reconnected)

    async def _connect(self) -> None:
        if self._nc is None and self._host is not None:
            nc = self._host.connection
            self._sub = await nc.subscribe(CHANGED_SUBJECT, cb=self._on_changed)
            await nc.flush(timeout=self.settings.timeout_s)
            self._nc = nc
        if self._nc is None:
            # The first connection is bounded here (nats-py would retry it forever); once
            # connected, it reconnects on its own for as long as the process lives.
            self._nc = await asyncio.wait_for(nats.connect(
                servers=list(self.settings.urls), connect_timeout=self._connect_timeout_s,
                max_reconnect_attempts=-1, allow_reconnect=True,
                disconnected_cb=self._on_disconnected, reconnected_cb=self._on_reconnected,
                error_cb=self._on_error), self._connect_timeout_s)
            await self._nc.subscribe(CHANGED_SUBJECT, cb=self._on_changed)
            await self._nc.flush(timeout=self.settings.timeout_s)
        js = self._nc.jetstream(timeout=self.settings.timeout_s)
        for attempt in range(NONCE_ATTEMPTS):  # a stream leader election answers 503 for a moment
            try:
                self._kv = await self._nonce_bucket(js)
                break
            except (APIError, NoRespondersError, NatsTimeoutError):
                if attempt + 1 == NONCE_ATTEMPTS:
                    raise
                await asyncio.sleep(NONCE_RETRY_PAUSE_S * (attempt + 1))
        self._js = js
        self.cache.clear()
        self._live = True

    async def _nonce_bucket(self, js: Any) -> Any:
        need_s = self.nonce_ttl_ms / 1000
        try:
            kv = await js.key_value(NONCE_BUCKET)
        except BucketNotFoundError:
            return await js.create_key_value(KeyValueConfig(
                bucket=NONCE_BUCKET, history=1, ttl=need_s, storage=StorageType.FILE,
                replicas=self.settings.replicas, max_value_size=NONCE_MESSAGE_BYTES_MAX,
                description="signed-request nonces (strongroom.auth_fast)"))
        ttl = (await kv.status()).ttl
        if ttl is not None and 0 < ttl < need_s:
            raise AuthStoreUnavailable(f"bucket {NONCE_BUCKET} keeps nonces {ttl:.0f} s, this process needs "
                                       f"{need_s:.0f} s (receive window x 2 + skew margin)")
        return kv

    def close(self) -> None:
        """Disconnect and stop the loop (tests; a process exiting needs nothing).

        On a shared connection only this bus's subscription goes; the gateway owns the rest.
        """
        with self._lock:
            loop, nc, host, sub = self._loop, self._nc, self._host, self._sub
            self._live, self._kv, self._nc, self._loop = False, None, None, None
            self._host = self._sub = None
        if loop is None or self._pid != os.getpid():
            return
        if host is not None:
            with contextlib.suppress(ValueError):
                host.disconnected_cbs.remove(self._on_disconnected)
            with contextlib.suppress(ValueError):
                host.reconnected_cbs.remove(self._on_reconnected)
            if sub is not None and loop.is_running():
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(sub.unsubscribe(), loop).result(CONNECT_TIMEOUT_S)
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_shutdown(nc), loop).result(CONNECT_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)

    # -- callbacks (on the loop) -------------------------------------------------------------

    async def _on_changed(self, msg: Any) -> None:
        if len(msg.data) <= USERNAME_BYTES_MAX:
            self.cache.invalidate(msg.data.decode("utf-8", "replace"))

    async def _on_disconnected(self) -> None:
        self._live = False
        self.cache.clear()

    async def _on_reconnected(self) -> None:
        # Changes published while we were away never reach us: start from the database again.
        self.cache.clear()
        self._live = self._kv is not None

    async def _on_error(self, exc: Exception) -> None:
        # A refused (re)connection repeats every couple of seconds while a server is down.
        level = logging.INFO if isinstance(exc, OSError) else logging.WARNING
        log.log(level, "auth NATS connection: %s", type(exc).__name__)

    # -- operations --------------------------------------------------------------------------

    def create_nonce(self, nonce: str) -> bool:
        """Create the nonce's key; False if it exists (a replay). Raise if NATS does not answer."""
        self.ensure()
        key = "n." + hashlib.sha256(nonce.encode("utf-8")).hexdigest()
        try:
            created: bool = self._run(self._create(key), self.settings.timeout_s + 2)
        except Exception as exc:
            log.warning("nonce store refused a create: %s: %s", type(exc).__name__, str(exc)[:200])
            raise AuthStoreUnavailable(f"the nonce store (NATS) did not answer: {type(exc).__name__}") \
                from None
        return created

    async def _create(self, key: str) -> bool:
        # Create-if-absent is the publish's expected last subject sequence 0, checked by the
        # stream's leader. Not KeyValue.create: on a refusal it re-reads the key to tell a
        # tombstone from a live key, and that read may reach a replica the winner's write has not
        # reached yet. Nonce keys are never deleted (they expire with the bucket's max age).
        # A leader election (no responders, 503) or a lost answer is retried; the value is a
        # token of this attempt, so a retry refused because the key exists can tell its own
        # earlier write (accepted) from another process's (a replay).
        token = os.urandom(NONCE_TOKEN_BYTES).hex().encode("ascii")
        for attempt in range(NONCE_ATTEMPTS):
            try:
                await self._js.publish(NONCE_SUBJECT_PREFIX + key, token,
                                       timeout=self.settings.timeout_s / NONCE_ATTEMPTS,
                                       headers={EXPECTED_LAST_SUBJECT_SEQUENCE: "0"})
                return True
            except APIError as err:
                if err.err_code in WRONG_LAST_SEQUENCE_CODES:
                    return attempt > 0 and await self._written_by(key, token)
                if not isinstance(err, ServiceUnavailableError) or attempt + 1 == NONCE_ATTEMPTS:
                    raise
            except (NoRespondersError, NatsTimeoutError):
                if attempt + 1 == NONCE_ATTEMPTS:
                    raise
            await asyncio.sleep(NONCE_RETRY_PAUSE_S * (attempt + 1))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _written_by(self, key: str, token: bytes) -> bool:
        entry = await self._kv.get(key)
        return bool(entry.value == token)

    def publish_change(self, username: str) -> None:
        """Tell every process ``username``'s keys, user or KYC standing changed (after the commit)."""
        try:
            self.ensure()
            self._run(self._publish(username.encode("utf-8")), self.settings.timeout_s + 1)
        except Exception as exc:
            # Committed already; the other processes drop the entry within the cache TTL anyway.
            log.error("auth change of %s not published (%s): other API processes keep it at most %d ms",
                      username[:64], type(exc).__name__, self.cache.ttl_ms)

    async def _publish(self, data: bytes) -> None:
        await self._nc.publish(CHANGED_SUBJECT, data)
        await self._nc.flush(timeout=self.settings.timeout_s)

    def _run(self, coro: Any, timeout_s: float) -> Any:
        assert self._loop is not None
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout_s)
        except BaseException:
            future.cancel()  # a timed-out call must not go on in the background
            raise


async def _shutdown(nc: Any) -> None:
    if nc is not None:
        with contextlib.suppress(Exception):
            await nc.close()
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


class NatsReplayCache:
    """`policies.replay_cache.ReplayCache` over the JetStream KV nonce bucket, shared by every process."""

    def __init__(self, bus: AuthBus) -> None:
        self._bus = bus

    def remember(self, nonce: str, expires_at_ms: int, now_ms: int) -> bool:
        if expires_at_ms <= now_ms:
            return False
        # The bucket must outlive the nonce; a longer life than the window allows means a bad clock.
        if expires_at_ms - now_ms > self._bus.nonce_ttl_ms - NONCE_SKEW_MARGIN_MS:
            return False
        return self._bus.create_nonce(nonce)


@dataclass(frozen=True)
class AuthFast:
    """What `init_app` installed in scale-out mode."""

    settings: AuthFastSettings
    cache: AuthCache
    bus: AuthBus


def init_app(app: Flask) -> AuthFast | None:
    """Switch signed-request checks to memory + NATS in scale-out mode; None: the database path."""
    settings = AuthFastSettings.of(app.config, app.extensions.get("strongroom.settings"))
    if settings.store == "db":
        return None
    services: AccessServices = app.extensions["strongroom.access"]
    cache = AuthCache(settings.cache_ttl_ms, clock_ms=app.config.get("AUTH_CACHE_CLOCK_MS") or monotonic_ms)
    bus = AuthBus(settings, cache, services.recv_window_ms)
    cache.feed_live = bus.feed_live

    def changed(username: str) -> None:
        cache.invalidate(username)
        bus.publish_change(username)

    services.users.cache = cache
    services.users.changed.append(bus.publish_change)
    services.kyc.changed.append(changed)
    app.extensions["strongroom.access"] = dataclasses.replace(services, replay_cache=NatsReplayCache(bus))
    fast = AuthFast(settings, cache, bus)
    app.extensions[EXTENSION] = fast
    return fast


def share_with_shard_gateway(app: Flask, gateway: Callable[[], SharedConnection],
                             urls: list[str] | tuple[str, ...]) -> bool:
    """Let the nonce store and change feed use the shard gateway's connection and loop thread.

    Only when the auth bus talks to the same NATS servers (the default in shard mode); the
    composition root calls it after the exchange API is set up. Return whether it shares.
    """
    fast: AuthFast | None = app.extensions.get(EXTENSION)
    if fast is None or tuple(fast.settings.urls) != tuple(urls):
        return False
    fast.bus.share = gateway
    return True


def cache_of(app: Flask) -> AuthCache | None:
    """Return the app's auth cache in scale-out mode, None on the database path."""
    fast: AuthFast | None = app.extensions.get(EXTENSION)
    return None if fast is None else fast.cache
