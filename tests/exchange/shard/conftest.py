"""The clearing shard tests: their NATS cluster fixture is tests/exchange/conftest.py's.

pytest runs with --import-mode=importlib, which does not put test directories
on sys.path: this adds ours so the tests import their helper modules.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from exchange.stream.cluster import LocalCluster
from policies.roles import Role

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture
def shard_api(nats_cluster: LocalCluster, postgres_url: str, clock: Any, keystore: Any,
              tmp_path: Path) -> Iterator[tuple[Flask, str, Any]]:
    """One shard-mode API app on a fresh shard, BTC marked at 60,000 USD by its operator:
    ``(app, shard, ops)``, ``ops`` an admin `shard_api_helpers.Trader`."""
    from shard_api_helpers import Trader, close, mark_btc, new_shard, shard_app

    shard = new_shard(nats_cluster.urls)
    app = shard_app(nats_cluster.urls, shard, postgres_url, clock, keystore, tmp_path / "a")
    try:
        ops = Trader(app, clock, "ops", tier=0, roles=frozenset({Role.ADMIN}))
        mark_btc(ops)
        yield app, shard, ops
    finally:
        close(app)
