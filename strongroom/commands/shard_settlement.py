"""``strongroom shard-settlement``: a clearing shard's postings into the ledger, exactly once.

See docs/scale-out.md, "Shard settlement and collateral". Run one per shard
(a second one on the same shard shares its durable consumer: harmless, every
posting is written once by id). It also runs the shard's deposit reconciler,
which appends ``VoidDeposit`` for collateral reservations whose
``FundedDeposit`` never reached the stream. SIGTERM/SIGINT stop it after the
round in flight; it prints its counters as one JSON line. A posting the ledger
refuses (an id reused with another body, corrupt state) stops it with exit
status 2 and the reason on stderr: it never skips a posting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys

import click

DEFAULT_NATS = "nats://127.0.0.1:4222"
REFUSED_EXIT = 2


def _urls(value: str) -> list[str]:
    return [u.strip() for u in value.split(",") if u.strip()]


@click.command("shard-settlement")
@click.option("--shard", required=True, help="Shard name, e.g. MAIN.")
@click.option("--nats", "nats_urls", default=DEFAULT_NATS, show_default=True,
              envvar="STRONGROOM_EXCHANGE_SHARD_NATS_URLS",
              help="Comma-separated NATS server URLs (credentials in the URL: keep them in the "
                   "environment, not the command line).")
@click.option("--asset", default="USDC", show_default=True)
@click.option("--fetch-batch", type=click.IntRange(1, 4096), default=256, show_default=True,
              help="Result batches settled per round (they share ledger submissions).")
@click.option("--void-deposits-after-s", type=click.IntRange(min=0), default=60, show_default=True,
              help="Append VoidDeposit for deposit reservations still pending after this long; "
                   "0 turns the reconciler off.")
@click.option("--reconcile-every-s", type=click.FloatRange(min=0.1), default=10.0,
              show_default=True, help="How often the deposit reconciler looks.")
def shard_settlement(shard: str, nats_urls: str, asset: str, fetch_batch: int,
                     void_deposits_after_s: int, reconcile_every_s: float) -> None:
    """Write a clearing shard's postings to the ledger (STRONGROOM_DATABASE_URL)."""
    import nats

    from custody.db import make_engine, make_session_factory
    from custody.ledger.service import Ledger
    from exchange.stream.shard.metrics import (
        PROCESS_METRICS,
        instrument_settlement,
        serve_from_env,
        watch_settlement_lag,
    )
    from exchange.stream.shard.settle import (
        DepositReconciler,
        SettlementRefused,
        ShardSettlement,
        run_shard_settlement,
    )
    from exchange.stream.topology import check_symbol
    from strongroom.settings import Settings

    try:
        check_symbol(shard)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    settings = Settings.from_env()
    sessions = make_session_factory(make_engine(settings.database_url))
    settlement = ShardSettlement(Ledger(sessions), shard, asset)
    reconciler = (DepositReconciler(sessions, shard, void_deposits_after_s * 1000)
                  if void_deposits_after_s else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Metrics (docs/scale-out.md, "Benchmarks and operations"): rounds settled, settlement lag,
    # the ledger's imbalance per asset; served on $STRONGROOM_METRICS_PORT if set.
    instrument_settlement(settlement)
    PROCESS_METRICS.watch_ledger(sessions)
    try:
        server = serve_from_env(PROCESS_METRICS.registry)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        nc = await nats.connect(servers=_urls(nats_urls), max_reconnect_attempts=-1)
        js = nc.jetstream()
        side = (asyncio.create_task(reconciler.run(js, stop, reconcile_every_s))
                if reconciler is not None else None)
        lag = asyncio.create_task(watch_settlement_lag(js, shard, lambda: settlement.stats.last_seq, stop))
        try:
            await run_shard_settlement(js, settlement, stop, fetch_batch=fetch_batch)
        finally:
            stop.set()
            if side is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await side
            with contextlib.suppress(asyncio.CancelledError):
                await lag
            await nc.close()

    try:
        asyncio.run(main())
    except SettlementRefused as exc:
        logging.getLogger("strongroom.shard_settlement").error("settlement stopped: %s", exc)
        click.echo(json.dumps({"shard": shard, "error": "settlement_refused", "message": str(exc),
                               **settlement.stats.__dict__}), err=True)
        sys.exit(REFUSED_EXIT)
    if server is not None:
        server.shutdown()
    click.echo(json.dumps({"shard": shard, "voids_appended": reconciler.appended if reconciler else 0,
                           **settlement.stats.__dict__}))


def register(main: click.Group) -> None:
    """Add the shard settlement command to the ``strongroom`` CLI."""
    main.add_command(shard_settlement)
