"""GET /metrics: scraped in a test; the alert rules name only metrics the platform exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from custody.ledger.models import LedgerAccount
from tests.custody.access.helpers import SignedClient
from tests.exchange.test_api import BASE, BTC, USDC, Caller
from tests.strongroom.test_killswitch_api import admin, database_url, traders  # noqa: F401  (fixtures)

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"


def scrape(client: FlaskClient, **headers: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.data
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.data.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    found = [v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())]
    assert found, f"{name}{labels} not exported; have {sorted(samples)[:50]}"
    return sum(found)


def test_metrics_scrape_shows_orders_errors_ledger_balance_and_halts(
    app: Flask, client: FlaskClient, traders: tuple[Caller, Caller], admin: SignedClient  # noqa: F811
) -> None:
    alice, bob = traders
    r = alice.call("POST", f"{BASE}/orders", {"symbol": "BTC-PERP", "id": "a1", "side": "sell", "qty": 10,
                                              "price": BTC})
    assert r.status_code == 201
    bob.call("POST", f"{BASE}/orders", {"symbol": "BTC-PERP", "id": "b1", "side": "buy", "qty": 10,
                                        "price": BTC})
    admin.post(f"{BASE}/admin/markets/BTC-PERP/status", json={"mode": "halted"}, mfa=True)
    refused = alice.call("POST", f"{BASE}/orders", {"symbol": "BTC-PERP", "id": "a2", "side": "buy", "qty": 1,
                                                    "price": BTC})
    assert refused.status_code == 409
    admin.post("/api/v1/withdrawal-halts", json={"scope": "chain:bitcoin"}, mfa=True)

    m = scrape(client)
    assert value(m, "strongroom_http_requests_total", endpoint="exchange.place_order", status="201") == 2
    assert value(m, "strongroom_http_requests_total", endpoint="exchange.place_order", status="409") == 1
    assert value(m, "strongroom_http_request_duration_seconds_count", endpoint="exchange.place_order") == 3
    assert value(m, "strongroom_api_errors_total", code="2021", error="market_halted") == 1
    for asset in ("USDC",):
        assert value(m, "strongroom_ledger_imbalance_minor", asset=asset) == 0
    assert value(m, "strongroom_exchange_market_mode", symbol="BTC-PERP", mode="halted") == 1
    assert value(m, "strongroom_exchange_market_mode", symbol="ETH-PERP", mode="open") == 1
    assert value(m, "strongroom_withdrawals_halted", scope="chain:bitcoin") == 1
    assert value(m, "strongroom_withdrawals_frozen_globally") == 0
    assert value(m, "strongroom_component_up", component="database") == 1
    assert value(m, "strongroom_exchange_insurance_fund_minor") >= 0
    assert "strongroom_exchange_liquidations_total" in m
    assert sum(v for _, v in m.get("strongroom_metrics_collect_errors_total", [])) == 0


def test_metrics_show_a_ledger_row_edited_behind_the_ledgers_back(
    app: Flask, client: FlaskClient, traders: tuple[Caller, Caller]  # noqa: F811
) -> None:
    # An insider with database access credits themselves without a transfer.
    with app.extensions["strongroom.sessions"].begin() as session:
        row = session.query(LedgerAccount).filter_by(owner="alice", asset="USDC").first()
        assert row is not None
        session.execute(update(LedgerAccount).where(LedgerAccount.id == row.id)
                        .values(credits_posted=int(row.credits_posted) + 7 * USDC))
    assert value(scrape(client), "strongroom_ledger_imbalance_minor", asset="USDC") == 7 * USDC


def test_metrics_with_a_token_refuse_a_scrape_without_it(app: Flask, client: FlaskClient) -> None:
    from strongroom import metrics

    token_app = Flask("t")
    token_app.config["METRICS_TOKEN"] = "s3cret-scrape-token"
    token_app.extensions.update({k: v for k, v in app.extensions.items() if k.startswith("strongroom.")
                                 and k != metrics.EXTENSION})
    metrics.init_app(token_app)
    c = token_app.test_client()
    assert c.get("/metrics").status_code == 401
    assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape-token"}).status_code == 200


def test_metrics_endpoint_is_not_part_of_the_signed_api_document(client: FlaskClient) -> None:
    document = client.get("/api/v1/openapi.json").json
    assert "/metrics" not in document["paths"]


def _rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_alert_rules_name_only_exported_metrics(
    app: Flask, client: FlaskClient, traders: tuple[Caller, Caller]  # noqa: F811
) -> None:
    exported = set(scrape(client))
    # Families without samples yet (no reconciliation has run here) are still declared.
    from strongroom.metrics import EXTENSION

    families = {f.name for f in app.extensions[EXTENSION].registry.collect()}
    # The clearing-shard processes (shard-worker, shard-settlement, the gateways' replicas) export
    # their own families (exchange/stream/shard/metrics.py; rules tested in test_shard_alerts.py).
    from tests.strongroom.test_shard_alerts import shard_families

    families |= shard_families()
    names = set()
    for rule in _rules():
        assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
        assert rule["labels"]["severity"] in ("page", "ticket"), rule
        names |= set(re.findall(r"\bstrongroom_[a-z_]+", rule["expr"]))
    assert names, "no rule names a strongroom metric"
    for name in sorted(names):
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert name in exported or base in families, f"alert rule uses {name}, which /metrics does not export"


def test_alert_rules_pass_promtool_when_installed(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ledger_imbalance_alert_fires_on_the_scraped_values_when_promtool_installed(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(yaml.safe_dump({
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": 'strongroom_ledger_imbalance_minor{asset="USDC"}', "values": "0 0 7000000"},
                {"series": 'strongroom_ledger_imbalance_minor{asset="BTC"}', "values": "0 0 0"},
                {"series": "strongroom_exchange_insurance_fund_minor", "values": "5 5 5"},
            ],
            "alert_rule_test": [
                {"eval_time": "1m", "alertname": "LedgerImbalance", "exp_alerts": []},
                {"eval_time": "2m", "alertname": "LedgerImbalance", "exp_alerts": [{
                    "exp_labels": {"severity": "page", "asset": "USDC"},
                    "exp_annotations": {
                        "summary": "Ledger out of balance for USDC",
                        "description": "Posted credits minus debits over all accounts is 7e+06, must be 0. "
                                       "Freeze withdrawals (strongroom halt withdrawals --scope global) "
                                       "and audit."}}]},
                {"eval_time": "2m", "alertname": "InsuranceFundDepleted", "exp_alerts": []},
            ],
        }],
    }))
    result = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_json_logs_carry_the_request_id_and_no_secrets(
    app: Flask, client: FlaskClient, traders: tuple[Caller, Caller]  # noqa: F811
) -> None:
    import io
    import json
    import logging

    from strongroom.logs import JsonFormatter, RequestIdFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with app.test_request_context("/api/v1/health", headers={"X-Request-Id": "req-42"}):
            app.preprocess_request()
            logging.getLogger("probe").warning("probe %s", "ran")
        response = client.get("/api/v1/health", headers={"X-Request-Id": "req-42"})
        assert response.headers["X-Request-Id"] == "req-42"
        generated = client.get("/api/v1/health", headers={"X-Request-Id": "bad id with spaces"})
        assert re.fullmatch(r"[0-9a-f]{16}", generated.headers["X-Request-Id"])
        alice, _ = traders
        alice.call("POST", f"{BASE}/orders", {"symbol": "BTC-PERP", "id": "z1", "side": "buy", "qty": 10**30,
                                              "price": BTC})
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    probes = [x for x in lines if x["logger"] == "probe"]
    assert probes[0]["request_id"] == "req-42"
    assert {"ts", "level", "logger", "message", "request_id"} <= set(probes[0])
    assert alice.secret not in stream.getvalue()
