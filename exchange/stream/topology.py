"""Names and configuration of the JetStream streams and buckets of the scale-out mode.

One command stream per market (`CMD_<SYMBOL>`, subject `cmd.<SYMBOL>`): its
stream sequence is the engine's replay order. One events stream for every
market (`EVT`, subjects `evt.<SYMBOL>`), read by settlement. Two key-value
buckets: `ENGINE_LEASE` (who leads each market; entries expire) and
`ENGINE_SNAPSHOT` (the latest snapshot of each market's book).
"""

from __future__ import annotations

import re

from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue

SYMBOL_PATTERN = re.compile(r"^[A-Z0-9][A-Z0-9_-]{0,31}$")
EVENTS_STREAM = "EVT"
LEASE_BUCKET = "ENGINE_LEASE"
SNAPSHOT_BUCKET = "ENGINE_SNAPSHOT"
MARGIN_BUCKET = "MARGIN_CHECKPOINT"
# Publishes with the same Nats-Msg-Id inside this window are stored once.
DUPLICATE_WINDOW_S = 120.0
# A leader renews its lease every LEASE_RENEW_S; a standby takes over once the
# lease has been silent for LEASE_TTL_S.
LEASE_TTL_S = 2.0
LEASE_RENEW_S = 0.4
# Commands and event batches are small; a snapshot must fit one KV value.
MAX_MSG_BYTES = 1 << 20


def check_symbol(symbol: str) -> str:
    """Return `symbol` if it is a valid market symbol for subjects, else raise ValueError."""
    if not SYMBOL_PATTERN.fullmatch(symbol):
        raise ValueError(f"market symbol was {symbol[:40]!r}, must match {SYMBOL_PATTERN.pattern}")
    return symbol


def command_stream(symbol: str) -> str:
    """Return the name of the command stream of `symbol`."""
    return f"CMD_{check_symbol(symbol)}"


def command_subject(symbol: str) -> str:
    """Return the subject commands of `symbol` are published on."""
    return f"cmd.{check_symbol(symbol)}"


def events_subject(symbol: str) -> str:
    """Return the subject the engine of `symbol` publishes its event batches on."""
    return f"evt.{check_symbol(symbol)}"


async def ensure_topology(js: JetStreamContext, symbols: list[str], replicas: int = 3) -> None:
    """Create the streams and buckets for `symbols` if absent (idempotent)."""
    for symbol in symbols:
        await _add_stream(js, StreamConfig(
            name=command_stream(symbol), subjects=[command_subject(symbol)],
            retention=RetentionPolicy.LIMITS, storage=StorageType.FILE, num_replicas=replicas,
            duplicate_window=DUPLICATE_WINDOW_S, max_msg_size=MAX_MSG_BYTES,
            discard=DiscardPolicy.NEW))
    await _add_stream(js, StreamConfig(
        name=EVENTS_STREAM, subjects=["evt.*"], retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE, num_replicas=replicas, duplicate_window=DUPLICATE_WINDOW_S,
        max_msg_size=MAX_MSG_BYTES, discard=DiscardPolicy.NEW))
    await lease_bucket(js, replicas)
    await snapshot_bucket(js, replicas)
    await margin_bucket(js, replicas)


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
