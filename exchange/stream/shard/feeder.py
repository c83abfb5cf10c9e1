"""The clock and price feed of a clearing shard: index quotes, ticks and funding in stream order.

In the embedded mode the market scheduler (exchange/schedule.py) polls the
price feed once a second and, under the venue lock, runs the funding and
expiries due, records the quotes and ticks every fed index (marks, unrealised
PnL, liquidations, settlement TWAP samples, the stale-index halt). In shard
mode the same inputs must reach every replica of the shard's venue in the
same order, so the feeder *appends* them to the shard's command stream
instead of calling the venue:

- one round per ``interval_ms``: poll the feed (the same sources the embedded
  mode reads: simulated, ccxt), then append, in this order, an ``Advance`` if
  a funding boundary or an expiry of the shard's instruments fell since the
  previous round (and on the first round of a term, to catch up whatever a
  feeder-less gap left), one ``Quote`` per (underlying, source) read and one
  ``Tick`` per underlying this feeder has quoted. Each is a `ShardCommand`
  stamped with the round's time ``ts_ms``;
- message ids are a pure function of the shard, the command and the round's
  time (``r.feed.<NAME>.<underlying>.<source>.<ts>``,
  ``r.tick.<NAME>.<underlying>.<ts>``, ``r.adv.<NAME>.<ts>``), so a retried
  append is stored once, and so is the same round appended by a deposed
  leader racing its successor;
- round times strictly increase, and a new leader starts above the time of
  the last command in the stream, so ticks never go back in time across a
  failover (settlement TWAP samples must not);
- one feeder leads a shard at a time: the lease ``feeder.<NAME>`` in
  ``ENGINE_LEASE`` (exchange/stream/lease.py); standbys take over within the
  lease TTL.

The feeder holds no replica of the venue: funding and expiry due-ness come
from the instrument schedule (funding boundaries are multiples of each
perpetual's interval; expiries are in the spec). Nothing depends on the
feeder being alive for correctness: the shard machine itself runs every
funding interval and expiry due at its clock before any command, and an
order stamped after the index went stale is refused by the venue's
stale-index rule (2010 ``index_stale``) until fresh quotes arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry, Counter, Gauge

from exchange.commands import Advance, Quote, Tick
from exchange.feeds import PriceFeed, SourceQuote
from exchange.instruments import ExchangeConfig
from exchange.stream.lease import Lease
from exchange.stream.publisher import COMMAND_ID_PATTERN
from exchange.stream.shard.wire import (
    ShardCommand,
    command_decoder,
    encode_command,
    msg_id_of,
    shard_stream,
    shard_subject,
)
from exchange.stream.topology import LEASE_RENEW_S, check_symbol

log = logging.getLogger("strongroom.shard_feeder")

LEASE_KEY_PREFIX: Final = "feeder."
DEFAULT_INTERVAL_MS: Final = 1_000
MIN_INTERVAL_MS: Final = 50
MAX_INTERVAL_MS: Final = 60_000
MAX_QUOTES_PER_ROUND: Final = 1_000  # as the embedded scheduler
MAX_JOURNAL_INT: Final = 2**63 - 1  # what the venue journal (and every replica) can hold
APPEND_TIMEOUT_S: Final = 5.0
APPEND_ATTEMPTS: Final = 3
APPEND_RETRY_S: Final = 0.2
# Every append names its feeder (audit: who fed the shard when), in a header next to the id.
FEEDER_HEADER: Final = "Strongroom-Feeder"
FEEDER_NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def feeder_lease_key(shard: str) -> str:
    """Return the lease key of ``shard``'s feeder in ``ENGINE_LEASE``."""
    return LEASE_KEY_PREFIX + check_symbol(shard)


@dataclass(frozen=True, slots=True)
class FeedAppend:
    """One command of a round and the message id it is appended under."""

    msg_id: str
    command: ShardCommand


@dataclass
class FeederStats:
    """Counters of a feeder (read by tests, the CLI and metrics)."""

    rounds: int = 0
    appended: int = 0
    duplicates: int = 0
    dropped_quotes: int = 0
    failed_rounds: int = 0
    terms: int = 0


