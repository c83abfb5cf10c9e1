"""Reading streams back for the scale-out tests."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import msgspec
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError, ServiceUnavailableError

from exchange.engine.instrument import Instrument
from exchange.engine.messages import Cancel, Command, NewOrder
from exchange.engine.orderbook import OrderBook
from exchange.stream.topology import EVENTS_STREAM, command_stream, command_subject, events_subject
from exchange.stream.wire import EventBatch, batch_decoder

READ_RETRY_S = 20.0


async def read_all(js: JetStreamContext, stream: str, subject: str) -> list[bytes]:
    """Return the bodies of every message of `subject` in `stream`, in stream order.

    Retried while JetStream is unavailable (a stream or the meta leader being
    re-elected after a node loss).
    """
    deadline = time.monotonic() + READ_RETRY_S
    while True:
        try:
            return await _read_all(js, stream, subject)
        except NatsError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


async def _read_all(js: JetStreamContext, stream: str, subject: str) -> list[bytes]:
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE,
                            mem_storage=True, num_replicas=1, inactive_threshold=10.0)
    sub = await js.pull_subscribe(subject, stream=stream, config=config)
    out: list[bytes] = []
    pending = (await sub.consumer_info()).num_pending
    while len(out) < pending:
        try:
            out.extend(m.data for m in await sub.fetch(500, timeout=1.0))
        except NatsTimeoutError:
            break
    await sub.unsubscribe()
    return out


async def command_bodies(js: JetStreamContext, symbol: str) -> list[bytes]:
    """Return the market's command stream as replay lines, in sequence order."""
    return await read_all(js, command_stream(symbol), command_subject(symbol))


async def event_batches(js: JetStreamContext, symbol: str) -> list[EventBatch]:
    """Return every event batch the market's engines published, in stream order."""
    return [batch_decoder.decode(b) for b in await read_all(js, EVENTS_STREAM, events_subject(symbol))]


async def last_published(js: JetStreamContext, symbol: str) -> int:
    """Return the last command sequence whose events are published (0 if none)."""
    try:
        msg = await js.get_last_msg(EVENTS_STREAM, events_subject(symbol))
    except NotFoundError:
        return 0
    return batch_decoder.decode(msg.data or b"").last_seq


async def wait_published(js: JetStreamContext, symbol: str, seq: int, timeout_s: float) -> None:
    """Wait until the events of command `seq` are published."""
    deadline = time.monotonic() + timeout_s
    last = 0
    while last < seq:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{symbol}: events up to {seq} not published; last {last}")
        # A timeout or a 503: the stream is electing a new leader after a node loss.
        with contextlib.suppress(NatsTimeoutError, ServiceUnavailableError):
            last = await last_published(js, symbol)
        await asyncio.sleep(0.05)


def events_by_command(batches: list[EventBatch]) -> list[tuple[int, list[object]]]:
    """Flatten batches to (command seq, events as builtins), in published order."""
    return [(c.seq, [msgspec.to_builtins(e) for e in c.events]) for b in batches for c in b.commands]


def order_flow(n: int, seed: int) -> list[tuple[str, Command]]:
    """Return n (command id, command) pairs: crossing limit orders and some cancels."""
    rng = random.Random(seed)
    out: list[tuple[str, Command]] = []
    live: list[str] = []
    for i in range(n):
        if live and rng.random() < 0.15:
            oid = live.pop(rng.randrange(len(live)))
            out.append((f"c{seed}-{i}", Cancel(id=oid)))
            continue
        oid = f"o{seed}-{i}"
        side = "buy" if rng.random() < 0.5 else "sell"
        price = 1000 + rng.randrange(-10, 11)
        out.append((f"c{seed}-{i}", NewOrder(id=oid, account=f"acct{rng.randrange(8)}",
                                             side=side, qty=rng.randrange(1, 20), price=price)))
        live.append(oid)
    return out


def replay_single_process(instrument: Instrument, bodies: list[bytes]) -> tuple[list[list[object]], str]:
    """Run command bodies through one in-process book: events per command and the state hash."""
    from exchange.engine.replay import parse_line

    book = OrderBook(instrument)
    per_command = []
    for i, body in enumerate(bodies, 1):
        book.process(parse_line(i, body, skip_invalid=True))
        per_command.append([msgspec.to_builtins(e) for e in book.take_events()])
    return per_command, book.state_hash()
