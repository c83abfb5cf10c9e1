"""A 3-node JetStream cluster on localhost for the scale-out tests, started and removed here.

pytest runs with --import-mode=importlib, which does not put test directories
on sys.path: this adds ours so the tests import `scaleout_helpers`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from exchange.stream.cluster import LocalCluster
from exchange.stream.topology import ensure_topology

READY_TIMEOUT_S = 30.0
_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


async def _wait_ready(urls: list[str]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            nc = await nats.connect(servers=urls, connect_timeout=1)
            try:
                await ensure_topology(nc.jetstream(), ["READY"], 3)
                return
            finally:
                await nc.close()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    base: Path = tmp_path_factory.mktemp("nats")
    cluster = LocalCluster(base, 3).start()
    try:
        asyncio.run(_wait_ready(cluster.urls))
        yield cluster
    finally:
        cluster.stop()
