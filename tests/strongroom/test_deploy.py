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
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


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
            component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
            for c in _containers(doc):
                # The HTTP tiers answer /api/v1/health; NATS and the shard processes /healthz.
                health = "/api/v1/health" if component in ("api", "exchange") else "/healthz"
                assert c["readinessProbe"]["httpGet"]["path"] == health, doc["metadata"]["name"]
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
    assert paths["/api/v1"] == "strongroom-api" and paths["/console"] == "strongroom-exchange"
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


def _gunicorn(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> dict[str, Any]:
    for name in ("STRONGROOM_ROLE", "STRONGROOM_WORKERS", "STRONGROOM_THREADS",
                 "STRONGROOM_EXCHANGE_SHARD_NATS_URLS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))


def test_gunicorn_config_shard_mode_defaults_to_one_gthread_worker_with_eight_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = _gunicorn(monkeypatch, {"STRONGROOM_ROLE": "api",
                                     "STRONGROOM_EXCHANGE_SHARD_NATS_URLS": "nats://n1:4222"})
    assert (config["worker_class"], config["workers"], config["threads"]) == ("gthread", 1, 8)
    overridden = _gunicorn(monkeypatch, {"STRONGROOM_ROLE": "api", "STRONGROOM_WORKERS": "2",
                                         "STRONGROOM_THREADS": "4",
                                         "STRONGROOM_EXCHANGE_SHARD_NATS_URLS": "nats://n1:4222"})
    assert (overridden["workers"], overridden["threads"]) == (2, 4)


def test_gunicorn_config_without_shard_mode_keeps_two_per_core_plus_one_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import multiprocessing

    config = _gunicorn(monkeypatch, {"STRONGROOM_ROLE": "api", "STRONGROOM_EXCHANGE_SHARD_NATS_URLS": " "})
    assert (config["workers"], config["threads"]) == (2 * multiprocessing.cpu_count() + 1, 4)


def _configmap() -> dict[str, str]:
    return dict(next(d for d in _k8s() if d["kind"] == "ConfigMap")["data"])


def test_k8s_api_pods_run_the_shard_mode_gunicorn_sizing(monkeypatch: pytest.MonkeyPatch) -> None:
    [api] = [d for d in _by_component("api") if d["kind"] == "Deployment"]
    container = _containers(api)[0]
    assert {"configMapRef": {"name": "strongroom"}} in container["envFrom"]
    # What gunicorn.conf.py sees in the pod: the ConfigMap, then the container's own env.
    config = _gunicorn(monkeypatch, {**_configmap(), **_env(container)})
    assert (config["workers"], config["threads"]) == (1, 8), "nothing overrides the measured best"
    assert container["resources"]["requests"]["cpu"] == "1"


def test_k8s_shard_mode_routes_the_exchange_to_the_autoscaled_api_pool() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _k8s()}
    assert _configmap()["STRONGROOM_EXCHANGE_SHARD_NATS_URLS"], "this manifest runs shard mode"
    ingress = docs[("Ingress", "strongroom")]
    paths = {p["path"]: p["backend"]["service"]["name"] for r in ingress["spec"]["rules"]
             for p in r["http"]["paths"]}
    hpa = next(d for d in _k8s() if d["kind"] == "HorizontalPodAutoscaler")
    target = docs[("Deployment", hpa["spec"]["scaleTargetRef"]["name"])]
    for path in ("/api/v1/exchange", "/api/v1/market"):  # both served from each pod's replicas
        service = docs[("Service", paths[path])]
        assert service["spec"]["selector"].items() <= target["spec"]["template"]["metadata"]["labels"].items()
    # The console (in-process views of the venue) stays with the one exchange pod.
    assert paths["/console"] == "strongroom-exchange"


def test_k8s_trusts_exactly_the_ingress_as_proxy_and_only_it_reaches_the_http_pods() -> None:
    assert _configmap()["STRONGROOM_TRUSTED_PROXY_HOPS"] == "1"
    policy = next(d for d in _k8s() if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "strongroom")
    sources = [s["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
               for rule in policy["spec"]["ingress"] for s in rule["from"]]
    assert sources == ["ingress-nginx", "monitoring"]


def test_compose_never_trusts_forwarded_for_and_leaves_api_sizing_to_shard_mode() -> None:
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    for name in ("api", "exchange"):
        assert services[name]["environment"]["STRONGROOM_TRUSTED_PROXY_HOPS"] == "0", name
    api = services["api"]["environment"]
    assert api["STRONGROOM_EXCHANGE_SHARD_NATS_URLS"] and "STRONGROOM_WORKERS" not in api
    assert "STRONGROOM_THREADS" not in api


SHARD_COMPONENTS = ("shard-worker", "shard-feeder", "shard-settlement")


def _by_component(component: str) -> list[dict[str, Any]]:
    return [d for d in _k8s() if d["kind"] in ("Deployment", "StatefulSet")
            and d["metadata"]["labels"].get("app.kubernetes.io/component") == component]


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_k8s_shard_workers_run_leader_and_standby_and_settlement_runs_once() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _k8s()}
    workers = _by_component("shard-worker")
    assert workers, "no shard-worker Deployment"
    for doc in workers:
        shard = doc["metadata"]["labels"]["strongroom.io/shard"]
        assert doc["spec"]["replicas"] == 2, "leader + standby"
        command = _containers(doc)[0]["command"]
        assert command[:2] == ["strongroom", "shard-worker"] and _option(command, "--shard") == shard
        pdb = docs[("PodDisruptionBudget", doc["metadata"]["name"])]
        assert pdb["spec"]["minAvailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"] == doc["spec"]["selector"]["matchLabels"]
    for doc in _by_component("shard-feeder"):
        assert doc["spec"]["replicas"] == 2 and _containers(doc)[0]["command"][1] == "shard-feeder"
    [settlement] = _by_component("shard-settlement")
    assert settlement["spec"]["replicas"] == 1 and settlement["spec"]["strategy"] == {"type": "Recreate"}
    scaled = {d["spec"]["scaleTargetRef"]["name"] for d in _k8s() if d["kind"] == "HorizontalPodAutoscaler"}
    assert scaled == {"strongroom-api"}, "only the stateless API tier autoscales"


def test_k8s_shard_processes_serve_metrics_where_prometheus_scrapes_them() -> None:
    for component in SHARD_COMPONENTS:
        for doc in _by_component(component):
            template = doc["spec"]["template"]
            port = template["metadata"]["annotations"]["prometheus.io/port"]
            container = _containers(doc)[0]
            assert _env(container)["STRONGROOM_METRICS_PORT"] == port, doc["metadata"]["name"]
            assert {"name": "metrics", "containerPort": int(port)} in container["ports"]
    policy = next(d for d in _k8s() if d["kind"] == "NetworkPolicy"
                  and d["metadata"]["name"] == "strongroom-shard-metrics")
    assert set(policy["spec"]["podSelector"]["matchExpressions"][0]["values"]) == set(SHARD_COMPONENTS)


def test_k8s_nats_is_three_routed_nodes_reachable_by_the_app_pods() -> None:
    [nats] = _by_component("nats")
    assert nats["spec"]["replicas"] == 3
    args = _containers(nats)[0]["args"]
    routes = _option(args, "--routes").split(",")
    name = nats["metadata"]["name"]
    assert routes == [f"nats://{name}-{i}.{nats['spec']['serviceName']}:6222" for i in range(3)]
    config = next(d for d in _k8s() if d["kind"] == "ConfigMap")
    urls = config["data"]["STRONGROOM_EXCHANGE_SHARD_NATS_URLS"].split(",")
    assert urls == [r.replace(":6222", ":4222") for r in routes]
    policy = next(d for d in _k8s() if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == name)
    client = next(rule for rule in policy["spec"]["ingress"] if rule["ports"] == [{"port": 4222}])
    assert client["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "strongroom"}}}]


def test_compose_runs_a_nats_cluster_two_workers_per_shard_feeders_and_settlement() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    nats = sorted(name for name in services if name.startswith("nats"))
    assert nats == ["nats1", "nats2", "nats3"]
    for name in nats:
        command = services[name]["command"]
        assert _option(command, "--name") == name
        assert _option(command, "--routes").split(",") == [f"nats://{n}:6222" for n in nats]
    api_urls = services["api"]["environment"]["STRONGROOM_EXCHANGE_SHARD_NATS_URLS"].split(",")
    hosts = [_nats_user(u)[1] for u in api_urls]
    assert hosts == [f"{n}:4222" for n in nats]
    shards: dict[tuple[str, str], list[str]] = {}
    for service in services.values():
        command = service.get("command") or []
        if command[:2] in (["strongroom", "shard-worker"], ["strongroom", "shard-feeder"]):
            key = (command[1], _option(command, "--shard"))
            shards.setdefault(key, []).append(_option(command, "--name"))
            urls = service["environment"]["STRONGROOM_EXCHANGE_SHARD_NATS_URLS"].split(",")
            assert [_nats_user(u)[1] for u in urls] == hosts
    assert shards, "no shard processes in compose"
    for (kind, shard), names in shards.items():
        assert len(names) == 2 and len(set(names)) == 2, f"{kind} {shard}: leader + standby, distinct names"
    assert services["shard-settlement"]["command"][:2] == ["strongroom", "shard-settlement"]


# Which NATS user (deploy/nats/nats.conf) each process connects as.
NATS_ROLE_OF = {"shard-worker": "worker", "shard-feeder": "feeder", "shard-settlement": "settlement"}


def _nats_user(url: str) -> tuple[str, str]:
    """Return (user, host:port) of a NATS URL; its password must be a ${VARIABLE}, never a literal."""
    scheme, _, rest = url.partition("://")
    userinfo, _, host = rest.rpartition("@")
    user, _, secret = userinfo.partition(":")
    assert scheme == "nats" and user, url
    assert secret.startswith(("${NATS_", "$(NATS_")), f"literal password in {url[:20]}"
    return user, host


def test_compose_each_service_connects_to_nats_as_its_roles_user() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    conf = (DEPLOY / "nats" / "nats.conf").read_text()
    seen = set()
    for name, service in compose.items():
        command = service.get("command") or []
        if name.startswith("nats"):
            assert _option(command, "--config") == "/etc/nats/nats.conf"
            assert "./nats/nats.conf:/etc/nats/nats.conf:ro" in service["volumes"]
            continue
        env = service.get("environment") or {}
        if "STRONGROOM_EXCHANGE_SHARD_NATS_URLS" not in env:
            continue
        role = NATS_ROLE_OF.get(command[1] if command[:1] == ["strongroom"] else "", "gateway")
        users = {_nats_user(u)[0] for u in env["STRONGROOM_EXCHANGE_SHARD_NATS_URLS"].split(",")}
        assert users == {role}, name
        assert "--nats" not in command, f"{name}: credentials belong in the environment, not argv"
        assert f"{{user: {role}, password: $NATS_{role.upper()}_PASSWORD" in conf
        seen.add(role)
    assert seen == {"gateway", "worker", "feeder", "settlement"}


def test_deploy_feeders_quote_real_prices_not_the_simulated_market() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    commands = [s["command"] for s in compose.values() if (s.get("command") or [""])[1:2] == ["shard-feeder"]]
    commands += [_containers(d)[0]["command"] for d in _by_component("shard-feeder")]
    assert len(commands) >= 3  # two compose services, one Deployment of two
    for command in commands:
        assert _option(command, "--source") == "ccxt", command


def test_prometheus_scrapes_every_shard_process_of_compose_on_its_metrics_port() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    scraped = {}
    for job in prometheus["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                scraped[name] = (job["job_name"], sd["port"])
    shard_services = {name: s for name, s in compose.items()
                      if (s.get("command") or [""])[:2][-1].startswith("shard-")}
    assert set(shard_services) == {n for n, (job, _) in scraped.items() if job.startswith("strongroom-shard")}
    for name, service in shard_services.items():
        job, port = scraped[name]
        assert str(port) == service["environment"]["STRONGROOM_METRICS_PORT"], name
        assert job == f"strongroom-{service['command'][1]}", (name, job)


def test_deploy_shard_commands_name_real_cli_commands_and_options() -> None:
    import click

    from strongroom.cli import main

    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    commands = [s["command"] for s in compose.values() if (s.get("command") or [""])[0] == "strongroom"]
    commands += [_containers(d)[0]["command"] for c in SHARD_COMPONENTS for d in _by_component(c)]
    ctx = click.Context(main)
    for command in commands:
        sub = main.get_command(ctx, command[1])
        assert sub is not None, f"strongroom {command[1]} does not exist"
        known = {opt for p in sub.params for opt in getattr(p, "opts", [])}
        given = {arg for arg in command[2:] if arg.startswith("--")}
        assert given <= known, f"strongroom {command[1]} has no option {sorted(given - known)}"


def test_deploy_api_pools_use_prometheus_multiprocess_mode_on_a_writable_directory() -> None:
    [api] = [d for d in _by_component("api") if d["kind"] == "Deployment"]
    container = _containers(api)[0]
    path = Path(_env(container)["PROMETHEUS_MULTIPROC_DIR"])
    volumes = {v["name"]: v for v in api["spec"]["template"]["spec"]["volumes"]}
    mounts = [m for m in container["volumeMounts"] if path.is_relative_to(m["mountPath"])]
    assert mounts and "emptyDir" in volumes[mounts[0]["name"]], "read-only root: the directory needs a volume"
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    assert compose["api"]["environment"]["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")
    hooks = runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))
    assert callable(hooks["on_starting"]) and callable(hooks["child_exit"])


def _host_ports(spec: str) -> set[int]:
    host = spec.rsplit(":", 1)[0].rsplit(":", 1)[-1]  # "127.0.0.1:8610-8619:8600" -> "8610-8619"
    low, _, high = host.partition("-")
    return set(range(int(low), int(high or low) + 1))


def test_compose_services_publish_disjoint_host_ports() -> None:
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    taken: dict[int, str] = {}
    for name, service in services.items():
        for spec in service.get("ports", []):
            for port in _host_ports(spec):
                assert port not in taken, f"{name} and {taken[port]} both publish host port {port}"
                taken[port] = name


def test_k8s_each_pod_connects_to_nats_as_its_roles_user_with_the_password_from_a_secret() -> None:
    docs = _k8s()
    nats_conf = next(d for d in docs
                     if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "strongroom-nats")
    assert nats_conf["data"]["nats.conf"] == (DEPLOY / "nats" / "nats.conf").read_text()
    [nats] = _by_component("nats")
    assert _option(_containers(nats)[0]["args"], "--config") == "/etc/nats/nats.conf"
    seen = set()
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet") or doc is nats:
            continue
        for container in _containers(doc):
            urls = _env(container).get("STRONGROOM_EXCHANGE_SHARD_NATS_URLS")
            if urls is None:
                continue
            command = container.get("command") or []
            role = NATS_ROLE_OF.get(command[1] if command[:1] == ["strongroom"] else "", "gateway")
            assert {_nats_user(u)[0] for u in urls.split(",")} == {role}, doc["metadata"]["name"]
            [secret] = [e["valueFrom"]["secretKeyRef"] for e in container["env"]
                        if e["name"] == f"NATS_{role.upper()}_PASSWORD"]
            assert secret == {"name": "strongroom-nats", "key": f"{role}-password"}
            assert "--nats" not in command, "credentials belong in the environment, not argv"
            seen.add(role)
    assert seen == {"gateway", "worker", "feeder", "settlement"}
