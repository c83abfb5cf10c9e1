"""gunicorn settings for Strongroom (docs/production.md, "Sizing").

``STRONGROOM_ROLE=api``: ``STRONGROOM_WORKERS`` (default 2 x cores + 1) sync
workers with ``STRONGROOM_THREADS`` threads each. Requests are short and
mostly wait on PostgreSQL, so threads add concurrency cheaply; every worker
holds its own SQLAlchemy pool (pool size 5 + overflow 10 by default), so keep
workers x replicas x 15 under PostgreSQL's ``max_connections`` (or put
PgBouncer in front).

``STRONGROOM_ROLE=all`` (the exchange and jobs process): exactly one worker;
the venue's journal directory is locked by the process holding it, and a
second one would refuse to start (``VenueLocked``).

Shard mode (``STRONGROOM_EXCHANGE_SHARD_NATS_URLS`` set): every worker process
runs a read replica of each clearing shard, and a replica applies *every*
command of its shard, so more processes per pod cost CPU instead of adding
throughput. The defaults become 1 worker x 8 threads (``gthread``), the best of
the sweep measured on 2 cores (docs/scale-out.md, "Benchmarks and operations":
95 orders/s answered at 150/s offered against 82 for 2x8, 36 for 2x4 and 9 for
sync 2x1; p50 13.9 ms / p99 50.8 ms at 50/s against 25.1 / 195.5 ms for 2x8).
Scale shard mode by pods, not by processes per pod. ``STRONGROOM_WORKERS`` and
``STRONGROOM_THREADS`` still override.
"""

import glob
import multiprocessing
import os

role = os.environ.get("STRONGROOM_ROLE", "all")
bind = os.environ.get("STRONGROOM_BIND", "0.0.0.0:8600")
shard_mode = bool(os.environ.get("STRONGROOM_EXCHANGE_SHARD_NATS_URLS", "").strip())
if role == "all":
    workers = 1
elif shard_mode:
    workers = int(os.environ.get("STRONGROOM_WORKERS", "1"))
else:
    workers = int(os.environ.get("STRONGROOM_WORKERS", 2 * multiprocessing.cpu_count() + 1))
threads = int(os.environ.get("STRONGROOM_THREADS", "8" if shard_mode else "4"))
worker_class = "gthread"
timeout = 30
graceful_timeout = 20
keepalive = 5
# Each worker builds its own app (database pools, keystore handles): never share them across fork.
preload_app = False
# Bodies over 4 MiB are refused by the app; request lines and headers are bounded here.
limit_request_line = 8190
limit_request_fields = 100
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(L)ss rid=%({x-request-id}o)s'
errorlog = "-"
forwarded_allow_ips = os.environ.get("STRONGROOM_FORWARDED_ALLOW_IPS", "127.0.0.1")

# prometheus-client multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set on the API pods): every worker
# writes its metrics to files there and /metrics answers the sum over the pod's workers
# (strongroom/metrics.py). The directory is emptied when the master starts (no counters of an
# earlier run); a dead worker's counters stay in the sums, its gauges go (a dead worker has no lag).
multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


def on_starting(server):
    if multiproc_dir:
        os.makedirs(multiproc_dir, mode=0o700, exist_ok=True)
        for stale in glob.glob(os.path.join(multiproc_dir, "*.db")):
            os.remove(stale)


def child_exit(server, worker):
    if multiproc_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, multiproc_dir)  # its live* gauges
        for gauge in glob.glob(os.path.join(multiproc_dir, f"gauge_all_{worker.pid}.db")):
            os.remove(gauge)
