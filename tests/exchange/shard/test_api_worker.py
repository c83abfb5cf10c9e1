"""Shard-mode API next to a real shard leader: the replicas agree with it, and start from its snapshot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from shard_api_helpers import (
    BASE,
    BTC,
    USDC,
    Trader,
    WorkerThread,
    close,
    fund,
    gateway,
    mark_btc,
    new_shard,
    shard_app,
    snapshot_seq,
    wait_for,
)

from exchange.instruments import DEFAULT_CONFIG, load_instruments
from exchange.stream.cluster import LocalCluster
from policies.roles import Role

SNAPSHOT_EVERY = 5  # the leader snapshots (and hashes its batches) every 5 commands


def test_shard_api_replica_matches_leader_results_and_hashes_and_restores_from_its_snapshot(
        nats_cluster: LocalCluster, postgres_url: str, clock: Any, keystore: Any,
        tmp_path: Path) -> None:
    shard = new_shard(nats_cluster.urls)
    config = load_instruments(DEFAULT_CONFIG)
    one = shard_app(nats_cluster.urls, shard, postgres_url, clock, keystore, tmp_path / "a",
                    EXCHANGE_SHARD_HASH_EVERY=SNAPSHOT_EVERY)
    two = None
    try:
        with WorkerThread(nats_cluster.urls, config, shard, snapshot_every=SNAPSHOT_EVERY):
            ops = Trader(one, clock, "ops", tier=0, roles=frozenset({Role.ADMIN}))
            mark_btc(ops)
            alice, bob = Trader(one, clock, "alice"), Trader(one, clock, "bob")
            fund(one, shard, "alice", 10_000 * USDC, clock.now_ms)
            fund(one, shard, "bob", 10_000 * USDC, clock.now_ms)
            for i in range(6):
                assert bob.order(f"a{i}", "sell", 2, BTC + i * 100_000).status_code == 201
            assert alice.order("b", "buy", 7, BTC + 300_000).status_code == 201
            assert alice.call("DELETE", f"{BASE}/orders/BTC-PERP/b").status_code in (200, 404)
            replica = gateway(one).replicas[shard]
            last = replica.machine.seq
            # Every result the leader published is the replica's, and its state hashes too.
            # (The check follows the leader's batches from its start: the very first may be missed.)
            wait_for(lambda: replica.checked_hashes == last // SNAPSHOT_EVERY
                     and replica.checked_results >= last - SNAPSHOT_EVERY, "the leader's batches checked")
            assert replica.diverged == 0 and replica.failed is None
            # A process started now restores the leader's latest snapshot, then tails the stream.
            wait_for(lambda: snapshot_seq(nats_cluster.urls, shard) >= last // SNAPSHOT_EVERY
                     * SNAPSHOT_EVERY, "the leader's snapshot")
            two = shard_app(nats_cluster.urls, shard, postgres_url, clock, keystore, tmp_path / "b")
            late = gateway(two).replicas[shard]
            assert late.machine.seq == last  # its first request waited for it to catch up
            assert late.results.get(1) is None  # it never applied the head of the stream
            r = alice.call("GET", f"{BASE}/positions", app=two)
            assert [(p["symbol"], p["size"]) for p in r.get_json()["positions"]] == [("BTC-PERP", 7)]
            mark_btc(ops, app=two)
            assert alice.order("c", "buy", 1, BTC - 100_000, app=two).status_code == 201
            wait_for(lambda: replica.machine.seq == late.machine.seq, "the first replica")
            with replica.lock, late.lock:
                assert replica.machine.state_hash() == late.machine.state_hash()
        text = generate_latest(one.extensions["strongroom.metrics"].registry).decode()
        assert f'strongroom_shard_replica_seq{{shard="{shard}"}}' in text
        assert f'strongroom_shard_appends_total{{outcome="ok",shard="{shard}"}}' in text
    finally:
        close(one)
        if two is not None:
            close(two)


def _replica(hash_every: int = 2) -> Any:
    from prometheus_client import CollectorRegistry

    from exchange.stream.shard.gateway import Replica
    from exchange.stream.shard.machine import ShardMachine
    from exchange.stream.shard.metrics import ShardMetrics

    config = load_instruments(DEFAULT_CONFIG)
    return Replica("T1", ShardMachine(config, "T1"), ShardMetrics(CollectorRegistry()), hash_every)


def _bodies(n: int) -> list[tuple[int, bytes]]:
    from exchange.commands import Deposit
    from exchange.stream.shard.wire import ShardCommand, encode_command

    return [(i, encode_command(ShardCommand(Deposit(f"u{i}", 5 * USDC), 1_000 + i)))
            for i in range(1, n + 1)]


def test_shard_replica_result_differing_from_the_leaders_stops_it_and_is_counted() -> None:
    import msgspec

    from exchange.stream.shard.wire import ShardBatch

    replica = _replica()
    own = replica.applied(_bodies(3))
    replica.leader_batch(ShardBatch("T1", 1, 2, own[:2], None))  # the same: fine
    assert (replica.checked_results, replica.diverged, replica.failed) == (2, 0, None)
    forged = msgspec.structs.replace(own[2], code=2001)
    replica.leader_batch(ShardBatch("T1", 3, 3, [forged], None))
    assert replica.diverged == 1 and "command 3" in str(replica.failed)
    text = generate_latest(replica.metrics.registry).decode()
    assert 'strongroom_shard_state_divergence_total{process="gateway",shard="T1"} 1.0' in text


def test_shard_replica_state_hash_checked_before_and_after_it_applies_the_point() -> None:
    from exchange.stream.shard.machine import ShardMachine
    from exchange.stream.shard.wire import ShardBatch

    flow = _bodies(6)
    leader = ShardMachine(load_instruments(DEFAULT_CONFIG), "T1")
    leader.apply_many(flow[:4])
    at_four = leader.state_hash()
    replica = _replica(hash_every=2)
    replica.applied(flow[:4])  # ahead of the leader's batch: its own hash at 4 was kept
    replica.leader_batch(ShardBatch("T1", 3, 4, [], at_four))
    assert (replica.checked_hashes, replica.diverged) == (1, 0)
    replica.leader_batch(ShardBatch("T1", 5, 6, [], "0" * 64))  # behind it: checked when applied
    assert replica.checked_hashes == 1
    replica.applied(flow[4:])
    assert (replica.checked_hashes, replica.diverged) == (2, 1) and replica.failed is not None
