"""Clearing shard snapshots in the JetStream object store: larger than a message, checked on read."""

from __future__ import annotations

import asyncio
import os

import nats
import pytest

from exchange.stream.cluster import LocalCluster
from exchange.stream.shard.snapshots import (
    OBJECT_STREAM,
    SnapshotUnreadable,
    read_snapshot,
    write_snapshot,
)
from exchange.stream.topology import MAX_MSG_BYTES, ensure_shard_topology, shard_snapshot_store


async def _connect(cluster: LocalCluster) -> tuple[nats.NATS, nats.js.JetStreamContext]:
    nc = await nats.connect(servers=cluster.urls, max_reconnect_attempts=-1,
                            reconnect_time_wait=0.1)
    js = nc.jetstream()
    await ensure_shard_topology(js, ["SNAPT"], 3)
    return nc, js


def test_shard_snapshot_larger_than_a_message_round_trips_and_replaces(
        nats_cluster: LocalCluster) -> None:
    async def run() -> None:
        nc, js = await _connect(nats_cluster)
        try:
            first = os.urandom(3 * MAX_MSG_BYTES + 12345)
            await write_snapshot(js, "SNAP1", first)
            assert await read_snapshot(js, "SNAP1") == first
            # The standard object store layout: nats' own client reads it too.
            store = await shard_snapshot_store(js)
            assert (await store.get("SNAP1")).data == first
            second = os.urandom(MAX_MSG_BYTES // 3)
            await write_snapshot(js, "SNAP1", second)
            assert await read_snapshot(js, "SNAP1") == second
            # The replaced object's chunks are purged: the store holds one object's worth.
            info = await js.stream_info(OBJECT_STREAM)
            assert info.state.bytes < len(first)
        finally:
            await nc.close()

    asyncio.run(run())


def test_shard_snapshot_never_written_reads_none(nats_cluster: LocalCluster) -> None:
    async def run() -> None:
        nc, js = await _connect(nats_cluster)
        try:
            assert await read_snapshot(js, "SNAPNONE") is None
        finally:
            await nc.close()

    asyncio.run(run())


def test_shard_snapshot_with_a_chunk_deleted_is_unreadable_not_truncated(
        nats_cluster: LocalCluster) -> None:
    # An insider (or a bug) removes one chunk of the stored object: reading must refuse,
    # never hand a shorter or different state to restore.
    async def run() -> None:
        nc, js = await _connect(nats_cluster)
        try:
            data = os.urandom(2 * MAX_MSG_BYTES)
            await write_snapshot(js, "SNAP2", data)
            store = await shard_snapshot_store(js)
            info = await store.get_info("SNAP2")
            chunk = await js.get_msg(OBJECT_STREAM, seq=1,
                                     subject=f"$O.SHARD_SNAPSHOT.C.{info.nuid}", next=True)
            await js.delete_msg(OBJECT_STREAM, chunk.seq)
            with pytest.raises(SnapshotUnreadable):
                await read_snapshot(js, "SNAP2")
        finally:
            await nc.close()

    asyncio.run(run())


def test_shard_snapshot_invalid_shard_name_refused_before_anything_is_written(
        nats_cluster: LocalCluster) -> None:
    async def run() -> None:
        nc, js = await _connect(nats_cluster)
        try:
            with pytest.raises(ValueError, match="shard name was"):
                await write_snapshot(js, "bad.name", b"x")
        finally:
            await nc.close()

    asyncio.run(run())
