"""Shard mode: the signed-request nonce store and change feed ride on the shard gateway's NATS
connection and loop thread (one per API process), keeping every property of the nonce store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from shard_api_helpers import BASE, BTC, USDC, Trader, close, fund, gateway, mark_btc, new_shard, shard_app

from exchange.stream.cluster import LocalCluster
from policies.request_signing import sign_request
from policies.roles import Role
from strongroom.auth_fast import EXTENSION, share_with_shard_gateway

CALLBACK_TIMEOUT_S = 30.0  # only bounds a hang


@pytest.fixture
def app(nats_cluster: LocalCluster, postgres_url: str, clock: Any, keystore: Any,
        tmp_path: Path) -> Iterator[Flask]:
    shard = new_shard(nats_cluster.urls)
    built = shard_app(nats_cluster.urls, shard, postgres_url, clock, keystore, tmp_path / "a")
    built.config["TEST_SHARD"] = shard
    try:
        yield built
    finally:
        built.extensions[EXTENSION].bus.close()
        close(built)


def test_shard_api_auth_nonce_store_uses_the_gateway_connection_and_refuses_replays(
        app: Flask, clock: Any) -> None:
    admin = Trader(app, clock, "ops", tier=0, roles=frozenset({Role.ADMIN}))
    mark_btc(admin)
    alice = Trader(app, clock, "alice")
    fund(app, app.config["TEST_SHARD"], "alice", 10_000 * USDC, clock.now_ms)
    raw = json.dumps({"symbol": "BTC-PERP", "id": "b-1", "side": "buy", "qty": 1,
                      "price": BTC - 100 * USDC}).encode()
    clock.advance(1)
    headers = sign_request(key_id=alice.key_id, secret=alice.secret, timestamp_ms=clock.now_ms,
                           method="POST", path=f"{BASE}/orders", body=raw)

    def send() -> Any:
        return app.test_client().post(f"{BASE}/orders", data=raw, headers=headers,
                                      content_type="application/json",
                                      environ_base={"REMOTE_ADDR": "127.0.0.1"})

    first = send()
    assert first.status_code == 201, first.get_json()
    bus, gw = app.extensions[EXTENSION].bus, gateway(app)
    assert bus._nc is gw.connection and bus._loop is gw.loop  # one connection, one loop thread
    replayed = send()
    assert replayed.status_code == 401, replayed.get_json()
    assert replayed.get_json()["error"] == "request_replayed"


def test_shard_api_shared_connection_drop_empties_auth_cache_until_reconnected(
        app: Flask, clock: Any) -> None:
    alice = Trader(app, clock, "alice")
    assert alice.call("GET", f"{BASE}/account").status_code == 200
    fast = app.extensions[EXTENSION]
    gw = gateway(app)
    assert fast.bus.feed_live() and len(fast.cache) > 0
    asyncio.run_coroutine_threadsafe(gw._disconnected(), gw.loop).result(CALLBACK_TIMEOUT_S)
    assert not fast.bus.feed_live() and len(fast.cache) == 0  # changes may be missed: read through
    asyncio.run_coroutine_threadsafe(gw._reconnected(), gw.loop).result(CALLBACK_TIMEOUT_S)
    assert fast.bus.feed_live() and len(fast.cache) == 0
    assert alice.call("GET", f"{BASE}/account").status_code == 200
    assert len(fast.cache) > 0


def test_shard_api_auth_on_other_nats_servers_keeps_its_own_connection(app: Flask) -> None:
    holder = app.extensions["strongroom.exchange.shards"]
    assert share_with_shard_gateway(app, holder.get, ["nats://elsewhere:4222"]) is False
    assert share_with_shard_gateway(app, holder.get, holder.urls) is True


def _fetch_calls(urls: list[str], stored: int) -> tuple[int, int]:
    """Store `stored` messages on a fresh stream, fetch_ready once as a replica does; return
    (messages returned, fetch calls made)."""
    import uuid

    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

    from exchange.stream.follower import fetch_ready

    name = "FR" + uuid.uuid4().hex[:10].upper()

    async def run() -> tuple[int, int]:
        nc = await nats.connect(servers=urls, connect_timeout=5)
        try:
            js = nc.jetstream(timeout=CALLBACK_TIMEOUT_S)
            await js.add_stream(StreamConfig(name=name, subjects=[f"fr.{name}"], num_replicas=1))
            for i in range(stored):
                await js.publish(f"fr.{name}", str(i).encode())
            sub = await js.pull_subscribe(f"fr.{name}", stream=name, config=ConsumerConfig(
                ack_policy=AckPolicy.NONE, mem_storage=True, num_replicas=1))
            calls = [0]
            fetch = sub.fetch

            async def counted(*args: Any, **kwargs: Any) -> Any:
                calls[0] += 1
                return await fetch(*args, **kwargs)

            sub.fetch = counted  # type: ignore[method-assign]
            msgs = await fetch_ready(sub, 16, CALLBACK_TIMEOUT_S, drain_idle=False)
            await js.delete_stream(name)
            return len(msgs), calls[0]
        finally:
            await nc.close()

    return asyncio.run(run())


def test_replica_fetch_of_a_lone_message_skips_the_drain_fetch(nats_cluster: LocalCluster) -> None:
    assert _fetch_calls(nats_cluster.urls, 1) == (1, 1)


def test_replica_fetch_with_messages_pending_still_drains_them(nats_cluster: LocalCluster) -> None:
    got, calls = _fetch_calls(nats_cluster.urls, 3)
    assert calls == 2 and got >= 1  # the drain ran (what it takes in its linger is load-dependent)
