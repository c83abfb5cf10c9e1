"""One-shot shard commands from the command line (`strongroom halt market --shard ...`).

Append one `ShardCommand` to a clearing shard's stream and wait for the
shard leader's result of it on ``shardevt.<NAME>``. The leader decides in
stream order like every other command; if no leader applies it within the
wait, the command stays in the stream and takes effect in its place.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from exchange.stream.publisher import append_to
from exchange.stream.shard.wire import (
    ShardCommand,
    ShardResult,
    batch_decoder,
    encode_command,
    shard_events_subject,
    shard_stream,
    shard_subject,
)
from exchange.stream.topology import SHARD_EVENTS_STREAM

APPLIED_WAIT_S: Final = 30.0
FETCH_TIMEOUT_S: Final = 0.5


async def append_and_wait_result(urls: list[str], shard: str, msg_id: str, command: ShardCommand,
                                 wait_s: float = APPLIED_WAIT_S) -> tuple[int, ShardResult | None]:
    """Append ``command`` under ``msg_id``; return (its seq, the leader's result or None).

    Raises StreamRefused (exchange/stream/publisher.py) when the stream does not
    confirm the append: then nothing was stored, and a retry with the same id is safe.
    """
    import nats

    stream, subject = shard_stream(shard), shard_events_subject(shard)
    nc = await nats.connect(servers=urls, connect_timeout=5, max_reconnect_attempts=3)
    try:
        js = nc.jetstream()
        try:  # results of our command come after the newest batch stored before the append
            start = (await js.stream_info(SHARD_EVENTS_STREAM)).state.last_seq + 1
        except NotFoundError:
            start = 1
        seq = (await append_to(js, stream, shard_subject(shard), msg_id, encode_command(command))).seq
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start,
                                ack_policy=AckPolicy.NONE, inactive_threshold=30.0,
                                mem_storage=True, num_replicas=1)
        sub = await js.pull_subscribe(subject, stream=SHARD_EVENTS_STREAM, config=config)
        deadline = time.monotonic() + wait_s
        try:
            while time.monotonic() < deadline:
                try:
                    msgs = await sub.fetch(64, timeout=FETCH_TIMEOUT_S)
                except (TimeoutError, NatsError):
                    await asyncio.sleep(0.05)
                    continue
                for msg in msgs:
                    batch = batch_decoder.decode(msg.data)
                    if batch.first_seq <= seq <= batch.last_seq:
                        return seq, batch.results[seq - batch.first_seq]
            return seq, None
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()
