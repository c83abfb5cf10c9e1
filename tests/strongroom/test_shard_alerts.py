"""Clearing-shard alert rules (deploy/prometheus/alerts.yml, group strongroom-shards).

Each rule's expression is evaluated by promtool's rule unit tests on made-up
input series: once where it must fire (labels and severity checked) and once
where it must stay silent (the healthy or merely busy case next to it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from exchange.stream.shard.metrics import ShardMetrics

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
GROUP = "strongroom-shards"


def shard_families() -> set[str]:
    """Every family the shard processes export: workers, settlement, gateways, feeders."""
    from prometheus_client import CollectorRegistry

    from exchange.stream.shard.feeder import FeederMetrics

    feeder = CollectorRegistry()
    FeederMetrics(feeder)
    return {f.name for r in (ShardMetrics().registry, feeder) for f in r.collect()}


def _shard_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    groups = [g for g in data["groups"] if g["name"] == GROUP]
    assert len(groups) == 1, f"expected one rule group {GROUP}"
    return list(groups[0]["rules"])


def _annotations(alert: str, labels: dict[str, str]) -> dict[str, str]:
    """Render the rule's annotation templates for `labels` (``value`` stands for ``$value``)."""
    rule = next(r for r in _shard_rules() if r["alert"] == alert)
    out = {}
    for key, text in rule["annotations"].items():
        text = text.replace("{{ $value }}", labels.get("value", ""))
        out[key] = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
    return out


def _case(series: dict[str, str], checks: list[tuple[str, str, list[dict[str, str]]]]) -> dict[str, Any]:
    """One promtool test: input series (1 m apart) and (eval time, alert, expected labels).

    An expected alert's ``value`` entry is the value its annotations render, not a label.
    """
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": [{"eval_time": t, "alertname": name,
                             "exp_alerts": [{"exp_labels": {k: v for k, v in a.items() if k != "value"},
                                             "exp_annotations": _annotations(name, a)} for a in alerts]}
                            for t, name, alerts in checks],
    }


PAGE_MAIN = {"severity": "page", "shard": "MAIN"}

