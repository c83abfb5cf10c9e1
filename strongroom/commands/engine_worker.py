"""``strongroom engine-worker`` and ``strongroom settlement-worker``: the scale-out processes.

See docs/scale-out.md. Run one engine worker per market (plus standbys with
the same market) and one settlement worker, all pointed at the same NATS
JetStream cluster. SIGTERM/SIGINT stop a worker cleanly (it releases its
lease so a standby takes over at once); SIGKILL leaves the lease to expire.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

DEFAULT_NATS = "nats://127.0.0.1:4222"


def _urls(value: str) -> list[str]:
    return [u.strip() for u in value.split(",") if u.strip()]


def _install_stop(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def serve_worker(nats_urls: str, ensure: Callable[[JetStreamContext], Awaitable[None]],
                 run: Callable[[list[str], asyncio.Event], Awaitable[Any]]) -> dict[str, int]:
    """Create the worker's streams if absent, run it until SIGTERM/SIGINT; return its stats."""
    from exchange.stream.connect import connect_unless_stopped

    async def main() -> dict[str, int]:
        stop = asyncio.Event()
        _install_stop(stop)
        # The first connection retries while NATS is down; SIGTERM must still end the process.
        nc = await connect_unless_stopped(stop, servers=_urls(nats_urls))
        if nc is None:
            return {}
        try:
            await ensure(nc.jetstream())
        finally:
            await nc.close()
        stats = await run(_urls(nats_urls), stop)
        return dict(stats.__dict__)

    return asyncio.run(main())


def serve_shard_process(nats_urls: str, shard: str, replicas: int,
                        run: Callable[[list[str], asyncio.Event], Awaitable[Any]]) -> dict[str, int]:
    """`serve_worker` for a clearing shard's process (worker, feeder): log to stderr, serve
    metrics on $STRONGROOM_METRICS_PORT if set, create the shard's streams if absent.

    A bad metrics port is a click.BadParameter, unreachable NATS a click.ClickException.
    """
    from nats.errors import Error as NatsError

    from exchange.stream.shard.metrics import PROCESS_METRICS, serve_from_env
    from exchange.stream.topology import ensure_shard_topology
    from exchange.stream.urls import redact_urls

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        server = serve_from_env(PROCESS_METRICS.registry)  # $STRONGROOM_METRICS_PORT, if set
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    try:
        return serve_worker(nats_urls, lambda js: ensure_shard_topology(js, [shard], replicas), run)
    except (NatsError, OSError) as exc:
        raise click.ClickException(f"NATS at {redact_urls(nats_urls)} unreachable: "
                                   f"{type(exc).__name__}") from None
    finally:
        if server is not None:
            server.shutdown()


@click.command("engine-worker")
@click.option("--market", required=True, help="Market symbol, e.g. BTC-PERP.")
@click.option("--nats", "nats_urls", default=DEFAULT_NATS, show_default=True,
              help="Comma-separated NATS server URLs.")
@click.option("--name", default=None, help="Worker name in the lease (default: host:pid).")
@click.option("--replicas", type=int, default=3, show_default=True,
              help="Replicas of the streams and buckets it creates if absent.")
@click.option("--tick-size", type=int, default=1, show_default=True)
@click.option("--lot-size", type=int, default=1, show_default=True)
@click.option("--min-qty", type=int, default=1, show_default=True)
@click.option("--max-qty", type=int, default=1_000_000_000, show_default=True)
@click.option("--band-bps", type=int, default=None)
@click.option("--snapshot-every", type=int, default=10_000, show_default=True)
def engine_worker(market: str, nats_urls: str, name: str | None, replicas: int, tick_size: int,
                  lot_size: int, min_qty: int, max_qty: int, band_bps: int | None,
                  snapshot_every: int) -> None:
    """Lead or stand by for one market's matching engine over NATS JetStream."""
    from exchange.engine.instrument import Instrument
    from exchange.stream.topology import check_symbol, ensure_topology
    from exchange.stream.worker import run_worker

    try:
        instrument = Instrument(symbol=check_symbol(market), tick_size=tick_size,
                                lot_size=lot_size, min_qty=min_qty, max_qty=max_qty,
                                band_bps=band_bps)
        instrument.check()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    worker_name = name or f"{socket.gethostname()}-{os.getpid()}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    stats = serve_worker(
        nats_urls, lambda js: ensure_topology(js, [market], replicas),
        lambda urls, stop: run_worker(urls, instrument, name=worker_name,
                                      snapshot_every=snapshot_every, stop=stop))
    click.echo(json.dumps({"market": market, "worker": worker_name, **stats}))


