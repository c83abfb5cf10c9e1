"""Connect to NATS unless stopped first: a process started before NATS must still obey SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats
import nats.aio.client
from nats.errors import Error as NatsError


async def connect_unless_stopped(stop: asyncio.Event,
                                 **options: Any) -> nats.aio.client.Client | None:
    """Return `nats.connect(**options)`'s connection, or None if `stop` is set first.

    With ``max_reconnect_attempts=-1`` the first connection retries while NATS is
    down; a stop meanwhile cancels it (and swallows what the cancelled attempt raised).
    """
    connecting = asyncio.ensure_future(nats.connect(**options))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not connecting.done():
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError, NatsError, OSError):
            await connecting
        return None
    return connecting.result()
