"""Prometheus metrics: ``GET /metrics`` on every API process (docs/production.md).

Names follow the Prometheus conventions: a ``strongroom_`` prefix, base units
last (``_seconds``, ``_minor`` for integer minor units of an asset), counters
ending in ``_total``. Two kinds:

- request metrics, counted as requests pass (``strongroom_http_requests_total``,
  ``strongroom_http_request_duration_seconds``, ``strongroom_api_errors_total``);
  order entry is the ``exchange.place_order`` endpoint of these;
- state gauges, read at scrape time by `StateCollector` from the database and
  the in-process venue: ledger imbalance per asset (must be 0), reconciliation
  drift per wallet, hot wallet balance against its floor and ceiling,
  withdrawals per state, active halts, insurance fund, liquidations, database
  and keystore health, engine clock lag.

Each app has its own registry (tests build many apps). A section that fails
to read increments ``strongroom_metrics_collect_errors_total`` and is left
out of that scrape; the scrape itself never fails. Money gauges are floats by
the exposition format's nature: they are for alerting, never for accounting.
With ``STRONGROOM_METRICS_TOKEN`` set, ``/metrics`` needs ``Authorization:
Bearer <token>`` (compared in constant time).

Under gunicorn with ``PROMETHEUS_MULTIPROC_DIR`` set (deploy/gunicorn.conf.py
wipes it at start and drops a dead worker's gauges), the request metrics live in
prometheus-client's per-process files and one scrape answers the sum over every
worker of the pod, the dead ones' counters included (`MultiProcessView`); the
state gauges are still read once, by the worker that answers.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, Final

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select

log = logging.getLogger(__name__)

EXTENSION: Final = "strongroom.metrics"
# prometheus-client's multiprocess mode: read by prometheus_client when it is imported.
MULTIPROC_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
# Order entry measured p50 10 ms / p99 17.5 ms in-process: buckets resolve 1 ms .. 2.5 s.
LATENCY_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                            0.25, 0.5, 1.0, 2.5)


class AppMetrics:
    """The registry and request metrics of one app."""

    def __init__(self, app: Flask) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("strongroom_http_requests_total", "HTTP requests by endpoint and status",
                                ["method", "endpoint", "status"], registry=self.registry)
        self.latency = Histogram("strongroom_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "endpoint"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.errors = Counter("strongroom_api_errors_total", "API refusals by stable error code",
                              ["code", "error"], registry=self.registry)
        self.collect_errors = Counter("strongroom_metrics_collect_errors_total",
                                      "State sections that failed to read at scrape time", ["section"],
                                      registry=self.registry)
        self.registry.register(StateCollector(app, self))


def init_app(app: Flask) -> None:
    """Count every request and serve ``/metrics``."""
    metrics = AppMetrics(app)
    app.extensions[EXTENSION] = metrics
    token = app.config.get("METRICS_TOKEN", os.environ.get("STRONGROOM_METRICS_TOKEN", ""))

    @app.before_request
    def _start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.pop("metrics_started", None)
        endpoint = request.endpoint or "unmatched"
        if started is not None and endpoint != "metrics":
            metrics.latency.labels(request.method, endpoint).observe(time.perf_counter() - started)
            metrics.requests.labels(request.method, endpoint, str(response.status_code)).inc()
            if response.status_code >= 400 and response.mimetype == "application/json":
                body = response.get_json(silent=True)
                if isinstance(body, dict) and isinstance(body.get("code"), int):
                    metrics.errors.labels(str(body["code"]), str(body.get("error", ""))[:64]).inc()
        return response

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        """Prometheus text exposition of this process's metrics."""
        if token:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return Response("metrics need the bearer token\n", 401, mimetype="text/plain")
        return Response(generate_latest(exposition_registry(metrics)), mimetype=CONTENT_TYPE_LATEST)


def exposition_registry(metrics: AppMetrics) -> CollectorRegistry:
    """Return what ``/metrics`` serves: this process's registry, or every worker's in multiprocess mode."""
    path = os.environ.get(MULTIPROC_DIR_ENV, "")
    if not path:
        return metrics.registry
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MultiProcessView(metrics.registry, path))
    return registry


