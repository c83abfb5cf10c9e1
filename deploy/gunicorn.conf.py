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
"""

import multiprocessing
import os

role = os.environ.get("STRONGROOM_ROLE", "all")
bind = os.environ.get("STRONGROOM_BIND", "0.0.0.0:8600")
if role == "all":
    workers = 1
else:
    workers = int(os.environ.get("STRONGROOM_WORKERS", 2 * multiprocessing.cpu_count() + 1))
threads = int(os.environ.get("STRONGROOM_THREADS", "4"))
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
