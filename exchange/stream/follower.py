"""Follow one market's events from the start of the stream, in order, through NATS weather.

Every reader of event-fed state (the gateways' hot reads and order waiters,
the margin worker) folds a market's batches in order. A follower reads
`evt.<SYMBOL>` with an ephemeral pull consumer and checks that the batches'
command ranges are contiguous; a gap, a lost consumer (node loss) or an idle
consumer while the market has newer batches makes it subscribe again from its
own stream position. Nothing is skipped and nothing is handled twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from exchange.stream.topology import EVENTS_STREAM, events_subject
from exchange.stream.wire import EventBatch, batch_decoder

log = logging.getLogger("strongroom.events")

FETCH_MAX = 256
FETCH_TIMEOUT_S = 0.25
# After the first message, what else is already there is taken without lingering longer.
DRAIN_TIMEOUT_S = 0.002
RETRY_S = 0.3
STALL_CHECK_S = 1.0

Handler = Callable[[EventBatch], Awaitable[None]]


async def fetch_ready(sub: JetStreamContext.PullSubscription, limit: int,
                      timeout_s: float, *, drain_idle: bool = True) -> list[Msg]:
    """Wait up to `timeout_s` for one message, then take what else is ready, up to `limit`.

    nats-py's `fetch(n)` on an idle consumer lingers until it has n messages or its
    timeout passed, so a lone command would wait the whole timeout: the latency floor
    of every hop. One message is awaited alone; the rest are only drained.
    ``drain_idle=False`` (replicas): no drain when the message says the consumer had
    nothing more pending (its metadata's num_pending), saving a pull request, its
    expiry status and the drain's linger per message on an idle stream; a message
    stored meanwhile comes with the next fetch.
    Raise TimeoutError (nats' or asyncio's) if nothing came.
    """
    msgs = await sub.fetch(1, timeout=timeout_s)
    if not drain_idle and msgs and _nothing_pending(msgs[-1]):
        return msgs
    if limit > 1:
        with contextlib.suppress(TimeoutError):
            msgs += await sub.fetch(limit - 1, timeout=DRAIN_TIMEOUT_S)
    return msgs


def _nothing_pending(msg: Msg) -> bool:
    try:
        return msg.metadata.num_pending == 0
    except Exception:  # not a JetStream delivery (no metadata): drain as usual
        return False


Subscribe = Callable[[], Awaitable[JetStreamContext.PullSubscription]]
Follow = Callable[[JetStreamContext.PullSubscription, asyncio.Event], Awaitable[None]]


async def follow_resubscribing(subject: str, stop: asyncio.Event, subscribe: Subscribe,
                               follow: Follow, position: Callable[[], int],
                               logger: logging.Logger,
                               going: Callable[[], bool] = lambda: True) -> None:
    """Run `follow` on a fresh `subscribe()` until `stop` (or until `going()` is false).

    NATS trouble (and a `follow` that returns: a gap or a lost consumer) only makes
    it subscribe again, after RETRY_S if the subscribe itself failed; the
    subscription is always dropped. Any other exception of `follow` ends it.
    `position()` (the follower's stream position) is only logged.
    """
    while not stop.is_set() and going():
        try:
            sub = await subscribe()
        except (NatsError, TimeoutError) as exc:
            logger.warning("%s: subscribe failed: %s", subject, type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RETRY_S)
            continue
        try:
            await follow(sub, stop)
        except (NatsError, TimeoutError) as exc:
            logger.warning("%s at %d: %s; subscribing again", subject, position(),
                           type(exc).__name__)
        finally:
            with contextlib.suppress(NatsError, TimeoutError):
                await sub.unsubscribe()


class EventFollower:
    """Hand every event batch of the stream, once and in order, to `handler`."""

    def __init__(self, js: JetStreamContext, market: str, handler: Handler) -> None:
        self.js = js
        self.subject = events_subject(market)
        self.handler = handler
        self.stream_seq = 0  # EVT stream sequence of the last batch handled
        self.command_seq = 0  # last command whose events were handled
        self._last_stall_check = 0.0

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                opt_start_seq=self.stream_seq + 1, ack_policy=AckPolicy.NONE,
                                inactive_threshold=30.0, mem_storage=True, num_replicas=1)
        return await self.js.pull_subscribe(self.subject, stream=EVENTS_STREAM, config=config)

    async def _stalled(self) -> bool:
        now = time.monotonic()
        if now - self._last_stall_check < STALL_CHECK_S:
            return False
        self._last_stall_check = now
        try:
            last = await self.js.get_last_msg(EVENTS_STREAM, self.subject)
        except NatsError:  # not found (no batch yet) or NATS trouble: cannot tell now
            return False
        return (last.seq or 0) > self.stream_seq

    async def run(self, stop: asyncio.Event) -> None:
        """Follow until `stop`; only the handler's own exceptions end it early."""
        await follow_resubscribing(self.subject, stop, self._subscribe, self._follow,
                                   lambda: self.stream_seq, log)

    async def _follow(self, sub: JetStreamContext.PullSubscription, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                msgs = await fetch_ready(sub, FETCH_MAX, FETCH_TIMEOUT_S)
            except TimeoutError:  # nats' own and asyncio's: nothing new, or a lost consumer
                if await self._stalled():
                    return
                continue
            for msg in msgs:
                batch = batch_decoder.decode(msg.data)
                if batch.last_seq <= self.command_seq:
                    continue  # redelivered after a reset
                if batch.first_seq != self.command_seq + 1:
                    log.warning("%s: batch %d-%d after command %d; subscribing again",
                                self.subject, batch.first_seq, batch.last_seq, self.command_seq)
                    return
                await self.handler(batch)
                self.stream_seq = msg.metadata.sequence.stream
                self.command_seq = batch.last_seq