class MultiProcessView(Collector):
    """Every worker's metric files (summed; gauges per ``pid``) plus this process's scrape-time families.

    A family found in the files is taken from them only: this process's own copy of it is part
    of the files already. Families the files do not have (the state gauges, counters no worker
    has touched yet) come from this process's registry.
    """

    def __init__(self, registry: CollectorRegistry, path: str) -> None:
        self.registry = registry
        self.path = path

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        shared = list(MultiProcessCollector(None, path=self.path).collect())  # type: ignore[no-untyped-call]
        names = {family.name for family in shared}
        yield from shared
        for family in self.registry.collect():
            if family.name not in names:
                yield family


class StateCollector(Collector):
    """Gauges read from the database and the in-process venue at scrape time."""

    def __init__(self, app: Flask, metrics: AppMetrics) -> None:
        self.app = app
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []  # built at scrape time; nothing to describe up front

    def collect(self) -> Iterator[Any]:
        for section in (self._health, self._ledger, self._withdrawals, self._halts, self._wallets,
                        self._exchange):
            try:
                yield from section()
            except Exception:  # a broken section must not take the others (or the scrape) down
                log.warning("metrics section %s failed", section.__name__, exc_info=True)
                self.metrics.collect_errors.labels(section.__name__.lstrip("_")).inc()

    def _sessions(self) -> Any:
        return self.app.extensions["strongroom.sessions"]

    def _health(self) -> Iterator[Any]:
        from strongroom.app import component_checks

        checks = component_checks(self.app)
        up = GaugeMetricFamily("strongroom_component_up", "1 when the dependency answers, else 0",
                               labels=["component"])
        for name in ("database", "keystore"):
            up.add_metric([name], 1.0 if checks.get(name) == "ok" else 0.0)
        yield up

    def _ledger(self) -> Iterator[Any]:
        from custody.ledger.models import LedgerAccount

        # Every transfer debits and credits the same asset, so per asset the posted credits and
        # debits of all accounts are equal; anything else is a ledger bug or a tampered row.
        totals: dict[str, int] = defaultdict(int)
        with self._sessions()() as session:
            for asset, debits, credits in session.execute(select(
                    LedgerAccount.asset, LedgerAccount.debits_posted, LedgerAccount.credits_posted)):
                totals[asset] += int(credits) - int(debits)
            seq = session.execute(select(func.max(LedgerAccount.last_seq))).scalar() or 0
        imbalance = GaugeMetricFamily("strongroom_ledger_imbalance_minor",
                                      "Posted credits minus debits over all accounts, per asset (must be 0)",
                                      labels=["asset"])
        for asset in sorted(totals):
            imbalance.add_metric([asset], float(totals[asset]))
        yield imbalance
        yield GaugeMetricFamily("strongroom_ledger_last_seq", "Highest ledger entry sequence", value=seq)

    def _withdrawals(self) -> Iterator[Any]:
        from custody.withdrawals.models import WithdrawalRequest

        with self._sessions()() as session:
            rows = session.execute(select(WithdrawalRequest.state, func.count())
                                   .group_by(WithdrawalRequest.state)).all()
        gauge = GaugeMetricFamily("strongroom_withdrawals", "Withdrawals by pipeline state", labels=["state"])
        for state, count in sorted(rows):
            gauge.add_metric([state], float(count))
        yield gauge

    def _halts(self) -> Iterator[Any]:
        from custody.withdrawal_halts import GLOBAL, SCOPES, listing

        with self._sessions()() as session:
            active = {h.scope for h in listing(session)}
        gauge = GaugeMetricFamily("strongroom_withdrawals_halted", "1 while a withdrawal halt is active",
                                  labels=["scope"])
        for scope in SCOPES:
            gauge.add_metric([scope], 1.0 if scope in active else 0.0)
        yield gauge
        yield GaugeMetricFamily("strongroom_withdrawals_frozen_globally", "1 while the global freeze is on",
                                value=1.0 if GLOBAL in active else 0.0)

    def _wallets(self) -> Iterator[Any]:
        from custody.reconciliation import report_from_row
        from custody.wallets.models import ReconciliationRun, WalletLimit

        drift = GaugeMetricFamily("strongroom_reconciliation_drift_minor",
                                  "On-chain minus expected balance at the last reconciliation",
                                  labels=["chain", "wallet", "asset"])
        hot = GaugeMetricFamily("strongroom_hot_wallet_balance_minor",
                                "Hot wallet on-chain balance at the last reconciliation",
                                labels=["chain", "asset"])
        age = GaugeMetricFamily("strongroom_reconciliation_last_run_timestamp_seconds",
                                "When the last reconciliation of a chain ran", labels=["chain"])
        floor = GaugeMetricFamily("strongroom_hot_wallet_floor_minor", "Hot wallet floor",
                                  labels=["chain", "asset"])
        ceiling = GaugeMetricFamily("strongroom_hot_wallet_ceiling_minor", "Hot wallet ceiling",
                                    labels=["chain", "asset"])
        with self._sessions()() as session:
            latest = session.execute(select(ReconciliationRun.chain, func.max(ReconciliationRun.id))
                                     .group_by(ReconciliationRun.chain)).all()
            for chain, run_id in sorted(latest):
                report = report_from_row(session.get_one(ReconciliationRun, run_id))
                age.add_metric([chain], report.run_ms / 1000)
                for line in report.lines:
                    on_chain = int(line["on_chain_minor"])
                    expected = int(line.get("expected_minor", on_chain))
                    drift.add_metric([chain, str(line["wallet"]), line["asset"]], float(on_chain - expected))
                    if line.get("temperature") == "hot":
                        hot.add_metric([chain, line["asset"]], float(on_chain))
            for row in session.scalars(select(WalletLimit)):
                floor.add_metric([row.chain, row.asset], float(row.floor_minor))
                ceiling.add_metric([row.chain, row.asset], float(row.ceiling_minor))
        yield from (drift, hot, age, floor, ceiling)

    def _exchange(self) -> Iterator[Any]:
        svc = self.app.extensions.get("strongroom.exchange")
        if svc is None:
            return
        clock = self.app.extensions.get("strongroom.clock")
        with svc.lock:
            venue = svc.venue
            ch = venue.clearing
            now_ms = int(clock()) if clock is not None else venue.now_ms
            insurance, bad_debt = ch.insurance, ch.bad_debt
            liquidations = getattr(svc, "liquidations", 0)
            modes = {s: venue.controls.mode(s, now_ms) for s in sorted(venue.specs)}
            trips = venue.controls.trips
            lag_s = max(0, now_ms - venue.now_ms) / 1000
            backlog = len(getattr(svc, "_backlog", ()) or ())
        yield GaugeMetricFamily("strongroom_exchange_insurance_fund_minor", "Insurance fund",
                                value=insurance)
        yield GaugeMetricFamily("strongroom_exchange_bad_debt_minor", "Losses written off (<= 0)",
                                value=bad_debt)
        yield CounterMetricFamily("strongroom_exchange_liquidations", "Liquidations started",
                                  value=liquidations)
        yield CounterMetricFamily("strongroom_exchange_circuit_breaker_trips", "Circuit breaker trips",
                                  value=trips)
        yield GaugeMetricFamily("strongroom_exchange_engine_lag_seconds",
                                "Wall clock minus the venue clock (time since the venue last advanced)",
                                value=lag_s)
        yield GaugeMetricFamily("strongroom_exchange_postings_backlog",
                                "Venue postings not yet written to the ledger", value=backlog)
        mode = GaugeMetricFamily("strongroom_exchange_market_mode",
                                 "1 for the mode each market is in (open, cancel_only, halted)",
                                 labels=["symbol", "mode"])
        for symbol, current in modes.items():
            for candidate in ("open", "cancel_only", "halted"):
                mode.add_metric([symbol, candidate], 1.0 if candidate == current else 0.0)
        yield mode


def error_codes_seen(metrics: AppMetrics) -> dict[str, float]:
    """Return ``{code: count}`` of API refusals counted so far (tests, the operator CLI)."""
    out: dict[str, float] = {}
    for family in metrics.registry.collect():
        if family.name == "strongroom_api_errors":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[sample.labels["code"]] = out.get(sample.labels["code"], 0) + sample.value
    return out


__all__ = ["AppMetrics", "MultiProcessView", "error_codes_seen", "exposition_registry", "init_app"]
