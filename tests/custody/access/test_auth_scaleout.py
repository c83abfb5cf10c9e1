"""Signed requests in scale-out mode: two API processes, nonces in NATS JetStream KV, keys and
KYC standings cached in memory with invalidation over NATS (docs/scale-out.md, "Signed requests
without the database").

Each test builds two apps on one database: two API processes, each with its own cache and its
own NATS connection. The caches' TTL is five minutes and their clock never moves unless a test moves
it, so a change seen by the other process promptly can only have come through the change feed.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event, update
from werkzeug.test import TestResponse

from custody.access.auth_cache import MAX_TTL_MS, AuthCache
from custody.access.models import ApiKeyRow
from custody.access.replay import DbReplayCache
from custody.api.auth import authenticate
from exchange.api.blueprint import trading_limits
from exchange.instruments import DEFAULT_CONFIG
from exchange.stream.cluster import LocalCluster
from policies.api_key import Scope
from policies.request_signing import sign_request
from policies.roles import Role
from strongroom.auth_fast import EXTENSION, AuthBus, AuthFastSettings, AuthStoreUnavailable, NatsReplayCache

from .helpers import access

CACHE_TTL_MS = MAX_TTL_MS  # five minutes: far longer than any test waits
READY_TIMEOUT_S = 60.0
# Bounds a hang only: the change feed normally arrives in milliseconds.
FEED_DEADLINE_S = 30.0
NATS_TIMEOUT_S = 30
ME = "/api/v1/me"
ORDERS = "/api/v1/exchange/orders"
USDC = 1_000_000
BTC = 60_000 * USDC


class Monotonic:
    """The caches' clock: moved by hand, so a TTL expiry happens only when a test says so."""

    def __init__(self) -> None:
        self.now_ms = 0

    def __call__(self) -> int:
        return self.now_ms


def _wait_ready(urls: list[str]) -> None:
    """Wait until a process can connect and reach the R3 nonce bucket (creating it the first time)."""
    settings = AuthFastSettings("nats", tuple(urls), replicas=3, timeout_s=3)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        bus = AuthBus(settings, AuthCache(), 5_000)
        try:
            bus.ensure()
            return
        except AuthStoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
        finally:
            bus.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 3-node JetStream cluster for this module, with the R3 nonce bucket in place."""
    started = LocalCluster(tmp_path_factory.mktemp("authnats"), 3).start()
    try:
        _wait_ready(started.urls)
        yield started
    finally:
        started.stop()


@pytest.fixture
def nats_urls(cluster: LocalCluster) -> list[str]:
    """The module's cluster, whole again: a test that killed a node does not leak it to the next."""
    for node in cluster.nodes:
        if node.process is None or node.process.poll() is not None:
            cluster.start_node(node)
            _wait_ready(cluster.urls)
    return cluster.urls


def _app(database_url: str, clock: Any, keystore: Any, data_dir: Path, urls: list[str] | str,
         monotonic: Monotonic, **extra: Any) -> Flask:
    from strongroom.app import create_app
    from strongroom.settings import Settings

    config = {"TESTING": True, "CLOCK": clock, "KEYSTORE": keystore, "EXCHANGE_INSTRUMENTS": DEFAULT_CONFIG,
              "RATELIMIT_ENABLED": False, "AUTH_NONCE_STORE": "nats", "AUTH_NATS_URLS": urls,
              "AUTH_CACHE_TTL_MS": CACHE_TTL_MS, "AUTH_CACHE_CLOCK_MS": monotonic,
              "AUTH_NATS_TIMEOUT_S": NATS_TIMEOUT_S, **extra}
    return create_app(config, settings=Settings(data_dir=data_dir, database_url=database_url))


def _close(app: Flask) -> None:
    fast = app.extensions.get(EXTENSION)
    if fast is not None:
        fast.bus.close()
    app.extensions["strongroom.engine"].dispose()


@pytest.fixture
def monotonic() -> Monotonic:
    return Monotonic()


