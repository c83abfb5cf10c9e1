"""Shard mode of the exchange API: every endpoint through the clearing shards' gateway.

``EXCHANGE_SHARD_NATS_URLS`` (or ``STRONGROOM_EXCHANGE_SHARD_NATS_URLS``)
names the NATS servers of the clearing shards (docs/scale-out.md, "Order
entry in shard mode"); ``EXCHANGE_SHARDS`` maps shard names to instrument
symbols or to each shard's instrument file (``STRONGROOM_EXCHANGE_SHARDS`` =
``NAME=file,...``; default: one shard ``MAIN`` with every instrument). In shard mode
each API worker process runs a `ShardGateway` (created lazily after gunicorn
forks): a read replica of each shard's venue that answers the process's own
commands and serves the hot reads. Unset, nothing changes (`make run`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Final

from flask import Flask, current_app

from exchange.instruments import ExchangeConfig
from exchange.marketdata import Message
from exchange.stream.shard.gateway import (
    DEFAULT_HASH_EVERY,
    DEFAULT_WAIT_S,
    ShardGateway,
    parse_shards,
    shard_configs,
)
from exchange.stream.shard.metrics import ShardMetrics

EXTENSION: Final = "strongroom.exchange.shards"
METRICS_EXTENSION: Final = "strongroom.metrics"  # strongroom/metrics.py's (the app's registry)


class ShardGatewayHolder:
    """Create the shard gateway lazily, once per process (gunicorn forks after the app is built)."""

    def __init__(self, app: Flask, urls: list[str], configs: dict[str, ExchangeConfig],
                 wait_s: float, hash_every: int = DEFAULT_HASH_EVERY) -> None:
        self.app, self.urls, self.configs, self.wait_s = app, urls, configs, wait_s
        self.hash_every = hash_every
        self._metrics: ShardMetrics | None = None
        self.shard_of = {s: name for name, cfg in configs.items() for s in cfg.instruments}
        self._lock = threading.Lock()
        self._gateway: ShardGateway | None = None
        self._pid = 0
        # The websocket feed's listeners of the replicas' market-data models (one list object,
        # shared by every shard's model, so a feed started before the gateway is fed too).
        self.market_listeners: list[Callable[[list[Message]], None]] = []

    def get(self) -> ShardGateway:
        """Return this process's gateway, connecting it (and bootstrapping replicas) on first use."""
        with self._lock:
            if self._gateway is None or self._pid != os.getpid():
                self._gateway = ShardGateway(self.urls, self.configs, wait_s=self.wait_s,
                                             metrics=self.metrics(),
                                             hash_every=self.hash_every,
                                             market_listeners=self.market_listeners).start()
                self._pid = os.getpid()
            return self._gateway

    def metrics(self) -> ShardMetrics | None:
        """Return the gateway's metric families in the app's registry (once per app), if any."""
        if self._metrics is None:
            app_metrics = self.app.extensions.get(METRICS_EXTENSION)
            if app_metrics is not None:
                self._metrics = ShardMetrics(app_metrics.registry)
        return self._metrics

    def close(self) -> None:
        """Disconnect this process's gateway, if any."""
        with self._lock:
            if self._gateway is not None and self._pid == os.getpid():
                self._gateway.close()
            self._gateway = None


def shard_nats_urls(app: Flask) -> list[str]:
    """Return the configured NATS servers of the clearing shards (empty: not shard mode)."""
    urls = app.config.get("EXCHANGE_SHARD_NATS_URLS")
    settings = app.extensions.get("strongroom.settings")
    if urls is None and settings is not None:
        urls = list(getattr(settings, "exchange_shard_nats_urls", ()))
    return list(urls or [])


def init_shards(app: Flask, config: ExchangeConfig) -> bool:
    """Switch the exchange API to shard mode if shard NATS servers are configured."""
    urls = shard_nats_urls(app)
    if not urls:
        return False
    shards = app.config.get("EXCHANGE_SHARDS")
    settings = app.extensions.get("strongroom.settings")
    if shards is None and settings is not None and settings.exchange_shards:
        shards = parse_shards(settings.exchange_shards)
    configs = shard_configs(config, shards)
    app.extensions[EXTENSION] = ShardGatewayHolder(
        app, urls, configs, float(app.config.get("EXCHANGE_SHARD_WAIT_S", DEFAULT_WAIT_S)),
        # Equal to the shard workers' --snapshot-every: where the replicas check their state hash.
        int(app.config.get("EXCHANGE_SHARD_HASH_EVERY", DEFAULT_HASH_EVERY)))
    return True


def holder() -> ShardGatewayHolder | None:
    """Return the shard gateway holder in shard mode, None otherwise."""
    found: ShardGatewayHolder | None = current_app.extensions.get(EXTENSION)
    return found


def shard_gateway() -> ShardGateway | None:
    """Return this process's shard gateway in shard mode, None otherwise."""
    found = holder()
    return None if found is None else found.get()