@click.command("settlement-worker")
@click.option("--nats", "nats_urls", default=DEFAULT_NATS, show_default=True,
              help="Comma-separated NATS server URLs.")
@click.option("--market", default=None,
              help="Settle only this market (durable consumer settlement-SYMBOL); default: all.")
@click.option("--asset", default="USDC", show_default=True)
@click.option("--taker-fee-ppm", type=int, default=500, show_default=True)
@click.option("--maker-fee-ppm", type=int, default=200, show_default=True)
def settlement_worker(nats_urls: str, market: str | None, asset: str, taker_fee_ppm: int,
                      maker_fee_ppm: int) -> None:
    """Write fee postings of engine events to the ledger (STRONGROOM_DATABASE_URL)."""
    import nats

    from custody.db import make_engine, make_session_factory
    from custody.ledger.service import Ledger
    from exchange.stream.settlement import (
        SETTLEMENT_DURABLE,
        FeeSchedule,
        Settlement,
        run_settlement,
    )
    from exchange.stream.topology import check_symbol, events_subject
    from strongroom.settings import Settings

    try:
        fees = FeeSchedule(asset, taker_fee_ppm, maker_fee_ppm)
        subject = events_subject(market) if market else "evt.*"
        durable = f"{SETTLEMENT_DURABLE}-{check_symbol(market)}" if market else SETTLEMENT_DURABLE
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    settings = Settings.from_env()
    settlement = Settlement(Ledger(make_session_factory(make_engine(settings.database_url))), fees)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        _install_stop(stop)
        nc = await nats.connect(servers=_urls(nats_urls), max_reconnect_attempts=-1)
        try:
            await run_settlement(nc.jetstream(), settlement, stop, durable=durable,
                                 subject=subject)
        finally:
            await nc.close()

    asyncio.run(main())
    click.echo(json.dumps(settlement.stats.__dict__))


@click.command("margin-worker")
@click.option("--nats", "nats_urls", default=DEFAULT_NATS, show_default=True,
              help="Comma-separated NATS server URLs.")
@click.option("--market", "markets", multiple=True, required=True,
              help="Market symbol (repeat for several markets).")
@click.option("--asset", default="USDC", show_default=True)
@click.option("--im-ppm", type=int, default=100_000, show_default=True,
              help="Initial margin rate; must equal the API's EXCHANGE_SCALEOUT_IM_PPM.")
@click.option("--void-stuck-after-s", type=click.IntRange(min=0), default=60, show_default=True,
              help="Tombstone gateway holds whose order is not in the stream after this long "
                   "(docs/scale-out.md); 0 turns the reconciler off.")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=500, show_default=True,
              help="Store each market's fold in MARGIN_CHECKPOINT after this many event batches "
                   "(and on exit); a restart resumes there. 0: replay the stream on every start.")
def margin_worker(nats_urls: str, markets: tuple[str, ...], asset: str, im_ppm: int,
                  void_stuck_after_s: int, checkpoint_every: int) -> None:
    """Keep order holds and position margin in the ledger true to the events stream."""
    import nats

    from custody.db import make_engine, make_session_factory
    from custody.ledger.service import Ledger
    from exchange.stream.margin import MarginLedger, MarginWorker, initial_margin
    from exchange.stream.topology import check_symbol
    from strongroom.settings import Settings

    try:
        symbols = [check_symbol(m) for m in markets]
        initial_margin(1, 1, im_ppm)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    settings = Settings.from_env()
    sessions = make_session_factory(make_engine(settings.database_url))
    ledger = MarginLedger(Ledger(sessions), sessions, asset)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def main() -> dict[str, int]:
        stop = asyncio.Event()
        _install_stop(stop)
        nc = await nats.connect(servers=_urls(nats_urls), max_reconnect_attempts=-1)
        try:
            worker = MarginWorker(nc.jetstream(), ledger, im_ppm, symbols,
                                  void_stuck_after_ms=void_stuck_after_s * 1000 or None,
                                  checkpoint_every=checkpoint_every)
            await worker.run(stop)
            return worker.written
        finally:
            await nc.close()

    click.echo(json.dumps({"written": asyncio.run(main())}))


def register(main: click.Group) -> None:
    """Add the scale-out worker commands to the ``strongroom`` CLI."""
    main.add_command(engine_worker)
    main.add_command(settlement_worker)
    main.add_command(margin_worker)