@pytest.fixture
def two(database_url: str, clock: Any, keystore: Any, tmp_path: Path, nats_urls: list[str],
        monotonic: Monotonic) -> Iterator[tuple[Flask, Flask]]:
    """Two API processes on one database and one NATS cluster."""
    apps = [_app(database_url, clock, keystore, tmp_path / name, nats_urls, monotonic) for name in "ab"]
    try:
        yield apps[0], apps[1]
    finally:
        for app in apps:
            _close(app)


class Caller:
    """A user with an API key, signing requests at the shared fake clock's time."""

    def __init__(self, app: Flask, clock: Any, name: str, tier: int = 2,
                 roles: frozenset[Role] = frozenset({Role.TRADER})) -> None:
        _, key = access(app).users.create_user(name, roles, kyc_tier=tier, key_scopes=frozenset(Scope))
        assert key is not None
        self.clock, self.name = clock, name
        self.key_id, self.secret = key.credentials.key_id, key.credentials.secret

    def sign(self, method: str, path: str, body: Any = None, *, at_ms: int | None = None
             ) -> tuple[bytes, dict[str, str]]:
        raw = b"" if body is None else json.dumps(body).encode()
        self.clock.advance(1)
        headers = sign_request(key_id=self.key_id, secret=self.secret,
                               timestamp_ms=self.clock.now_ms if at_ms is None else at_ms,
                               method=method, path=path, body=raw)
        return raw, headers

    def call(self, app: Flask, method: str, path: str, body: Any = None, **kwargs: Any) -> TestResponse:
        return send(app, method, path, *self.sign(method, path, body, **kwargs))


def send(app: Flask, method: str, path: str, raw: bytes, headers: dict[str, str]) -> TestResponse:
    return app.test_client().open(path, method=method, data=raw, headers=headers,
                                  content_type="application/json" if raw else None,
                                  environ_base={"REMOTE_ADDR": "127.0.0.1"})


def error(response: TestResponse) -> tuple[int, str]:
    return response.status_code, (response.get_json() or {}).get("error", "")


def eventually(probe: Callable[[], bool], what: str) -> None:
    """Poll until ``probe()``; the deadline only bounds a hang."""
    deadline = time.monotonic() + FEED_DEADLINE_S
    while not probe():
        assert time.monotonic() < deadline, f"not within {FEED_DEADLINE_S} s: {what}"
        time.sleep(0.02)


def sql_statements(app: Flask, run: Callable[[], Any]) -> int:
    count = [0]

    def counted(*_: Any) -> None:
        count[0] += 1

    engine = app.extensions["strongroom.engine"]
    event.listen(engine, "before_cursor_execute", counted)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", counted)
    return count[0]


# ------------------------------------------------------------------ configuration


def test_auth_store_without_nats_settings_is_the_database() -> None:
    assert AuthFastSettings.of({}, None, {}).store == "db"


@pytest.mark.parametrize("name", ["EXCHANGE_NATS_URLS", "EXCHANGE_SHARD_NATS_URLS"])
def test_auth_store_with_exchange_nats_urls_is_nats(name: str) -> None:
    from_config = AuthFastSettings.of({name: ["nats://a:1", "nats://b:2", "nats://c:3"]}, None, {})
    assert from_config.store == "nats" and from_config.urls == ("nats://a:1", "nats://b:2", "nats://c:3")
    assert from_config.replicas == 3
    from_env = AuthFastSettings.of({}, None, {f"STRONGROOM_{name}": "nats://a:1"})
    assert from_env.store == "nats" and from_env.urls == ("nats://a:1",) and from_env.replicas == 1


def test_auth_store_explicit_db_wins_over_exchange_urls() -> None:
    assert AuthFastSettings.of({"AUTH_NONCE_STORE": "db", "EXCHANGE_NATS_URLS": ["nats://a:1"]}).store == "db"


