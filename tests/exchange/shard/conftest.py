"""A 3-node JetStream cluster on localhost for the clearing-shard tests, started and removed here.

The same fixture as tests/exchange/scaleout/conftest.py (one cluster per test session and
xdist worker, made whole again before each test). pytest runs with --import-mode=importlib,
which does not put test directories on sys.path: this adds ours for the helper modules.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.js.api import StorageType

from exchange.stream.cluster import LocalCluster

READY_TIMEOUT_S = 30.0
_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


async def _wait_ready(urls: list[str]) -> None:
    """Wait until a new 3-replica stream can be placed: every node is up and a JetStream peer."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            nc = await nats.connect(servers=urls, connect_timeout=1)
            try:
                js = nc.jetstream()
                await js.add_stream(name="PROBE", subjects=["probe.ready"], num_replicas=3,
                                    storage=StorageType.MEMORY)
                await js.delete_stream("PROBE")
                return
            finally:
                await nc.close()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


@pytest.fixture(scope="session")
def _nats_cluster_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    base: Path = tmp_path_factory.mktemp("nats")
    cluster = LocalCluster(base, 3).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def nats_cluster(_nats_cluster_process: LocalCluster) -> LocalCluster:
    """The shared cluster, whole again: a test that killed a node does not leak it to the next."""
    cluster = _nats_cluster_process
    for node in cluster.nodes:
        if node.process is None or node.process.poll() is not None:
            cluster.start_node(node)
    asyncio.run(_wait_ready(cluster.urls))
    return cluster
