"""connect_unless_stopped: a process started before NATS still obeys a stop; with NATS up it connects."""

from __future__ import annotations

import asyncio
import socket

from exchange.stream.cluster import LocalCluster
from exchange.stream.connect import connect_unless_stopped

HANG_S = 60.0  # bounds a hang only


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connect_unless_stopped_nats_down_stop_returns_none() -> None:
    async def run() -> object:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, stop.set)
        return await asyncio.wait_for(connect_unless_stopped(
            stop, servers=[f"nats://127.0.0.1:{_closed_port()}"], max_reconnect_attempts=-1,
            reconnect_time_wait=0.05), HANG_S)

    assert asyncio.run(run()) is None


def test_connect_unless_stopped_nats_up_returns_a_connection(nats_cluster: LocalCluster) -> None:
    async def run() -> bool:
        nc = await asyncio.wait_for(connect_unless_stopped(asyncio.Event(),
                                                           servers=nats_cluster.urls), HANG_S)
        assert nc is not None
        try:
            return bool(nc.is_connected)
        finally:
            await nc.close()

    assert asyncio.run(run())