@pytest.mark.parametrize(("config", "message"), [
    ({"AUTH_NONCE_STORE": "redis"}, "must be db or nats"),
    ({"AUTH_NONCE_STORE": "nats"}, "no NATS servers"),
    ({"AUTH_NONCE_STORE": "nats", "AUTH_NATS_URLS": "nats://a:1", "AUTH_CACHE_TTL_MS": "0"}, "1..300000"),
    ({"AUTH_NONCE_STORE": "nats", "AUTH_NATS_URLS": "nats://a:1", "AUTH_CACHE_TTL_MS": "-5"}, "1..300000"),
])
def test_auth_store_bad_setting_refused_at_startup(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AuthFastSettings.of(config, None, {})


def test_auth_scaleout_docs_name_what_the_code_uses() -> None:
    from custody.access.auth_cache import DEFAULT_TTL_MS
    from strongroom.auth_fast import CHANGED_SUBJECT, NONCE_BUCKET, NONCE_SKEW_MARGIN_MS

    docs = Path(__file__).resolve().parents[3] / "docs"
    text = " ".join((docs / "request-signing.md").read_text().split())
    assert f"`{NONCE_BUCKET}`" in text and f"`{CHANGED_SUBJECT}`" in text
    assert f"default {DEFAULT_TTL_MS:,} ms, at most {MAX_TTL_MS:,}" in text
    assert f"{NONCE_SKEW_MARGIN_MS // 1000} s clock-skew margin" in text
    assert "503 9505 auth_store_unavailable" in text
    assert "| 9505 | auth_store_unavailable | 503 |" in (docs / "api.md").read_text()
    assert "### Signed requests without the database" in (docs / "scale-out.md").read_text()


def test_auth_embedded_app_keeps_the_database_path(app: Flask) -> None:
    assert isinstance(access(app).replay_cache, DbReplayCache)
    assert access(app).users.cache is None and EXTENSION not in app.extensions


def test_auth_scaleout_app_uses_nats_nonces_and_the_cache(two: tuple[Flask, Flask]) -> None:
    a, _ = two
    assert isinstance(access(a).replay_cache, NatsReplayCache)
    assert access(a).users.cache is a.extensions[EXTENSION].cache


# ------------------------------------------------------------------ nonces across processes


def test_auth_scaleout_same_signed_request_racing_on_two_processes_exactly_one_succeeds(
    two: tuple[Flask, Flask], clock: Any
) -> None:
    a, b = two
    alice = Caller(a, clock, "alice")
    for app in (a, b):  # connected and cached, so the race is on the nonce alone
        assert alice.call(app, "GET", ME).status_code == 200
    for _ in range(10):
        raw, headers = alice.sign("GET", ME)
        barrier = threading.Barrier(2)
        answers: list[tuple[int, str]] = []

        def race(app: Flask, raw: bytes = raw, headers: dict[str, str] = headers,
                 barrier: threading.Barrier = barrier, answers: list[tuple[int, str]] = answers) -> None:
            barrier.wait()
            answers.append(error(send(app, "GET", ME, raw, headers)))

        threads = [threading.Thread(target=race, args=(app,)) for app in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(FEED_DEADLINE_S)
        assert sorted(answers) == [(200, ""), (401, "request_replayed")], answers


def test_auth_scaleout_replay_on_the_other_process_refused(two: tuple[Flask, Flask], clock: Any) -> None:
    a, b = two
    alice = Caller(a, clock, "alice")
    raw, headers = alice.sign("GET", ME)
    assert send(a, "GET", ME, raw, headers).status_code == 200
    assert error(send(b, "GET", ME, raw, headers)) == (401, "request_replayed")
    assert error(send(a, "GET", ME, raw, headers)) == (401, "request_replayed")


@pytest.mark.parametrize(("skew_ms", "refusal"),
                         [(-5_001, "timestamp_stale"), (5_001, "timestamp_in_future")])
def test_auth_scaleout_timestamp_outside_window_refused(
    two: tuple[Flask, Flask], clock: Any, skew_ms: int, refusal: str
) -> None:
    a, b = two
    alice = Caller(a, clock, "alice")
    assert error(alice.call(b, "GET", ME, at_ms=clock.now_ms + 1 + skew_ms)) == (401, refusal)


def test_auth_scaleout_wrong_signature_refused_and_not_remembered(
    two: tuple[Flask, Flask], clock: Any
) -> None:
    a, b = two
    alice = Caller(a, clock, "alice")
    raw, headers = alice.sign("GET", ME)
    forged = dict(headers, **{"X-Strongroom-Signature": "0" * 64})
    assert error(send(b, "GET", ME, raw, forged)) == (401, "signature_invalid")
    assert send(a, "GET", ME, raw, headers).status_code == 200  # the genuine one still works once


def test_auth_scaleout_nonce_store_unreachable_refused_with_503(
    database_url: str, clock: Any, keystore: Any, tmp_path: Path, monotonic: Monotonic
) -> None:
    from exchange.stream.cluster import free_ports

    app = _app(database_url, clock, keystore, tmp_path / "c", f"nats://127.0.0.1:{free_ports(1)[0]}",
               monotonic, AUTH_NATS_TIMEOUT_S=2)
    try:
        alice = Caller(app, clock, "alice")
        response = alice.call(app, "GET", ME)
        assert error(response) == (503, "auth_store_unavailable"), response.get_json()
        assert response.get_json()["code"] == 9505
    finally:
        _close(app)


def test_auth_scaleout_nonce_retry_tells_its_own_write_from_another_process(
    two: tuple[Flask, Flask]
) -> None:
    """A retried create refused because the key exists is ours only if it holds our token."""
    bus = two[0].extensions[EXTENSION].bus
    bus.ensure()
    key = "n." + uuid.uuid4().hex
    assert bus.create_nonce(key) is True
    stored = "n." + hashlib.sha256(key.encode()).hexdigest()
    token = bus._run(bus._kv.get(stored), NATS_TIMEOUT_S).value
    assert bus._run(bus._written_by(stored, token), NATS_TIMEOUT_S) is True
    assert bus._run(bus._written_by(stored, b"0" * len(token)), NATS_TIMEOUT_S) is False
    assert bus.create_nonce(key) is False


def test_auth_scaleout_node_loss_keeps_nonces_and_refuses_replays(
    two: tuple[Flask, Flask], clock: Any, cluster: LocalCluster
) -> None:
    a, b = two
    alice = Caller(a, clock, "alice")
    for app in (a, b):
        assert alice.call(app, "GET", ME).status_code == 200
    before = alice.sign("GET", ME)
    assert send(a, "GET", ME, *before).status_code == 200
    cluster.kill_node(cluster.nodes[0])  # the R3 bucket keeps a quorum of two
    accepted: list[tuple[bytes, dict[str, str]]] = []

    def one_accepted() -> bool:  # a leader election may answer 503 for a moment, never 200 twice
        signed = alice.sign("GET", ME)
        status = error(send(b, "GET", ME, *signed))
        assert status in ((200, ""), (503, "auth_store_unavailable")), status
        if status[0] == 200:
            accepted.append(signed)
        return bool(accepted)

    eventually(one_accepted, "a request is accepted with one node down")
    assert error(send(a, "GET", ME, *accepted[0])) == (401, "request_replayed")
    assert error(send(b, "GET", ME, *before)) == (401, "request_replayed")  # from before the loss


# ------------------------------------------------------------------ keys and users from memory


def test_auth_scaleout_cached_order_auth_runs_no_sql(two: tuple[Flask, Flask], clock: Any) -> None:
    a, b = two
    alice = Caller(a, clock, "alice")

    def order_auth() -> None:
        raw, headers = alice.sign("POST", ORDERS, {"symbol": "BTC-PERP", "id": "o1", "side": "buy",
                                                   "qty": 1, "price": BTC})
        with b.test_request_context(ORDERS, method="POST", data=raw, headers=headers,
                                    content_type="application/json"):
            assert authenticate(Scope.TRADE).username == "alice"
            assert trading_limits("alice") is not None

    assert sql_statements(b, order_auth) > 0  # the first one reads the key and the KYC standing
    assert sql_statements(b, order_auth) == 0
    assert sql_statements(b, order_auth) == 0


def test_auth_scaleout_revoked_key_refused_on_the_other_process_via_the_feed(
    two: tuple[Flask, Flask], clock: Any
) -> None:
    a, b = two
    alice = Caller(a, clock, "alice")
    assert alice.call(b, "GET", ME).status_code == 200  # b holds the key now
    access(a).users.revoke_api_key("alice", alice.key_id, actor="alice")
    assert error(alice.call(a, "GET", ME)) == (401, "api_key_revoked")  # the revoking process at once
    eventually(lambda: error(alice.call(b, "GET", ME)) == (401, "api_key_revoked"), "b refuses the key")


def test_auth_scaleout_key_revoked_behind_the_feed_refused_after_the_ttl(
    two: tuple[Flask, Flask], clock: Any, monotonic: Monotonic
) -> None:
    a, b = two
    alice = Caller(a, clock, "alice")
    assert alice.call(b, "GET", ME).status_code == 200
    # Someone with database access revokes the key without announcing it: the documented bound.
    with access(a).sessions.begin() as session:
        session.execute(update(ApiKeyRow).where(ApiKeyRow.key_id == alice.key_id).values(revoked_ms=1))
    assert alice.call(b, "GET", ME).status_code == 200  # still cached: within the TTL
    monotonic.now_ms += CACHE_TTL_MS
    assert error(alice.call(b, "GET", ME)) == (401, "api_key_revoked")


def test_auth_scaleout_disabled_user_refused_on_the_other_process_via_the_feed(
    two: tuple[Flask, Flask], clock: Any
) -> None:
    a, b = two
    alice = Caller(a, clock, "alice")
    assert alice.call(b, "GET", ME).status_code == 200
    access(a).users.set_disabled("alice", True, actor="admin")
    eventually(lambda: error(alice.call(b, "GET", ME)) == (401, "user_disabled"), "b refuses the user")


def test_auth_scaleout_new_key_works_at_once_on_the_other_process(
    two: tuple[Flask, Flask], clock: Any
) -> None:
    a, b = two
    alice = Caller(a, clock, "alice")
    new = access(a).users.create_api_key("alice", frozenset(Scope))
    alice.key_id, alice.secret = new.credentials.key_id, new.credentials.secret
    assert alice.call(b, "GET", ME).status_code == 200


# ------------------------------------------------------------------ KYC limits from memory


def test_auth_scaleout_tier_lowered_on_one_process_caps_orders_on_the_other(
    two: tuple[Flask, Flask], clock: Any
) -> None:
    a, b = two
    b.config["EXCHANGE_DEV_MODE"] = True  # the test sets the index by hand (docs/market.md)
    ops = Caller(a, clock, "ops", 0, frozenset({Role.ADMIN}))
    for source in ("coinbase", "kraken", "bitstamp"):
        r = ops.call(b, "POST", "/api/v1/exchange/operator/quotes",
                     {"underlying": "BTC", "source": source, "price": BTC})
        assert r.status_code == 200, r.get_json()
    carol = Caller(a, clock, "carol", tier=2)
    b.extensions["strongroom.exchange"].credit_deposit("carol", 100_000 * USDC, "dep-carol")
    assert carol.call(b, "POST", "/api/v1/exchange/collateral/deposit", {"amount": 100_000 * USDC}
                      ).status_code == 200
    # Tier 2 (1,000,000 USD cap): 60,000 USD of BTC rests; b caches carol's standing.
    r = carol.call(b, "POST", ORDERS, {"symbol": "BTC-PERP", "id": "big", "side": "buy", "qty": 1000,
                                       "price": BTC})
    assert r.status_code == 201, r.get_json()
    # An officer on the other process approves tier 1 (25,000 USD cap): the resting order is over it.
    kyc = access(a).kyc
    review = kyc.request("carol", 1, "DE")
    kyc.decide("officer1", review["id"], "approve")
    ids = iter(range(1000))

    def capped() -> bool:
        r = carol.call(b, "POST", ORDERS, {"symbol": "BTC-PERP", "id": f"s{next(ids)}", "side": "buy",
                                           "qty": 1, "price": BTC})
        return error(r) == (422, "notional_cap_exceeded")

    eventually(capped, "b applies the tier 1 cap")
    with b.test_request_context("/"):
        limits = trading_limits("carol")
    assert limits is not None and "KYC tier 1" in limits.basis