class FeedPlan:
    """What a feeder appends each round (pure: the time and the quotes are passed in).

    ``config`` is the shard's instrument configuration: only the underlyings
    its instruments use are quoted and ticked, and only its instruments'
    funding boundaries and expiries call for an ``Advance``.
    """

    def __init__(self, config: ExchangeConfig, shard: str) -> None:
        self.shard = check_symbol(shard)
        specs = config.instruments.values()
        self.underlyings = sorted({s.underlying for s in specs} & set(config.indices))
        self.sources = {u: frozenset(config.indices[u].sources) for u in self.underlyings}
        self.funding_intervals_ms = sorted({s.funding_interval_ms for s in specs
                                            if s.kind == "perpetual" and s.funding_interval_ms > 0})
        self.expiries_ms = sorted({s.expiry_ms for s in specs if s.expiry_ms is not None})
        self.last_ms: int | None = None  # the previous round's time (None: a new term)
        self.floor_ms = 0  # no round may be stamped at or below this
        self.quoted: set[str] = set()
        for u in self.underlyings:
            for source in self.sources[u]:
                probe = msg_id_of(Quote(u, source, 1, 0), self._nonce(u, source, MAX_JOURNAL_INT))
                if not COMMAND_ID_PATTERN.fullmatch(probe):
                    raise ValueError(f"index {u} source {source!r} cannot be part of a message id "
                                     f"(must fit {COMMAND_ID_PATTERN.pattern})")

    def raise_floor(self, ts_ms: int) -> None:
        """Stamp every later round strictly after ``ts_ms`` (a command already in the stream)."""
        self.floor_ms = max(self.floor_ms, ts_ms)

    def stamp(self, now_ms: int) -> int:
        """Return the next round's time: the clock, but strictly after every earlier round."""
        last = self.floor_ms if self.last_ms is None else max(self.floor_ms, self.last_ms)
        return max(now_ms, last + 1)

    def advance_due(self, ts_ms: int) -> bool:
        """Tell whether a funding boundary or an expiry fell in (previous round, ``ts_ms``]."""
        prev = self.last_ms
        if prev is None:
            return True  # a new term: catch up whatever fell while no feeder ran
        if any(ts_ms // i > prev // i for i in self.funding_intervals_ms):
            return True
        return any(prev < e <= ts_ms for e in self.expiries_ms)

    def accept(self, q: SourceQuote, ts_ms: int) -> bool:
        """Tell whether a quote may be appended: an indexed source, a sane price, not from the future."""
        sources = self.sources.get(q.underlying)
        return (sources is not None and q.source in sources and type(q.price) is int
                and 0 < q.price <= MAX_JOURNAL_INT and type(q.ts_ms) is int and 0 <= q.ts_ms <= ts_ms)

    def round(self, ts_ms: int, quotes: list[SourceQuote]) -> tuple[list[FeedAppend], int]:
        """Return the round at ``ts_ms`` (from `stamp`) and how many quotes were dropped."""
        if (self.last_ms is not None and ts_ms <= self.last_ms) or ts_ms <= self.floor_ms:
            raise ValueError(f"round time was {ts_ms}, must follow {self.last_ms} / {self.floor_ms}")
        out: list[FeedAppend] = []
        if self.advance_due(ts_ms):
            out.append(self._append(Advance(ts_ms), ts_ms, f"adv.{self.shard}.{ts_ms}"))
        taken: dict[tuple[str, str], SourceQuote] = {}
        dropped = 0
        for q in quotes[:MAX_QUOTES_PER_ROUND]:
            if self.accept(q, ts_ms):
                taken[(q.underlying, q.source)] = q  # the last quote of a source in a poll counts
            else:
                dropped += 1
        dropped += max(0, len(quotes) - MAX_QUOTES_PER_ROUND)
        for (u, source), q in sorted(taken.items()):
            out.append(self._append(Quote(u, source, q.price, q.ts_ms), ts_ms,
                                    self._nonce(u, source, ts_ms)))
            self.quoted.add(u)
        for u in sorted(self.quoted):
            # Tick even without a new quote: an index whose sources fell silent goes stale now.
            out.append(self._append(Tick(u, ts_ms), ts_ms, f"tick.{self.shard}.{u}.{ts_ms}"))
        self.last_ms = ts_ms
        return out, dropped

    def _nonce(self, underlying: str, source: str, ts_ms: int) -> str:
        return f"feed.{self.shard}.{underlying}.{source}.{ts_ms}"

    @staticmethod
    def _append(cmd: Advance | Quote | Tick, ts_ms: int, nonce: str) -> FeedAppend:
        return FeedAppend(msg_id_of(cmd, nonce), ShardCommand(cmd, ts_ms))


class FeederMetrics:
    """The feeder's Prometheus families (``strongroom_shard_feeder_*``, base units last)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.leading = Gauge("strongroom_shard_feeder_leading",
                             "1 while this process leads the shard's feed (lease feeder.<NAME>)",
                             ["shard"], registry=r)
        self.rounds = Counter("strongroom_shard_feeder_rounds", "Feed rounds started while leading",
                              ["shard"], registry=r)
        self.appends = Counter("strongroom_shard_feeder_appends",
                               "Quote, tick and advance commands appended", ["shard"], registry=r)
        self.failed_rounds = Counter("strongroom_shard_feeder_failed_rounds",
                                     "Rounds abandoned because an append failed", ["shard"],
                                     registry=r)
        self.dropped_quotes = Counter("strongroom_shard_feeder_dropped_quotes",
                                      "Quotes refused before appending (source, price or time)",
                                      ["shard"], registry=r)
        self.last_round = Gauge("strongroom_shard_feeder_last_round_timestamp_seconds",
                                "Time stamped on the last round appended whole", ["shard"],
                                registry=r)


def wall_clock_ms() -> int:
    """Return the wall clock in milliseconds (the feeder's default clock)."""
    return time.time_ns() // 1_000_000


@dataclass
class ShardFeeder:
    """Lead (or stand by for) one shard's feed; append a round every ``interval_ms`` while leader."""

    js: JetStreamContext
    config: ExchangeConfig
    shard: str
    feed: PriceFeed
    name: str
    interval_ms: int = DEFAULT_INTERVAL_MS
    clock: Callable[[], int] = wall_clock_ms
    stats: FeederStats = field(default_factory=FeederStats)
    metrics: FeederMetrics | None = None

    def __post_init__(self) -> None:
        if not MIN_INTERVAL_MS <= self.interval_ms <= MAX_INTERVAL_MS:
            raise ValueError(f"interval_ms was {self.interval_ms}, must be "
                             f"{MIN_INTERVAL_MS}..{MAX_INTERVAL_MS}")
        if not FEEDER_NAME_PATTERN.fullmatch(self.name):
            raise ValueError(f"feeder name was {self.name[:40]!r}, must match "
                             f"{FEEDER_NAME_PATTERN.pattern}")
        self.plan = FeedPlan(self.config, self.shard)
        self.lease = Lease(self.js, feeder_lease_key(self.shard), self.name)

    async def run(self, stop: asyncio.Event) -> FeederStats:
        """Stand by, lead, repeat, until ``stop``; give the lease up on the way out."""
        try:
            while not stop.is_set():
                if not await self.lease.acquire(stop):
                    break
                self.stats.terms += 1
                self._leading(True)
                try:
                    await self.lead(stop)
                except (NatsError, TimeoutError) as exc:
                    log.warning("feeder %s stops leading %s: %s: %s; standing by", self.name,
                                self.shard, type(exc).__name__, exc)
                    await asyncio.sleep(LEASE_RENEW_S)
                finally:
                    self._leading(False)
        finally:
            if stop.is_set():
                await self.lease.release()
        return self.stats

    def _leading(self, leading: bool) -> None:
        if self.metrics is not None:
            self.metrics.leading.labels(self.shard).set(int(leading))

    async def lead(self, stop: asyncio.Event) -> None:
        """Append a round every ``interval_ms`` until ``stop`` or the lease is lost."""
        keep = asyncio.create_task(self.lease.keep())
        try:
            self.plan = FeedPlan(self.config, self.shard)  # a new term starts from the stream
            self.plan.raise_floor(await self._last_stream_ts())
            period_s = self.interval_ms / 1000
            while not stop.is_set() and not self.lease.lost.is_set():
                started = time.monotonic()
                await self.round()
                wait_s = max(0.0, period_s - (time.monotonic() - started))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait_s)
            if self.lease.lost.is_set():
                log.warning("feeder %s lost the lease of %s", self.name, self.shard)
        finally:
            keep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keep

    async def round(self) -> None:
        """Poll the feed and append one round (abandoned, not half-retried, if appends fail)."""
        polled_ms = int(self.clock())
        # A blocking feed (ccxt over HTTP) must not stall the lease renewal on this loop.
        try:
            quotes = await asyncio.to_thread(self.feed.poll, polled_ms)
        except Exception as exc:  # a feed must not raise; if one does, its sources just go stale
            log.error("feeder %s: price feed failed at %d: %s", self.name, polled_ms,
                      type(exc).__name__)
            quotes = []
        # Stamped after the poll: a slow source's quotes keep their own (older) time, and the
        # index is computed at the time the round reaches the stream, not when it was asked for.
        ts = self.plan.stamp(max(polled_ms, int(self.clock())))
        appends, dropped = self.plan.round(ts, quotes)
        if dropped:
            log.warning("feeder %s dropped %d quotes at %d: unknown source, bad price or time",
                        self.name, dropped, ts)
        self.stats.dropped_quotes += dropped
        self.stats.rounds += 1
        m = self.metrics
        if m is not None:
            m.rounds.labels(self.shard).inc()
            m.dropped_quotes.labels(self.shard).inc(dropped)
        for item in appends:
            if self.lease.lost.is_set():
                return  # deposed mid-round: the new leader's rounds take over
            if not await self._append(item):
                self.stats.failed_rounds += 1
                if m is not None:
                    m.failed_rounds.labels(self.shard).inc()
                return
        if m is not None:
            m.last_round.labels(self.shard).set(ts / 1000)

    async def _append(self, item: FeedAppend) -> bool:
        body = encode_command(item.command)
        for attempt in range(1, APPEND_ATTEMPTS + 1):
            try:
                ack = await self.js.publish(shard_subject(self.shard), body,
                                            timeout=APPEND_TIMEOUT_S,
                                            stream=shard_stream(self.shard),
                                            headers={"Nats-Msg-Id": item.msg_id,
                                                     FEEDER_HEADER: self.name})
            except (NatsError, TimeoutError) as exc:
                # Unknown outcome: retrying under the same id stores the command at most once.
                log.warning("feeder %s: append %s failed (attempt %d): %s", self.name,
                            item.msg_id, attempt, type(exc).__name__)
                await asyncio.sleep(APPEND_RETRY_S)
                continue
            self.stats.appended += 1
            self.stats.duplicates += bool(ack.duplicate)
            if self.metrics is not None:
                self.metrics.appends.labels(self.shard).inc()
            return True
        return False

    async def _last_stream_ts(self) -> int:
        """Return the ``ts_ms`` of the last command in the shard's stream (0: none readable)."""
        try:
            last = await self.js.get_last_msg(shard_stream(self.shard), shard_subject(self.shard))
        except NotFoundError:
            return 0
        try:
            ts = command_decoder.decode(last.data or b"").ts_ms
        except ValueError:  # msgspec's DecodeError and ValidationError
            return 0
        return ts if type(ts) is int and 0 <= ts <= MAX_JOURNAL_INT else 0


async def run_feeder(urls: list[str], config: ExchangeConfig, shard: str, feed: PriceFeed, *,
                     name: str, interval_ms: int = DEFAULT_INTERVAL_MS,
                     stop: asyncio.Event | None = None,
                     metrics: FeederMetrics | None = None) -> FeederStats:
    """Connect and feed ``shard`` until ``stop`` (standing by while another feeder leads)."""
    from exchange.stream.connect import connect_unless_stopped

    stop = stop or asyncio.Event()
    # NATS may come up after the feeder (connect retries for ever), but a stop must still stop it.
    nc = await connect_unless_stopped(stop, servers=urls, name=f"feeder-{shard}-{name}",
                                      max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    if nc is None:
        return FeederStats()
    try:
        feeder = ShardFeeder(nc.jetstream(), config, shard, feed, name, interval_ms,
                             metrics=metrics)
        return await feeder.run(stop)
    finally:
        await nc.close()
