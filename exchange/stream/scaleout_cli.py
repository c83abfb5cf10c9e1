"""One-shot control commands from the command line (`strongroom halt market --nats ...`)."""

from __future__ import annotations

import asyncio
import time

import msgspec
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from exchange.stream.controls import Control
from exchange.stream.publisher import CommandPublisher
from exchange.stream.topology import EVENTS_STREAM, check_symbol, events_subject
from exchange.stream.wire import batch_decoder

APPLIED_WAIT_S = 30.0


async def append_and_wait(urls: list[str], symbol: str, command_id: str,
                          control: Control) -> tuple[int, bool, dict[str, object] | None]:
    """Append `control` to `symbol`'s stream; return (its seq, applied, the status after it).

    The status is the one the engine published with the batch holding the command, or a
    later one (None: open). `applied` is False if no engine applied it within
    APPLIED_WAIT_S: the command stays in the stream and takes effect, in its place, when
    an engine leads the market.
    """
    import nats

    check_symbol(symbol)
    nc = await nats.connect(servers=urls, connect_timeout=5, max_reconnect_attempts=3)
    try:
        js = nc.jetstream()
        seq = (await CommandPublisher(js, {symbol}).append_control(symbol, command_id, control)).seq
        deadline = time.monotonic() + APPLIED_WAIT_S
        while True:
            try:
                last = await js.get_last_msg(EVENTS_STREAM, events_subject(symbol))
                batch = batch_decoder.decode(last.data or b"")
                if batch.last_seq >= seq:
                    return seq, True, (None if batch.status is None
                                       else msgspec.to_builtins(batch.status))
            except (NotFoundError, NatsError):
                pass
            if time.monotonic() > deadline:
                return seq, False, None
            await asyncio.sleep(0.1)
    finally:
        await nc.close()
