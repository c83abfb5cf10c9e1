"""prometheus-client multiprocess mode under gunicorn: one scrape sees every worker of the pod."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.strongroom.test_gunicorn import Gunicorn, env  # noqa: F401 - env is a fixture

ROOT = Path(__file__).resolve().parents[2]
REQUESTS = 12


def _assets_requests(base: str) -> float:
    scrape = requests.get(base + "/metrics", timeout=10)
    assert scrape.status_code == 200, scrape.text
    total = 0.0
    for family in text_string_to_metric_families(scrape.text):
        for sample in family.samples:
            if sample.name == "strongroom_http_requests_total" and sample.labels["endpoint"] == "assets":
                total += sample.value
    return total


def test_gunicorn_multiprocess_metrics_one_scrape_counts_every_workers_requests(
    env: dict[str, str], tmp_path: Path,  # noqa: F811 - the fixture
) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"left over from an earlier run")  # wiped at start
    pool = Gunicorn({**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}, "api", workers=2)
    try:
        pool.wait_ready()
        for _ in range(REQUESTS):  # a new connection each: the workers share them
            assert requests.get(pool.base + "/api/v1/assets", timeout=10).status_code == 200
        # Whichever worker answers the scrape, it counts every worker's requests.
        assert [_assets_requests(pool.base) for _ in range(4)] == [REQUESTS] * 4
    finally:
        out = pool.stop()
    assert "Traceback" not in out, out[-3000:]


def test_gunicorn_child_exit_drops_a_dead_workers_gauges_and_keeps_its_counters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import runpy

    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    script = ("from prometheus_client import Counter, Gauge\n"
              "Counter('t_requests_total', 'h').inc(3)\n"
              "Gauge('t_replica_lag', 'h').set(5000)\n")
    worker = subprocess.run([sys.executable, "-c", script], check=True, timeout=120,
                            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    assert worker.returncode == 0
    [dead_pid] = {int(f.stem.rsplit("_", 1)[1]) for f in metrics_dir.glob("*.db")}
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    config = runpy.run_path(str(ROOT / "deploy" / "gunicorn.conf.py"))
    config["child_exit"](None, SimpleNamespace(pid=dead_pid))
    families = {f.name: f for f in MultiProcessCollector(None, path=str(metrics_dir)).collect()}
    assert "t_replica_lag" not in families, "a dead worker's lag must not page anyone"
    assert [s.value for s in families["t_requests"].samples] == [3.0]
