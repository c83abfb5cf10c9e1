"""Background jobs of the server process: expire pending holds, sweep orphan withdrawal holds, write
ledger checkpoints, release delayed withdrawals, run transaction monitoring and the travel-rule
exchange (inquiries sent, overdue ones expired), and per configured chain the wallet round and the
withdrawal dispatcher, plus one cold-bundle tick (broadcast, confirm, settle cold transfers on every
chain). The exchange market (feeds, funding, expiry, listings) runs in a runner of its own, so a slow
chain never delays a funding boundary.

Each job runs on a fixed interval in one daemon thread. A failing job is
logged (without secrets) and retried on its next tick; it never stops the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask

if TYPE_CHECKING:
    from custody.bundles.service import ColdTransfers
    from custody.compliance.trp import TravelRuleExchange
    from exchange.feeds import PriceFeed
    from exchange.instruments import IndexConfig
    from exchange.schedule import MarketScheduler

log = logging.getLogger(__name__)

EXPIRE_INTERVAL_S = 5.0
CHECKPOINT_INTERVAL_S = 30.0
HOLD_SWEEP_INTERVAL_S = 60.0
# Transaction monitoring re-evaluates every user's history; alert ids derive from the evidence, so
# a run raises only what is new and a missed or repeated run changes nothing (docs/compliance.md).
MONITORING_INTERVAL_S = 300.0
WALLET_INTERVAL_S = 5.0
# Delayed withdrawals whose delay is over (or whose travel-rule counterparty approved) are evaluated again.
RELEASE_INTERVAL_S = 5.0
# Travel-rule inquiries to counterparty VASPs are sent, and unanswered ones expired (docs/compliance.md).
TRAVEL_RULE_INTERVAL_S = 10.0
DEFAULT_CHECKPOINT_EVERY_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Job:
    """A named callable run every ``interval_s`` seconds."""

    name: str
    interval_s: float
    run: Callable[[], object]


def server_jobs(app: Flask, checkpoint_every_entries: int = DEFAULT_CHECKPOINT_EVERY_ENTRIES) -> list[Job]:
    """Return the server's jobs: hold expiry, signed checkpoints and, with a chain, wallet rounds."""
    from custody.api.audit import audit
    from custody.wallets.dispatch import WithdrawalDispatcher

    ledger = app.extensions["strongroom.ledger"]
    access = app.extensions["strongroom.access"]

    def checkpoint() -> object:
        with app.app_context():
            return audit().checkpoint_if_due(checkpoint_every_entries)

    jobs = [
        Job("expire_pending", EXPIRE_INTERVAL_S, ledger.expire_pending),
        Job("ledger_checkpoint", CHECKPOINT_INTERVAL_S, checkpoint),
        # Withdrawal holds no open withdrawal stands on (custody.withdrawals.service) are released.
        Job("withdrawal_hold_sweep", HOLD_SWEEP_INTERVAL_S,
            access.withdrawals.sweep_orphan_holds),
        Job("compliance_monitoring", MONITORING_INTERVAL_S,
            access.monitoring.run),
        Job("withdrawal_release", RELEASE_INTERVAL_S, access.withdrawals.release_due),
    ]
    trp = travel_rule_exchange(app)
    if trp is not None:
        jobs.append(Job("travel_rule_exchange", TRAVEL_RULE_INTERVAL_S, trp.run))
    runtimes = app.extensions.get("strongroom.chains", {})
    if runtimes:
        jobs.append(Job("cold_bundles", WALLET_INTERVAL_S, cold_transfers(app).tick))
    for chain, runtime in runtimes.items():
        # The Bitcoin executor keeps the execute/get/tick contract, so the dispatcher serves every chain.
        suffix = "" if chain == "ethereum" else f"_{chain}"
        dispatcher = WithdrawalDispatcher(app.extensions["strongroom.sessions"], runtime.executor,
                                          runtime.adapter.assets(), ledger_clock(app), ledger,
                                          on_sent=None if trp is None else trp.notify)
        jobs += [
            Job(f"wallet_tick{suffix}", WALLET_INTERVAL_S, runtime.tick),
            Job(f"withdrawal_dispatch{suffix}", WALLET_INTERVAL_S, dispatcher.run),
        ]
    return jobs


def travel_rule_exchange(app: Flask) -> TravelRuleExchange | None:
    """Return the app's travel-rule exchange with counterparty VASPs (None: none configured)."""
    from custody.api.compliance import TRP_EXTENSION

    found: TravelRuleExchange | None = app.extensions.get(TRP_EXTENSION)
    return found


