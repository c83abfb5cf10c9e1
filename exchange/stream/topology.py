"""Names and configuration of the JetStream streams and buckets of the scale-out mode.

One command stream per market (`CMD_<SYMBOL>`, subject `cmd.<SYMBOL>`): its
stream sequence is the engine's replay order. One events stream for every
market (`EVT`, subjects `evt.<SYMBOL>`), read by settlement. Two key-value
buckets: `ENGINE_LEASE` (who leads each market; entries expire) and
`ENGINE_SNAPSHOT` (the latest snapshot of each market's book).

Clearing shards (docs/scale-out.md "Clearing shards"): one command stream
per shard (`SHARD_<NAME>`, subject `shard.cmd.<NAME>`), one output stream for
every shard (`SHARDEVT`, subjects `shardevt.<NAME>`), the shard worker's lease
in `ENGINE_LEASE` under `shard.<NAME>`, and its snapshots in the JetStream
object store `SHARD_SNAPSHOT` (object `<NAME>`): a venue's state can exceed
one message.
"""

from __future__ import annotations

import re

from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

SYMBOL_PATTERN = re.compile(r"^[A-Z0-9][A-Z0-9_-]{0,31}$")
EVENTS_STREAM = "EVT"
LEASE_BUCKET = "ENGINE_LEASE"
SNAPSHOT_BUCKET = "ENGINE_SNAPSHOT"
MARGIN_BUCKET = "MARGIN_CHECKPOINT"
SHARD_EVENTS_STREAM = "SHARDEVT"
SHARD_SNAPSHOT_BUCKET = "SHARD_SNAPSHOT"
# Publishes with the same Nats-Msg-Id inside this window are stored once.
DUPLICATE_WINDOW_S = 120.0
# A leader renews its lease every LEASE_RENEW_S; a standby takes over once the
# lease has been silent for LEASE_TTL_S.
LEASE_TTL_S = 2.0
LEASE_RENEW_S = 0.4
# Commands and event batches are small; a snapshot must fit one KV value.
MAX_MSG_BYTES = 1 << 20


def _checked(name: str, what: str) -> str:
    if not SYMBOL_PATTERN.fullmatch(name):
        raise ValueError(f"{what} was {name[:40]!r}, must match {SYMBOL_PATTERN.pattern}")
    return name


def check_symbol(symbol: str) -> str:
    """Return `symbol` if it is a valid market symbol for subjects, else raise ValueError."""
    return _checked(symbol, "market symbol")


def check_shard(shard: str) -> str:
    """Return `shard` if it is a valid clearing shard name for subjects, else raise ValueError."""
    return _checked(shard, "shard name")


def command_stream(symbol: str) -> str:
    """Return the name of the command stream of `symbol`."""
    return f"CMD_{check_symbol(symbol)}"


def command_subject(symbol: str) -> str:
    """Return the subject commands of `symbol` are published on."""
    return f"cmd.{check_symbol(symbol)}"


def events_subject(symbol: str) -> str:
    """Return the subject the engine of `symbol` publishes its event batches on."""
    return f"evt.{check_symbol(symbol)}"


def shard_stream(shard: str) -> str:
    """Return the name of the command stream of clearing shard `shard`."""
    return f"SHARD_{check_shard(shard)}"


def shard_subject(shard: str) -> str:
    """Return the subject commands of clearing shard `shard` are appended on."""
    return f"shard.cmd.{check_shard(shard)}"


def shard_events_subject(shard: str) -> str:
    """Return the subject the worker of clearing shard `shard` publishes its batches on."""
    return f"shardevt.{check_shard(shard)}"


def shard_lease_key(shard: str) -> str:
    """Return the `ENGINE_LEASE` key of the worker leading clearing shard `shard`."""
    return f"shard.{check_shard(shard)}"


async def ensure_topology(js: JetStreamContext, symbols: list[str], replicas: int = 3) -> None:
    """Create the streams and buckets for `symbols` if absent (idempotent)."""
    for symbol in symbols:
        await _add_command_stream(js, command_stream(symbol), command_subject(symbol), replicas)
    await _add_output_stream(js, EVENTS_STREAM, "evt.*", replicas)
    await lease_bucket(js, replicas)
    await snapshot_bucket(js, replicas)
    await margin_bucket(js, replicas)


async def ensure_shard_topology(js: JetStreamContext, shards: list[str], replicas: int = 3) -> None:
    """Create the streams, the lease bucket and the snapshot store of `shards` (idempotent)."""
    for shard in shards:
        await _add_command_stream(js, shard_stream(shard), shard_subject(shard), replicas)
    await _add_output_stream(js, SHARD_EVENTS_STREAM, "shardevt.*", replicas)
    await lease_bucket(js, replicas)
    await shard_snapshot_store(js, replicas)


async def _add_command_stream(js: JetStreamContext, name: str, subject: str,
                              replicas: int) -> None:
    await _add_stream(js, StreamConfig(
        name=name, subjects=[subject], retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
        num_replicas=replicas, duplicate_window=DUPLICATE_WINDOW_S, max_msg_size=MAX_MSG_BYTES,
        discard=DiscardPolicy.NEW))


async def _add_output_stream(js: JetStreamContext, name: str, subjects: str,
                             replicas: int) -> None:
    await _add_stream(js, StreamConfig(
        name=name, subjects=[subjects], retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE, num_replicas=replicas, duplicate_window=DUPLICATE_WINDOW_S,
        max_msg_size=MAX_MSG_BYTES, discard=DiscardPolicy.NEW))


async def _add_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError as exc:
        # 10058: a stream of that name exists with a different configuration; keep it.
        if exc.err_code != 10058:
            raise


async def lease_bucket(js: JetStreamContext, replicas: int = 3) -> KeyValue:
    """Return (creating if needed) the bucket of leader leases."""
    return await js.create_key_value(KeyValueConfig(
        bucket=LEASE_BUCKET, history=1, ttl=LEASE_TTL_S, replicas=replicas,
        storage=StorageType.FILE))


async def snapshot_bucket(js: JetStreamContext, replicas: int = 3) -> KeyValue:
    """Return (creating if needed) the bucket of engine snapshots."""
    return await js.create_key_value(KeyValueConfig(
        bucket=SNAPSHOT_BUCKET, history=1, replicas=replicas, storage=StorageType.FILE,
        max_value_size=MAX_MSG_BYTES))


async def margin_bucket(js: JetStreamContext, replicas: int = 3) -> KeyValue:
    """Return (creating if needed) the bucket of the margin workers' checkpoints."""
    return await js.create_key_value(KeyValueConfig(
        bucket=MARGIN_BUCKET, history=1, replicas=replicas, storage=StorageType.FILE,
        max_value_size=MAX_MSG_BYTES))


async def shard_snapshot_store(js: JetStreamContext, replicas: int = 3) -> ObjectStore:
    """Return (creating if needed) the object store of clearing shard snapshots."""
    try:
        return await js.create_object_store(SHARD_SNAPSHOT_BUCKET, ObjectStoreConfig(
            replicas=replicas, storage=StorageType.FILE))
    except BadRequestError as exc:
        # 10058: the store exists with another configuration (e.g. other replicas); use it.
        if exc.err_code != 10058:
            raise
        return await js.object_store(SHARD_SNAPSHOT_BUCKET)
