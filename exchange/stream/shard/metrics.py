"""Prometheus metrics of the clearing-shard processes (docs/scale-out.md, "Benchmarks and operations").

One `ShardMetrics` object holds every family the shard processes export; each
process fills the ones that concern it and leaves the others empty (an empty
labelled family exports only its HELP and TYPE lines):

- ``strongroom shard-worker`` (leader and standbys): commands applied and
  refused, batch publish latency, the command stream's last sequence, the
  applied and published sequences and the **engine lag** (stream last sequence
  minus applied sequence, in commands), leadership, lost terms, snapshots;
- ``strongroom shard-settlement``: the settled sequence, the **settlement lag**
  (published result batches not yet committed to the ledger, in commands), the
  time of the last commit, postings written by kind, and the ledger's
  imbalance per asset (must be 0; same family as the API's);
- the shard gateway in each API worker: the replica's applied sequence and
  **replica lag** (the highest sequence the process appended or saw minus the
  replica's), append and wait-for-own-sequence latency, appends by outcome;
- every replica (worker, standby, gateway): **state divergence**, a replica
  whose state hash after a batch differs from the hash the leader published.

Names follow the Prometheus conventions of strongroom/metrics.py: the
``strongroom_shard_`` prefix, base units last (``_seconds``, ``_minor``,
``_commands`` for a count of stream commands), counters ending in ``_total``.
Sequences and lags are gauges of integers; money never passes through here
except the imbalance, which is for alerting, never for accounting.

The worker processes are not Flask apps: `serve_metrics` starts a small
threaded HTTP server for ``GET /metrics`` (bearer token as in
strongroom/metrics.py, compared in constant time) and ``GET /healthz``
(liveness, for the Kubernetes probes). `serve_from_env` reads
``STRONGROOM_METRICS_PORT`` (unset: no server) so a CLI hooks it with one call.
In a gunicorn API worker the gateway's families go into the app's own
registry (``app.extensions["strongroom.metrics"].registry``): pass it in.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("strongroom.shard.metrics")

# A batch publish is one R3 JetStream round trip (about 1 ms on a quiet host); buckets
# resolve 0.25 ms .. 5 s so both a healthy cluster and a leader election show.
PUBLISH_BUCKETS_S: Final = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5,
                            1.0, 2.5, 5.0)
# Commands per published batch: the worker batches up to 256 commands per fetch.
BATCH_SIZE_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
METRICS_PORT_ENV: Final = "STRONGROOM_METRICS_PORT"
METRICS_HOST_ENV: Final = "STRONGROOM_METRICS_HOST"
# In a container the scraper connects from outside: listen on every interface unless told.
ALL_INTERFACES: Final = "0.0.0.0"  # noqa: S104 - the scrape port, token-protected
METRICS_TOKEN_ENV: Final = "STRONGROOM_METRICS_TOKEN"  # noqa: S105 - the variable's name
# Result codes are one bounded enum (exchange/engine/codes.py, risk codes); this caps the
# label's cardinality even if a bug produced arbitrary numbers.
CODE_LABEL_MAX: Final = 99_999


class ShardMetrics:
    """The metric families of the shard processes, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        # -- shard worker -----------------------------------------------------------------------
        self.commands_applied = Counter(
            "strongroom_shard_commands_applied_total",
            "Commands the leading shard worker applied and published", ["shard"], registry=r)
        self.commands_refused = Counter(
            "strongroom_shard_commands_refused_total",
            "Applied commands the venue refused, by result code", ["shard", "code"], registry=r)
        self.batches_published = Counter(
            "strongroom_shard_batches_published_total", "Result batches published", ["shard"],
            registry=r)
        self.publish_seconds = Histogram(
            "strongroom_shard_batch_publish_duration_seconds",
            "Time to publish one fenced result batch (R3 acknowledgement included)", ["shard"],
            buckets=PUBLISH_BUCKETS_S, registry=r)
        self.batch_commands = Histogram(
            "strongroom_shard_batch_commands", "Commands per published result batch", ["shard"],
            buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.stream_last_seq = Gauge(
            "strongroom_shard_stream_last_seq", "Last sequence of the shard's command stream",
            ["shard"], registry=r)
        self.applied_seq = Gauge(
            "strongroom_shard_applied_seq", "Last command the leading worker applied", ["shard"],
            registry=r)
        self.published_seq = Gauge(
            "strongroom_shard_published_seq", "Last command whose results are published",
            ["shard"], registry=r)
        self.engine_lag = Gauge(
            "strongroom_shard_engine_lag_commands",
            "Command stream last sequence minus the leader's applied sequence", ["shard"],
            registry=r)
        self.leader = Gauge(
            "strongroom_shard_leader", "1 while this worker holds the shard's lease, else 0",
            ["shard", "worker"], registry=r)
        self.terms_lost = Counter(
            "strongroom_shard_leader_terms_lost_total",
            "Terms of leadership that ended by fencing, a lost lease or NATS trouble", ["shard"],
            registry=r)
        self.snapshots = Counter(
            "strongroom_shard_snapshots_total", "Snapshots written to the object store", ["shard"],
            registry=r)
        self.snapshot_bytes = Gauge(
            "strongroom_shard_snapshot_bytes", "Size of the last snapshot written", ["shard"],
            registry=r)
        # -- every replica ------------------------------------------------------------------------
        self.divergence = Counter(
            "strongroom_shard_state_divergence_total",
            "Replica state hash differed from the hash the leader published (determinism broken)",
            ["shard", "process"], registry=r)
        # -- settlement ---------------------------------------------------------------------------
        self.settled_seq = Gauge(
            "strongroom_shard_settled_seq", "Last command whose postings the ledger committed",
            ["shard"], registry=r)
        self.settlement_lag = Gauge(
            "strongroom_shard_settlement_lag_commands",
            "Published results not yet committed to the ledger, in commands", ["shard"],
            registry=r)
        self.settlement_commit = Gauge(
            "strongroom_shard_settlement_last_commit_timestamp_seconds",
            "When settlement last committed a batch of the shard (Unix time)", ["shard"],
            registry=r)
        self.settle_seconds = Histogram(
            "strongroom_shard_settlement_batch_duration_seconds",
            "Time to write one result batch's postings to the ledger", ["shard"],
            buckets=PUBLISH_BUCKETS_S, registry=r)
        self.postings_written = Counter(
            "strongroom_shard_postings_written_total",
            "Ledger postings settlement wrote, by kind (single, pending, void, post)",
            ["shard", "kind"], registry=r)
        # -- gateway (API workers) ----------------------------------------------------------------
        self.replica_seq = Gauge(
            "strongroom_shard_replica_seq", "Last command this process's read replica applied",
            ["shard"], registry=r)
        self.replica_lag = Gauge(
            "strongroom_shard_replica_lag_commands",
            "Highest command sequence this process knows of minus its replica's", ["shard"],
            registry=r)
        self.append_seconds = Histogram(
            "strongroom_shard_append_duration_seconds",
            "Time to append one command to the shard stream (R3 acknowledgement)", ["shard"],
            buckets=PUBLISH_BUCKETS_S, registry=r)
        self.wait_seconds = Histogram(
            "strongroom_shard_replica_wait_duration_seconds",
            "Time from the append's acknowledgement to the own replica applying it", ["shard"],
            buckets=PUBLISH_BUCKETS_S, registry=r)
        self.appends = Counter(
            "strongroom_shard_appends_total",
            "Commands appended by this process, by outcome (ok, duplicate, unavailable)",
            ["shard", "outcome"], registry=r)

    # -- shard worker ---------------------------------------------------------------------------

    def worker_applied(self, shard: str, codes: Iterable[int]) -> None:
        """Count one applied batch; `codes` are the results' codes (0 = ok)."""
        n = 0
        for code in codes:
            n += 1
            if code:
                self.commands_refused.labels(shard, _code_label(code)).inc()
        self.commands_applied.labels(shard).inc(n)

    def worker_published(self, shard: str, first_seq: int, last_seq: int, seconds: float) -> None:
        """Record one published result batch `first_seq..last_seq` that took `seconds`."""
        assert 1 <= first_seq <= last_seq, f"batch was {first_seq}..{last_seq}"
        self.batches_published.labels(shard).inc()
        self.publish_seconds.labels(shard).observe(seconds)
        self.batch_commands.labels(shard).observe(last_seq - first_seq + 1)
        self.published_seq.labels(shard).set(last_seq)

    def worker_position(self, shard: str, stream_last_seq: int, applied_seq: int) -> None:
        """Set the stream's last sequence, the applied one and the engine lag between them."""
        self.stream_last_seq.labels(shard).set(stream_last_seq)
        self.applied_seq.labels(shard).set(applied_seq)
        self.engine_lag.labels(shard).set(max(0, stream_last_seq - applied_seq))

    def worker_leading(self, shard: str, worker: str, leading: bool) -> None:
        """Mark whether `worker` leads `shard`; a standby drops the leader-only gauges."""
        self.leader.labels(shard, worker).set(1 if leading else 0)
        if not leading:
            # A standby applies nothing: its stale positions must not feed the lag alerts.
            for gauge in (self.applied_seq, self.published_seq, self.engine_lag):
                _remove(gauge, shard)

    def worker_term_lost(self, shard: str) -> None:
        """Count a term of leadership that ended without a clean stop."""
        self.terms_lost.labels(shard).inc()

    def worker_snapshot(self, shard: str, size_bytes: int) -> None:
        """Count a snapshot of `size_bytes` written."""
        self.snapshots.labels(shard).inc()
        self.snapshot_bytes.labels(shard).set(size_bytes)

    # -- every replica --------------------------------------------------------------------------

    def state_diverged(self, shard: str, process: str) -> None:
        """Count a replica whose state hash differs from the published one (`process`: its role)."""
        self.divergence.labels(shard, process).inc()

    # -- settlement -----------------------------------------------------------------------------

    def settled(self, shard: str, last_seq: int, kinds: Iterable[str], seconds: float,
                now_s: float | None = None) -> None:
        """Record a committed batch up to `last_seq` with postings of `kinds`, taking `seconds`."""
        counts: dict[str, int] = defaultdict(int)
        for kind in kinds:
            counts[kind] += 1
        for kind, n in counts.items():
            self.postings_written.labels(shard, kind).inc(n)
        self.settled_seq.labels(shard).set(last_seq)
        self.settle_seconds.labels(shard).observe(seconds)
        self.settlement_commit.labels(shard).set(time.time() if now_s is None else now_s)

    def settlement_position(self, shard: str, published_seq: int, settled_seq: int) -> None:
        """Set the settlement lag: the shard's published sequence minus the settled one."""
        self.settled_seq.labels(shard).set(settled_seq)
        self.settlement_lag.labels(shard).set(max(0, published_seq - settled_seq))

    def watch_ledger(self, session_factory: Callable[[], Any]) -> LedgerImbalanceCollector:
        """Export the ledger's imbalance per asset, read at scrape time through `session_factory`."""
        collector = LedgerImbalanceCollector(session_factory)
        self.registry.register(collector)
        return collector

    # -- gateway --------------------------------------------------------------------------------

    def appended(self, shard: str, outcome: str, seconds: float) -> None:
        """Record one append (`outcome`: ok, duplicate or unavailable) that took `seconds`."""
        self.appends.labels(shard, outcome).inc()
        if outcome != "unavailable":
            self.append_seconds.labels(shard).observe(seconds)

    def replica_waited(self, shard: str, seconds: float) -> None:
        """Record the wait from an append's acknowledgement to the own replica applying it."""
        self.wait_seconds.labels(shard).observe(seconds)

    def replica_position(self, shard: str, known_seq: int, replica_seq: int) -> None:
        """Set the replica's sequence and its lag behind the highest sequence `known_seq`."""
        self.replica_seq.labels(shard).set(replica_seq)
        self.replica_lag.labels(shard).set(max(0, known_seq - replica_seq))


def _code_label(code: int) -> str:
    return str(code) if 0 < code <= CODE_LABEL_MAX else "other"


def _remove(gauge: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never set
        gauge.remove(*labels)


class LedgerImbalanceCollector(Collector):
    """``strongroom_ledger_imbalance_minor{asset}``: posted credits minus debits of all accounts.

    Every transfer debits and credits the same asset, so the sum is 0 per asset
    unless the ledger has a bug or a row was edited behind its back (same
    reading as the API's, strongroom/metrics.py). A failed read exports
    ``strongroom_shard_metrics_collect_errors`` instead of a wrong 0.
    """

    def __init__(self, session_factory: Callable[[], Any]) -> None:
        self.session_factory = session_factory
        self.errors = 0

    def describe(self) -> list[Any]:
        return []  # read at scrape time

    def collect(self) -> Iterator[Any]:
        try:
            totals = ledger_imbalance(self.session_factory)
        except Exception:  # the scrape must not fail with the database
            log.warning("ledger imbalance read failed", exc_info=True)
            self.errors += 1
        else:
            family = GaugeMetricFamily(
                "strongroom_ledger_imbalance_minor",
                "Posted credits minus debits over all accounts, per asset (must be 0)",
                labels=["asset"])
            for asset in sorted(totals):
                family.add_metric([asset], float(totals[asset]))
            yield family
        yield GaugeMetricFamily("strongroom_shard_metrics_collect_errors",
                                "Failed ledger reads at scrape time since start", value=self.errors)


def ledger_imbalance(session_factory: Callable[[], Any]) -> dict[str, int]:
    """Return ``{asset: posted credits - debits}`` over every ledger account (0 when balanced)."""
    from sqlalchemy import select

    from custody.ledger.models import LedgerAccount

    totals: dict[str, int] = defaultdict(int)
    with session_factory() as session:
        for asset, debits, credits in session.execute(select(
                LedgerAccount.asset, LedgerAccount.debits_posted, LedgerAccount.credits_posted)):
            totals[asset] += int(credits) - int(debits)
    return dict(totals)


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry
    token: str

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, b"ok\n", "text/plain")
            return
        if path != "/metrics":
            self._send(404, b"not found\n", "text/plain")
            return
        if self.token:
            given = self.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                self._send(401, b"metrics need the bearer token\n", "text/plain")
                return
        self._send(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every 15 s would drown the process's own log


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "127.0.0.1",
                  token: str = "") -> ThreadingHTTPServer:
    """Serve ``/metrics`` and ``/healthz`` on `host`:`port` (0 = any free port) in a daemon thread."""
    handler = type("ShardMetricsHandler", (_Handler,), {"registry": registry, "token": token})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="shard-metrics", daemon=True).start()
    return server