EXCHANGE_MARKET_INTERVAL_S = 1.0


def exchange_jobs(app: Flask) -> list[Job]:
    """Return the exchange market job (feeds, funding, expiry, listings, demo maker; docs/market.md)."""
    scheduler = market_scheduler(app)
    if scheduler is None:
        return []
    return [Job("exchange_market", EXCHANGE_MARKET_INTERVAL_S, scheduler.run_due)]


def alert_jobs(app: Flask) -> list[Job]:
    """Return the alert job: evaluate alerts and make due webhook attempts (docs/console.md, "Alerts")."""
    from strongroom.console.alert_service import STEP_S

    service = app.extensions.get("strongroom.console.alerts")
    if service is None:
        return []
    service.deliver_in_step = False  # webhook_jobs make the attempts, on their own thread
    return [Job("alerts", STEP_S, service.step)]


def webhook_jobs(app: Flask) -> list[Job]:
    """Return the webhook job: due alert webhook attempts, apart from evaluation (slow receivers)."""
    from strongroom.console.alert_service import STEP_S

    service = app.extensions.get("strongroom.console.alerts")
    return [] if service is None else [Job("alert_webhooks", STEP_S, service.deliver_job)]


def market_scheduler(app: Flask) -> MarketScheduler | None:
    """Build the market scheduler of ``app``'s exchange from its settings (None: no exchange)."""
    from exchange.marketmaker import DemoMarketMaker
    from exchange.schedule import MarketParticipant, MarketScheduler

    service = app.extensions.get("strongroom.exchange")
    settings = app.extensions.get("strongroom.settings")
    if service is None or settings is None:
        return None
    feed = exchange_feed(settings.exchange_feed, settings.exchange_feed_seed, service.venue.config.indices)
    participants: tuple[MarketParticipant, ...] = ()
    if settings.exchange_demo_maker:
        participants = (DemoMarketMaker(service, seed=settings.exchange_feed_seed),)
    return MarketScheduler(service, ledger_clock(app), feed, participants=participants)


def exchange_feed(kind: str, seed: int, indices: dict[str, IndexConfig]) -> PriceFeed | None:
    """Return the configured price feed: simulated (default), ccxt, or none (operator quotes only)."""
    if kind == "simulated":
        from exchange.feeds.simulated import SimulatedFeed

        return SimulatedFeed(indices, seed)
    if kind == "ccxt":
        from exchange.feeds.ccxt_source import CcxtFeed

        return CcxtFeed(indices)
    return None


def cold_transfers(app: Flask) -> ColdTransfers:
    """Return the cold-transfer service (custody.bundles) over every chain runtime of ``app``."""
    from custody.bundles.service import ColdTransfers
    from strongroom.runtimes.from_env import bundle_chains

    runtimes = app.extensions["strongroom.chains"]
    # The registry reads wallets and accounts of any chain; any runtime's will do.
    wallets = next(iter(runtimes.values())).wallets
    keystore = app.extensions["strongroom.keystore"]
    return ColdTransfers(app.extensions["strongroom.sessions"], wallets, keystore, bundle_chains(runtimes),
                         ledger_clock(app))


def ledger_clock(app: Flask) -> Callable[[], int]:
    """Return the app's millisecond clock (the test clock when one is configured)."""
    from custody.ledger.service import wall_clock_ms

    clock: Callable[[], int] = app.config.get("CLOCK") or wall_clock_ms
    return clock


class JobRunner:
    """Run jobs on their intervals in one daemon thread until stopped."""

    def __init__(self, jobs: list[Job], clock: Callable[[], float], name: str = "strongroom-jobs") -> None:
        self._jobs = jobs
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        """Start the background thread."""
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the thread to stop and wait for it."""
        self._stop.set()
        self._thread.join(timeout_s)

    def run_due(self, due: dict[str, float]) -> None:
        """Run every job whose time has come and schedule its next run."""
        now = self._clock()
        for job in self._jobs:
            if now < due.get(job.name, now):
                continue
            try:
                job.run()
            except Exception:
                # The traceback names the failing call; job inputs never hold key material.
                log.exception("background job %s failed; retrying in %.0fs", job.name, job.interval_s)
            due[job.name] = now + job.interval_s

    def _loop(self) -> None:
        due: dict[str, float] = {}
        while not self._stop.is_set():
            self.run_due(due)
            self._stop.wait(1.0)
