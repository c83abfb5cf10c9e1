"""``strongroom shard-worker``: lead or stand by for one clearing shard (docs/scale-out.md).

Run two or more per shard (on different hosts), all pointed at the same NATS
JetStream cluster and the same instrument file. SIGTERM/SIGINT stop a worker
cleanly: the leader snapshots, releases its lease (a standby takes over at
once) and exits; SIGKILL leaves the lease to expire (LEASE_TTL_S).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import click

from strongroom.commands.engine_worker import DEFAULT_NATS, serve_shard_process


@click.command("shard-worker")
@click.option("--shard", default="MAIN", show_default=True, help="Clearing shard name.")
@click.option("--nats", "nats_urls", default=DEFAULT_NATS, show_default=True,
              envvar="STRONGROOM_EXCHANGE_SHARD_NATS_URLS",
              help="Comma-separated NATS server URLs (credentials in the URL: keep them in the "
                   "environment, not the command line).")
@click.option("--instruments", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None,
              help="Instrument file (TOML) of the shard (default: the exchange's, "
                   "exchange/data/market.toml); every process of a shard must use the same.")
@click.option("--snapshot-every", type=click.IntRange(min=1), default=5_000, show_default=True,
              help="Snapshot (and put the state hash in the batch) at every multiple of N "
                   "command sequence numbers; also after a quiet second and at shutdown.")
@click.option("--name", default=None, help="Worker name in the lease (default: host-pid).")
@click.option("--replicas", type=int, default=3, show_default=True,
              help="Replicas of the streams and stores it creates if absent.")
def shard_worker(shard: str, nats_urls: str, instruments: Path | None, snapshot_every: int,
                 name: str | None, replicas: int) -> None:
    """Lead or stand by for one clearing shard's venue over NATS JetStream."""
    from exchange.instruments import MARKET_CONFIG, ConfigError, load_instruments
    from exchange.stream.shard.metrics import PROCESS_METRICS
    from exchange.stream.shard.worker import run_shard_worker
    from exchange.stream.topology import check_shard

    try:
        check_shard(shard)
        config = load_instruments(instruments or MARKET_CONFIG)
    except (ConfigError, ValueError, TypeError) as exc:  # TOML syntax errors are ValueErrors
        raise click.BadParameter(f"{type(exc).__name__}: {exc}") from None
    except KeyError as exc:
        raise click.BadParameter(f"instrument file: field {exc} missing") from None
    worker_name = name or f"{socket.gethostname()}-{os.getpid()}"
    stats = serve_shard_process(
        nats_urls, shard, replicas,
        lambda urls, stop: run_shard_worker(urls, config, shard, name=worker_name,
                                            snapshot_every=snapshot_every, stop=stop,
                                            metrics=PROCESS_METRICS))
    click.echo(json.dumps({"shard": shard, "worker": worker_name, **stats}))


def register(main: click.Group) -> None:
    """Add ``shard-worker`` to the ``strongroom`` CLI."""
    main.add_command(shard_worker)