def serve_from_env(registry: CollectorRegistry) -> ThreadingHTTPServer | None:
    """Start `serve_metrics` on ``$STRONGROOM_METRICS_PORT`` if set (with the metrics token)."""
    port = os.environ.get(METRICS_PORT_ENV, "").strip()
    if not port:
        return None
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{METRICS_PORT_ENV} was {port[:16]!r}, must be a TCP port number")
    server = serve_metrics(registry, int(port), os.environ.get(METRICS_HOST_ENV, ALL_INTERFACES),
                           os.environ.get(METRICS_TOKEN_ENV, ""))
    log.info("metrics on port %d", server.server_port)
    return server


# -- wiring helpers for the shard processes ----------------------------------------------------


def instrument_settlement(settlement: Any, metrics: ShardMetrics | None = None) -> None:
    """Measure every committed round of a `ShardSettlement` (exchange/stream/shard/settle.py).

    Wraps ``settlement.settle`` (it runs in a thread; the wrapper adds no I/O): after a round
    commits, the postings submitted by kind, the settled sequence, the round's duration and
    the commit time. A round that raises is not counted.
    """
    m = metrics if metrics is not None else PROCESS_METRICS
    inner = settlement.settle
    shard = settlement.shard

    def settle(batches: Any) -> Any:
        started = time.perf_counter()
        n = inner(batches)
        if batches:
            kinds = [p[1] for batch in batches for result in batch.results for p in result.postings]
            m.settled(shard, settlement.stats.last_seq, kinds, time.perf_counter() - started)
        return n

    settlement.settle = settle


