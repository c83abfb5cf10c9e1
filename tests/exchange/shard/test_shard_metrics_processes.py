"""The shard processes export their metrics: `strongroom shard-settlement` scraped while it settles."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from custody.db import make_engine, make_session_factory
from custody.ledger.service import Ledger
from exchange.stream.cluster import LocalCluster
from tests.exchange.shard.settle_flow import (
    funded_flow,
    publish_batches,
)

ROOT = Path(__file__).resolve().parents[3]
WAIT_S = 90.0  # bounds a hang only; every wait polls for its condition
TOKEN = "scrape-token-for-tests"
Samples = dict[str, list[tuple[dict[str, str], float]]]


@pytest.fixture
def pg(postgres_url: str) -> Iterator[tuple[Ledger, str]]:
    engine = make_engine(postgres_url)
    yield Ledger(make_session_factory(engine)), postgres_url
    engine.dispose()


def _scrape(port: int) -> Samples:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    found = [v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())]
    return sum(found) if found else None


def test_shard_settlement_process_metrics_show_postings_settled_seq_no_lag_and_a_balanced_ledger(
    nats_cluster: LocalCluster, pg: tuple[Ledger, str], tmp_path: Path,
) -> None:
    ledger, url = pg
    shard = f"T{uuid.uuid4().hex[:10].upper()}"
    _, batches = funded_flow(ledger, shard, 5, 80, 4)
    kinds: dict[str, int] = {}
    for p in (p for b in batches for r in b.results for p in r.postings):
        kinds[p[1]] = kinds.get(p[1], 0) + 1
    asyncio.run(publish_batches(nats_cluster.urls, shard, batches))
    log = tmp_path / "settle.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STRONGROOM_DATABASE_URL": url,
           "STRONGROOM_METRICS_PORT": "0", "STRONGROOM_METRICS_HOST": "127.0.0.1",
           "STRONGROOM_METRICS_TOKEN": TOKEN}
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from strongroom.cli import main; main()", "shard-settlement",
             "--shard", shard, "--nats", ",".join(nats_cluster.urls), "--void-deposits-after-s", "0"],
            env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + WAIT_S
        while not (found := re.search(rb"metrics on port (\d+)", log.read_bytes())):
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        port = int(found.group(1))
        last = batches[-1].last_seq
        while True:
            s = _scrape(port)
            if (_value(s, "strongroom_shard_settled_seq", shard=shard) == last
                    and _value(s, "strongroom_shard_settlement_lag_commands", shard=shard) == 0):
                break
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, (log.read_text()[-2000:], s)
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=WAIT_S)
    for kind, n in kinds.items():
        assert _value(s, "strongroom_shard_postings_written_total", shard=shard, kind=kind) == n, kind
    assert (_value(s, "strongroom_shard_settlement_last_commit_timestamp_seconds", shard=shard) or 0) > 0
    assert _value(s, "strongroom_shard_settlement_batch_duration_seconds_count", shard=shard)
    assert _value(s, "strongroom_ledger_imbalance_minor", asset="USDC") == 0
    assert _value(s, "strongroom_shard_metrics_collect_errors") == 0
    assert (_value(s, "process_cpu_seconds_total") or 0) > 0


def test_shard_settlement_consume_empty_fetch_is_nothing_new_not_a_crash() -> None:
    from exchange.stream.shard.settle import ShardSettlement, _consume

    # A pull fetch can end with no messages and no timeout (a status reply); the
    # `strongroom shard-settlement` process died on msgs[-1] in shard_api_bench.py.
    stop, lost = asyncio.Event(), asyncio.Event()

    class EmptyFetches:
        calls = 0

        async def fetch(self, batch: int, timeout: float) -> list[object]:
            self.calls += 1
            if self.calls == 3:
                stop.set()
            return []

    class NoLedger(ShardSettlement):
        def __init__(self) -> None:
            self.shard = "MAIN"

        def settle(self, batches: object) -> int:
            raise AssertionError("nothing to settle")

    sub = EmptyFetches()
    asyncio.run(_consume(sub, NoLedger(), stop, lost, 8))  # type: ignore[arg-type]
    assert sub.calls == 3
