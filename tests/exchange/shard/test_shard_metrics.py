"""Shard process metrics (exchange/stream/shard/metrics.py): what each call exports, scraped over HTTP."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from custody.db import make_engine, make_session_factory
from custody.ledger.entry import AccountKind
from custody.ledger.models import LedgerAccount
from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger
from exchange.stream.shard.metrics import PROCESS_METRICS, ShardMetrics, serve_from_env, serve_metrics

Samples = dict[str, list[tuple[dict[str, str], float]]]
TOKEN = "scrape-token-for-tests"


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    found = [v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())]
    assert found, f"{name}{labels} not exported; have {sorted(samples)}"
    return sum(found)


def get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def metrics() -> Iterator[tuple[ShardMetrics, str]]:
    m = ShardMetrics()
    server = serve_metrics(m.registry, 0, "127.0.0.1", TOKEN)
    try:
        yield m, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def scrape(base: str) -> Samples:
    status, body = get(f"{base}/metrics", TOKEN)
    assert status == 200, body
    return parse(body)


def test_shard_metrics_worker_batches_export_applied_refused_latency_and_engine_lag(
    metrics: tuple[ShardMetrics, str],
) -> None:
    m, base = metrics
    m.worker_leading("MAIN", "w1", True)
    m.worker_applied("MAIN", [0, 0, 2001, 0, 3101])
    m.worker_published("MAIN", 1, 5, 0.003)
    m.worker_position("MAIN", stream_last_seq=9, applied_seq=5)
    m.worker_applied("B", [0])
    m.worker_published("B", 1, 1, 0.2)
    s = scrape(base)
    assert value(s, "strongroom_shard_commands_applied_total", shard="MAIN") == 5
    assert value(s, "strongroom_shard_commands_refused_total", shard="MAIN", code="2001") == 1
    assert value(s, "strongroom_shard_commands_refused_total", shard="MAIN", code="3101") == 1
    assert value(s, "strongroom_shard_engine_lag_commands", shard="MAIN") == 4
    assert value(s, "strongroom_shard_stream_last_seq", shard="MAIN") == 9
    assert value(s, "strongroom_shard_published_seq", shard="MAIN") == 5
    assert value(s, "strongroom_shard_batch_publish_duration_seconds_count", shard="MAIN") == 1
    assert value(s, "strongroom_shard_batch_publish_duration_seconds_bucket", shard="MAIN", le="0.005") == 1
    assert value(s, "strongroom_shard_batch_publish_duration_seconds_bucket", shard="B", le="0.1") == 0
    assert value(s, "strongroom_shard_batch_commands_sum", shard="MAIN") == 5
    assert value(s, "strongroom_shard_leader", shard="MAIN", worker="w1") == 1


def test_shard_metrics_lag_never_negative_when_applied_is_ahead_of_a_stale_stream_reading(
    metrics: tuple[ShardMetrics, str],
) -> None:
    m, base = metrics
    m.worker_position("MAIN", stream_last_seq=3, applied_seq=7)
    m.settlement_position("MAIN", published_seq=2, settled_seq=4)
    m.replica_position("MAIN", known_seq=1, replica_seq=5)
    s = scrape(base)
    for name in ("strongroom_shard_engine_lag_commands", "strongroom_shard_settlement_lag_commands",
                 "strongroom_shard_replica_lag_commands"):
        assert value(s, name, shard="MAIN") == 0


def test_shard_metrics_worker_standing_by_drops_leader_positions_so_lag_alerts_see_only_the_leader(
    metrics: tuple[ShardMetrics, str],
) -> None:
    m, base = metrics
    m.worker_leading("MAIN", "w1", True)
    m.worker_position("MAIN", 10, 10)
    m.worker_published("MAIN", 1, 10, 0.001)
    m.worker_leading("MAIN", "w1", False)
    m.worker_term_lost("MAIN")
    s = scrape(base)
    assert value(s, "strongroom_shard_leader", shard="MAIN", worker="w1") == 0
    assert value(s, "strongroom_shard_leader_terms_lost_total", shard="MAIN") == 1
    for gone in ("strongroom_shard_engine_lag_commands", "strongroom_shard_applied_seq",
                 "strongroom_shard_published_seq"):
        assert gone not in s, gone
    m.worker_leading("B", "w2", False)  # a standby that never led: nothing to drop, no error


def test_shard_metrics_settlement_counts_postings_by_kind_and_stamps_the_commit(
    metrics: tuple[ShardMetrics, str],
) -> None:
    m, base = metrics
    m.settled("MAIN", 12, ["single", "single", "pending", "post", "void"], 0.01, now_s=1_700_000_000.0)
    m.settlement_position("MAIN", published_seq=20, settled_seq=12)
    s = scrape(base)
    assert value(s, "strongroom_shard_postings_written_total", shard="MAIN", kind="single") == 2
    assert value(s, "strongroom_shard_postings_written_total", shard="MAIN") == 5
    assert value(s, "strongroom_shard_settled_seq", shard="MAIN") == 12
    assert value(s, "strongroom_shard_settlement_lag_commands", shard="MAIN") == 8
    assert value(s, "strongroom_shard_settlement_last_commit_timestamp_seconds", shard="MAIN") == 1.7e9
    assert value(s, "strongroom_shard_settlement_batch_duration_seconds_count", shard="MAIN") == 1


def test_shard_metrics_gateway_appends_waits_replica_lag_and_divergence(
    metrics: tuple[ShardMetrics, str],
) -> None:
    m, base = metrics
    m.appended("MAIN", "ok", 0.002)
    m.appended("MAIN", "duplicate", 0.001)
    m.appended("MAIN", "unavailable", 5.0)
    m.replica_waited("MAIN", 0.004)
    m.replica_position("MAIN", known_seq=40, replica_seq=31)
    m.state_diverged("MAIN", "gateway")
    s = scrape(base)
    assert value(s, "strongroom_shard_appends_total", shard="MAIN", outcome="unavailable") == 1
    # An append that got no acknowledgement has no latency to report.
    assert value(s, "strongroom_shard_append_duration_seconds_count", shard="MAIN") == 2
    assert value(s, "strongroom_shard_replica_wait_duration_seconds_count", shard="MAIN") == 1
    assert value(s, "strongroom_shard_replica_lag_commands", shard="MAIN") == 9
    assert value(s, "strongroom_shard_replica_seq", shard="MAIN") == 31
    assert value(s, "strongroom_shard_state_divergence_total", shard="MAIN", process="gateway") == 1


def test_shard_metrics_refusal_code_label_is_bounded_for_a_nonsense_code(
    metrics: tuple[ShardMetrics, str],
) -> None:
    m, base = metrics
    m.worker_applied("MAIN", [-5, 10**12])
    s = scrape(base)
    assert value(s, "strongroom_shard_commands_refused_total", shard="MAIN", code="other") == 2


def test_shard_metrics_server_refuses_scrape_without_the_token_and_answers_health(
    metrics: tuple[ShardMetrics, str],
) -> None:
    _, base = metrics
    assert get(f"{base}/metrics")[0] == 401
    assert get(f"{base}/metrics", "wrong-token")[0] == 401
    assert get(f"{base}/healthz") == (200, "ok\n")
    assert get(f"{base}/other", TOKEN)[0] == 404


def test_shard_metrics_serve_from_env_unset_starts_nothing_and_bad_port_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STRONGROOM_METRICS_PORT", raising=False)
    assert serve_from_env(ShardMetrics().registry) is None
    monkeypatch.setenv("STRONGROOM_METRICS_PORT", "http")
    with pytest.raises(ValueError, match="must be a TCP port"):
        serve_from_env(ShardMetrics().registry)


def test_shard_metrics_serve_from_env_serves_process_metrics_with_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STRONGROOM_METRICS_PORT", "0")
    monkeypatch.setenv("STRONGROOM_METRICS_HOST", "127.0.0.1")
    monkeypatch.setenv("STRONGROOM_METRICS_TOKEN", TOKEN)
    server = serve_from_env(PROCESS_METRICS.registry)
    assert server is not None
    try:
        s = scrape(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
    assert value(s, "process_cpu_seconds_total") > 0


def test_shard_metrics_ledger_imbalance_zero_after_transfers_and_shows_an_edited_row(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        sessions = make_session_factory(engine)
        ledger = Ledger(sessions)
        src = ledger.ensure_account("bank", "USDC", AccountKind.EXTERNAL.value).id
        dst = ledger.ensure_account("alice", "USDC", AccountKind.USER_MARGIN.value).id
        ledger.transfer(TransferRequest(id="t1", debit_account=src, credit_account=dst, amount=5_000_000,
                                        asset="USDC"))
        m = ShardMetrics()
        m.watch_ledger(sessions)
        assert value(parse(_latest(m)), "strongroom_ledger_imbalance_minor", asset="USDC") == 0
        # An insider credits themselves behind the ledger's back.
        with sessions.begin() as session:
            session.execute(update(LedgerAccount).where(LedgerAccount.id == dst)
                            .values(credits_posted=LedgerAccount.credits_posted + 7))
        s = parse(_latest(m))
        assert value(s, "strongroom_ledger_imbalance_minor", asset="USDC") == 7
        assert value(s, "strongroom_shard_metrics_collect_errors") == 0
    finally:
        engine.dispose()


def test_shard_metrics_ledger_unreadable_reports_an_error_not_a_balanced_zero(tmp_path: object) -> None:
    def broken() -> object:
        raise ConnectionError("database is down")

    m = ShardMetrics()
    m.watch_ledger(broken)
    s = parse(_latest(m))
    assert "strongroom_ledger_imbalance_minor" not in s
    assert value(s, "strongroom_shard_metrics_collect_errors") == 1


def _latest(m: ShardMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(m.registry).decode()