async def watch_settlement_lag(js: Any, shard: str, settled_seq: Callable[[], int], stop: Any,
                               metrics: ShardMetrics | None = None, every_s: float = 1.0) -> None:
    """Until `stop` (an asyncio.Event): set the settlement lag every `every_s`.

    The published sequence is the last result batch's ``last_seq`` on ``shardevt.<shard>``;
    NATS trouble skips a reading (the gauge keeps its last value, the stall alert uses the
    commit time, which stops moving).
    """
    import asyncio

    from nats.errors import Error as NatsError
    from nats.js.errors import NotFoundError

    from exchange.stream.shard.wire import SHARD_EVENTS_STREAM, batch_decoder, shard_events_subject

    m = metrics if metrics is not None else PROCESS_METRICS
    while not stop.is_set():
        try:
            msg = await js.get_last_msg(SHARD_EVENTS_STREAM, shard_events_subject(shard))
            published = batch_decoder.decode(msg.data or b"").last_seq
        except NotFoundError:
            published = 0
        except (NatsError, TimeoutError):
            published = -1
        if published >= 0:
            m.settlement_position(shard, published, settled_seq())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


# The process-wide families of a shard CLI process (shard-worker, shard-settlement, shard-feeder).
# An API worker's gateway builds its own ShardMetrics on the app's registry instead.
PROCESS_METRICS: Final = ShardMetrics()
ProcessCollector(registry=PROCESS_METRICS.registry)  # process_cpu_seconds_total, memory, fds

__all__ = ["PROCESS_METRICS", "LedgerImbalanceCollector", "ShardMetrics", "instrument_settlement",
           "ledger_imbalance", "serve_from_env", "serve_metrics", "watch_settlement_lag"]
