"""Deployment files, validated offline: they parse, and they say what docs/production.md says."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _k8s() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "strongroom.yaml").read_text()) if d]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["spec"]["template"]["spec"]["containers"])


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def test_k8s_manifests_have_the_basic_shape_of_their_kind() -> None:
    docs = _k8s()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("HorizontalPodAutoscaler", "strongroom-api") in kinds
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "strongroom"
        if doc["kind"] in ("Deployment", "StatefulSet"):
            selector = doc["spec"]["selector"]["matchLabels"]
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), doc["metadata"]["name"]
            for c in _containers(doc):
                assert c["readinessProbe"]["httpGet"]["path"] == "/api/v1/health"
                assert "memory" in c["resources"]["limits"] and "cpu" in c["resources"]["requests"]
                assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert doc["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_k8s_exchange_is_one_pod_and_the_hpa_scales_only_the_stateless_api() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _k8s()}
    exchange = docs[("StatefulSet", "strongroom-exchange")]
    assert exchange["spec"]["replicas"] == 1
    assert _env(_containers(exchange)[0])["STRONGROOM_ROLE"] == "all"
    api = docs[("Deployment", "strongroom-api")]
    assert _env(_containers(api)[0])["STRONGROOM_ROLE"] == "api"
    hpa = docs[("HorizontalPodAutoscaler", "strongroom-api")]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "strongroom-api"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    ingress = docs[("Ingress", "strongroom")]
    paths = {p["path"]: p["backend"]["service"]["name"] for r in ingress["spec"]["rules"]
             for p in r["http"]["paths"]}
    assert paths["/api/v1/exchange"] == "strongroom-exchange" and paths["/api/v1"] == "strongroom-api"
    assert not any(p.startswith("/metrics") for p in paths)
    assert ingress["spec"]["tls"], "TLS terminates at the ingress"


def test_compose_runs_postgres_migrations_one_exchange_and_an_api_pool_and_prometheus() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "migrate", "exchange", "api", "prometheus"} <= set(services)
    assert services["exchange"]["environment"]["STRONGROOM_ROLE"] == "all"
    assert services["api"]["environment"]["STRONGROOM_ROLE"] == "api"
    assert services["api"]["environment"]["STRONGROOM_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert services["migrate"]["command"] == ["strongroom", "migrate"]
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert prometheus["scrape_configs"][0]["metrics_path"] == "/metrics"


def test_dockerfile_runs_gunicorn_as_an_unprivileged_user() -> None:
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()]
    assert any(line.startswith("USER ") and line != "USER root" and line != "USER 0" for line in lines)
    cmd = next(line for line in lines if line.startswith("CMD "))
    assert "gunicorn" in cmd and "strongroom.wsgi:app" in cmd


@pytest.mark.parametrize(("role", "workers"), [("all", 1), ("api", 5)])
def test_gunicorn_config_holds_the_exchange_role_to_one_worker(
    monkeypatch: pytest.MonkeyPatch, role: str, workers: int
) -> None:
    monkeypatch.setenv("STRONGROOM_ROLE", role)
    monkeypatch.setenv("STRONGROOM_WORKERS", "5")
    config = runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))
    assert config["workers"] == workers and config["preload_app"] is False