CASES = [
    # Lag: MAIN over 5,000 for more than a minute fires; shard B at 4,000 does not.
    _case({'strongroom_shard_engine_lag_commands{shard="MAIN",instance="w1"}': "0 0 6000 6000 6000 6000",
           'strongroom_shard_engine_lag_commands{shard="B",instance="w2"}': "4000x5",
           'strongroom_shard_applied_seq{shard="MAIN",instance="w1"}': "0+1000x5",
           'strongroom_shard_applied_seq{shard="B",instance="w2"}': "0+1000x5"},
          [("2m", "ShardEngineLagHigh", []),
           ("4m", "ShardEngineLagHigh", [{**PAGE_MAIN, "value": "6000"}]),
           ("4m", "ShardEngineStalled", [])]),
    # Stalled: commands wait and the applied sequence does not move; an idle shard (lag 0) is fine.
    _case({'strongroom_shard_engine_lag_commands{shard="MAIN",instance="w1"}': "3x6",
           'strongroom_shard_applied_seq{shard="MAIN",instance="w1"}': "100x6",
           'strongroom_shard_engine_lag_commands{shard="B",instance="w2"}': "0x6",
           'strongroom_shard_applied_seq{shard="B",instance="w2"}': "50x6"},
          [("3m", "ShardEngineStalled", [PAGE_MAIN]),
           ("3m", "ShardEngineLagHigh", [])]),
    # No leader: both workers of MAIN stand by; B has one leading.
    _case({'strongroom_shard_leader{shard="MAIN",worker="a"}': "1 0 0 0",
           'strongroom_shard_leader{shard="MAIN",worker="b"}': "0 0 0 0",
           'strongroom_shard_leader{shard="B",worker="c"}': "1 1 1 1",
           'strongroom_shard_leader{shard="B",worker="d"}': "0 0 0 0"},
          [("1m", "ShardNoLeader", []),
           ("2m", "ShardNoLeader", [PAGE_MAIN])]),
    # A worker that stops answering scrapes; other jobs' targets are not shard workers.
    _case({'up{job="strongroom-shard-worker",instance="w1:9464"}': "1 0 0 0",
           'up{job="strongroom-shard-worker",instance="w2:9464"}': "1 1 1 1",
           'up{job="strongroom-shard-settlement",instance="s:9464"}': "0 0 0 0"},
          [("3m", "ShardWorkerDown", [{"severity": "page", "job": "strongroom-shard-worker",
                                       "instance": "w1:9464"}])]),
    # Settlement lag over 5,000 for 2 minutes; it commits all along, so it is behind, not stalled.
    _case({'strongroom_shard_settlement_lag_commands{shard="MAIN"}': "6000x5",
           'strongroom_shard_settlement_last_commit_timestamp_seconds{shard="MAIN"}': "0+60x5"},
          [("1m", "ShardSettlementLag", []),
           ("3m", "ShardSettlementLag", [{**PAGE_MAIN, "value": "6000"}]),
           ("4m", "ShardSettlementStalled", [])]),
    # Settlement stalled: results wait and the last commit was long ago.
    _case({'strongroom_shard_settlement_lag_commands{shard="MAIN"}': "10x6",
           'strongroom_shard_settlement_last_commit_timestamp_seconds{shard="MAIN"}': "0x6",
           'strongroom_shard_settlement_lag_commands{shard="B"}': "0x6",
           'strongroom_shard_settlement_last_commit_timestamp_seconds{shard="B"}': "0x6"},
          [("1m", "ShardSettlementStalled", []),
           ("4m", "ShardSettlementStalled", [PAGE_MAIN])]),
    # Divergence: one count is enough, at once.
    _case({'strongroom_shard_state_divergence_total{shard="MAIN",process="gateway",instance="a1"}': "0 0 1 1",
           'strongroom_shard_state_divergence_total{shard="B",process="standby",instance="w2"}': "0 0 0 0"},
          [("1m", "ShardReplicaDivergence", []),
           ("2m", "ShardReplicaDivergence", [{"severity": "page", "shard": "MAIN", "process": "gateway"}])]),
    # Replica lag of one API process (a ticket, not a page).
    _case({'strongroom_shard_replica_lag_commands{shard="MAIN",instance="api1"}': "2000x4",
           'strongroom_shard_replica_lag_commands{shard="MAIN",instance="api2"}': "10x4"},
          [("3m", "ShardReplicaLag", [{"severity": "ticket", "shard": "MAIN", "instance": "api1",
                                        "value": "2000"}])]),
    # Publish p99: every MAIN batch between 50 and 100 ms; B's all under 10 ms.
    _case({'strongroom_shard_batch_publish_duration_seconds_bucket{shard="MAIN",le="0.01"}': "0x30",
           'strongroom_shard_batch_publish_duration_seconds_bucket{shard="MAIN",le="0.05"}': "0x30",
           'strongroom_shard_batch_publish_duration_seconds_bucket{shard="MAIN",le="0.1"}': "0+60x30",
           'strongroom_shard_batch_publish_duration_seconds_bucket{shard="MAIN",le="+Inf"}': "0+60x30",
           'strongroom_shard_batch_publish_duration_seconds_bucket{shard="B",le="0.01"}': "0+60x30",
           'strongroom_shard_batch_publish_duration_seconds_bucket{shard="B",le="0.05"}': "0+60x30",
           'strongroom_shard_batch_publish_duration_seconds_bucket{shard="B",le="0.1"}': "0+60x30",
           'strongroom_shard_batch_publish_duration_seconds_bucket{shard="B",le="+Inf"}': "0+60x30"},
          [("10m", "ShardBatchPublishSlow", []),
           ("20m", "ShardBatchPublishSlow", [{"severity": "ticket", "shard": "MAIN"}])]),
    # Feeders: MAIN's two both stand by from 1 m and its last round stays at 60 s; B's leader
    # keeps its rounds current. Two failed rounds a minute is not yet "keeps failing" at 4 m.
    _case({'strongroom_shard_feeder_leading{shard="MAIN",instance="f1"}': "1 0 0 0 0",
           'strongroom_shard_feeder_leading{shard="MAIN",instance="f2"}': "0 0 0 0 0",
           'strongroom_shard_feeder_leading{shard="B",instance="f3"}': "1 1 1 1 1",
           'strongroom_shard_feeder_last_round_timestamp_seconds{shard="MAIN",instance="a"}': "0 60 60 60 60",
           'strongroom_shard_feeder_last_round_timestamp_seconds{shard="B",instance="f3"}': "0+60x4",
           'strongroom_shard_feeder_failed_rounds_total{shard="MAIN",instance="f1"}': "0+2x4",
           'strongroom_shard_feeder_failed_rounds_total{shard="B",instance="f3"}': "0x4"},
          [("1m", "ShardFeederNoLeader", []),
           ("2m", "ShardFeederNoLeader", [PAGE_MAIN]),
           ("1m", "ShardFeedStale", []),
           ("3m", "ShardFeedStale", [{**PAGE_MAIN, "value": "120"}]),
           ("4m", "ShardFeedRoundsFailing", [])]),
    _case({'strongroom_shard_feeder_failed_rounds_total{shard="MAIN",instance="f1"}': "0+2x12"},
          [("11m", "ShardFeedRoundsFailing", [{"severity": "ticket", "shard": "MAIN"}])]),
]


def test_shard_alert_rules_fire_on_their_condition_and_stay_silent_beside_it(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    tests = tmp_path / "shard_alerts_test.yml"
    tests.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m",
                                     "tests": CASES}))
    result = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shard_alert_rules_each_have_a_firing_case() -> None:
    fired = {check["alertname"] for case in CASES for check in case["alert_rule_test"] if check["exp_alerts"]}
    names = {rule["alert"] for rule in _shard_rules()}
    assert names - fired == set(), f"shard alerts without a firing test: {sorted(names - fired)}"


def test_shard_alert_rules_name_only_families_the_shard_processes_export() -> None:
    families = shard_families() | {"strongroom_ledger_imbalance_minor"}
    for rule in _shard_rules():
        assert rule["labels"]["severity"] in ("page", "ticket"), rule
        assert rule["annotations"]["summary"], rule
        for name in re.findall(r"\bstrongroom_[a-z_]+", rule["expr"]):
            base = re.sub(r"_(total|bucket|count|sum)$", "", name)
            assert name in families or base in families, f"{rule['alert']} uses {name}, not exported"
