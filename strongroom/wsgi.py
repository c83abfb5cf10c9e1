"""The WSGI application for gunicorn (production mode, docs/production.md).

``gunicorn -c deploy/gunicorn.conf.py strongroom.wsgi:app``. ``STRONGROOM_ROLE``
picks what the process runs:

``api``  stateless HTTP workers: custody, ledger, access, withdrawals, console,
         metrics. No exchange venue, no background jobs; run as many workers
         and replicas as the load needs (the HPA's tier).
``all``  (default) everything, as ``strongroom serve``: the in-memory exchange
         venue with its journal, the market-data read model and the
         background jobs (checkpoints, dispatcher, watchers, funding ticks).
         Exactly one worker: the venue's journal directory is locked by the
         process that holds it.
"""

from __future__ import annotations

import os
import time
from typing import Final

from flask import Flask

ROLES: Final = ("all", "api")


def role() -> str:
    """Return this process's role (refuse an unknown one rather than guess)."""
    value = os.environ.get("STRONGROOM_ROLE", "all")
    if value not in ROLES:
        raise SystemExit(f"STRONGROOM_ROLE was {value[:20]!r}, must be one of {', '.join(ROLES)}")
    return value


def build() -> Flask:
    """Create the app for this process's role."""
    from strongroom.app import create_app
    from strongroom.runtimes.from_env import chain_runtimes_from_env
    from strongroom.settings import Settings
    from strongroom.startup import check_startup

    settings = Settings.from_env()
    check_startup(settings)
    runtimes = chain_runtimes_from_env(settings)
    # In scale-out mode (STRONGROOM_EXCHANGE_NATS_URLS) API workers take orders too: they hold
    # no venue journal, the engines' streams are the truth (docs/scale-out.md). Likewise in
    # shard mode (STRONGROOM_EXCHANGE_SHARD_NATS_URLS): the shards' command streams are.
    config = {"WALLETS": runtimes.get("ethereum"), "CHAIN_RUNTIMES": runtimes,
              "EXCHANGE_ENABLED": role() == "all" or bool(settings.exchange_nats_urls)
              or bool(settings.exchange_shard_nats_urls)}
    app = create_app(config, settings=settings)
    if role() == "all":
        from strongroom.jobs import JobRunner, exchange_jobs, server_jobs

        JobRunner(server_jobs(app, settings.checkpoint_every_entries), time.monotonic).start()
        JobRunner(exchange_jobs(app), time.monotonic, name="strongroom-market").start()
    return app


app = build()
