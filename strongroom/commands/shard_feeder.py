"""``strongroom shard-feeder``: the clock and price feed of a clearing shard (docs/scale-out.md).

Run two or more per shard (on different hosts), pointed at the shard's NATS
JetStream cluster and the same instrument file as its shard worker: one
leads (lease ``feeder.<NAME>``) and appends index quotes, ticks and funding
advances to the shard's command stream; the others stand by and take over
within the lease TTL. SIGTERM/SIGINT stop a feeder cleanly (it gives its
lease up, so a standby takes over at once); SIGKILL leaves the lease to
expire.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import click

DEFAULT_NATS = "nats://127.0.0.1:4222"
SOURCES = ("simulated", "ccxt")


@click.command("shard-feeder")
@click.option("--shard", default="MAIN", show_default=True, help="Clearing shard name.")
@click.option("--nats", "nats_urls", default=DEFAULT_NATS, show_default=True,
              envvar="STRONGROOM_EXCHANGE_SHARD_NATS_URLS",
              help="Comma-separated NATS server URLs (credentials in the URL: keep them in the "
                   "environment, not the command line).")
@click.option("--instruments", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="The shard's instrument file (default: the market's, as the "
                                 "shard worker); its indices name the sources.")
@click.option("--source", type=click.Choice(SOURCES), default="simulated", show_default=True,
              help="Where index quotes come from: the seeded simulated market or ccxt tickers.")
@click.option("--seed", type=int, default=1, show_default=True, help="Simulated feed seed.")
@click.option("--interval-ms", type=click.IntRange(50, 60_000), default=1_000, show_default=True,
              help="Time between two rounds of quotes and ticks.")
@click.option("--name", default=None, help="Feeder name in the lease (default: host-pid).")
@click.option("--replicas", type=int, default=3, show_default=True,
              help="Replicas of the shard's streams and buckets it creates if absent.")
def shard_feeder(shard: str, nats_urls: str, instruments: Path | None, source: str, seed: int,
                 interval_ms: int, name: str | None, replicas: int) -> None:
    """Lead or stand by for one clearing shard's price feed and clock over NATS JetStream."""
    from exchange.instruments import MARKET_CONFIG, ConfigError, load_instruments
    from exchange.stream.shard.feeder import (
        FEEDER_NAME_PATTERN,
        FeederMetrics,
        FeedPlan,
        run_feeder,
    )
    from exchange.stream.shard.metrics import PROCESS_METRICS
    from strongroom.commands.engine_worker import serve_shard_process
    from strongroom.jobs import exchange_feed

    try:
        config = load_instruments(instruments or MARKET_CONFIG)
        plan = FeedPlan(config, shard)  # validates the shard name and the sources first
        # Only the shard's own underlyings are polled (a shard of some instruments keeps every
        # index of the file, but quotes nobody trades would only be dropped).
        feed = exchange_feed(source, seed, {u: config.indices[u] for u in plan.underlyings})
    except (ConfigError, ValueError, TypeError) as exc:  # TOML syntax errors are ValueErrors
        raise click.BadParameter(f"{type(exc).__name__}: {exc}") from None
    except KeyError as exc:
        raise click.BadParameter(f"instrument file: field {exc} missing") from None
    assert feed is not None
    feeder_name = name or f"{socket.gethostname()}-{os.getpid()}"
    if not FEEDER_NAME_PATTERN.fullmatch(feeder_name):
        raise click.BadParameter(f"feeder name was {feeder_name[:40]!r}, must match "
                                 f"{FEEDER_NAME_PATTERN.pattern}")
    stats = serve_shard_process(
        nats_urls, shard, replicas,
        lambda urls, stop: run_feeder(urls, config, shard, feed, name=feeder_name,
                                      interval_ms=interval_ms, stop=stop,
                                      metrics=FeederMetrics(PROCESS_METRICS.registry)))
    click.echo(json.dumps({"shard": shard, "feeder": feeder_name, **stats}))


def register(main: click.Group) -> None:
    """Add ``shard-feeder`` to the ``strongroom`` CLI."""
    main.add_command(shard_feeder)
