"""The imperative shell: the pure venue in memory, the ledger as the durable record of collateral.

Order entry never touches the database: the clearing house reserves margin
in memory and queues postings; ``flush()`` writes them to the ledger in
linked batches (one database transaction each, at most ``MAX_BATCH``
transfers). Guarantees (docs/margin.md, "Consistency"):

* Every posting id is ``{namespace}.{clearing seq}.{n}`` (holds:
  ``{namespace}.h.{account}.{n}``), a pure function of the command stream,
  so re-submitting after a crash is a no-op in the ledger (idempotent ids).
* After ``flush()`` returns, for every account the ledger's user_margin
  balance equals the clearing house's collateral, the clearing, fees and
  insurance accounts equal theirs, and the user_held pending amount equals
  the margin hold; between flushes the ledger lags by the queued postings.
* A refused batch is a corrupt-state error (the core already validated
  every posting), never silently dropped.
* With a venue journal (``ExchangeService.open``, docs/exchange-durability.md)
  every command is journaled, and ``flush()`` commits the journal *before*
  it writes the ledger, so the ledger never holds a posting the journal
  could lose. Postings stay queued until the ledger accepts them; after a
  restart the replay regenerates them and they are submitted again as
  idempotent retries.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from custody.ledger.posting import TransferRequest
from custody.ledger.service import MAX_BATCH, Ledger
from exchange.engine.journal import FsyncPolicy
from exchange.instruments import ExchangeConfig
from exchange.marketdata import MarketData
from exchange.postings import (
    BAD_DEBT_OWNER,
    CLEARING_OWNER,
    PLATFORM_OWNER,
    POSTING_CODE,
    WALLET_OWNER,
    LedgerOutOfSync,
    PostingWriter,
)
from exchange.recovery import DEFAULT_SNAPSHOT_EVERY, DurableVenue
from exchange.risk.clearing import BAD_DEBT, CLEARING, FEES, INSURANCE, WALLET, Posting
from exchange.risk.events import LiquidationStarted, RiskEvent
from exchange.venue import Venue

log = logging.getLogger(__name__)

MAX_EVENTS_KEPT: Final = 100_000
__all__ = ["BAD_DEBT_OWNER", "CLEARING_OWNER", "PLATFORM_OWNER", "POSTING_CODE", "WALLET_OWNER",
           "ExchangeService", "LedgerOutOfSync"]


class ExchangeService:
    """The venue plus its ledger accounts; every public method leaves the ledger in sync."""

    def __init__(self, ledger: Ledger, venue: Venue, asset: str = "USDC",
                 durable: DurableVenue | None = None, market: MarketData | None = None) -> None:
        self.ledger = ledger
        self.venue = venue
        self.asset = asset
        self.durable = durable
        self.lock = threading.RLock()
        self.events: list[RiskEvent] = []
        self.liquidations = 0  # started since this process began (strongroom_exchange_liquidations)
        # Clearing keys -> ledger accounts and postings -> transfers (exchange/postings.py).
        self.writer = PostingWriter(ledger, asset)
        self._backlog: list[Posting] = []  # drained, journaled, not yet accepted by the ledger
        # The market-data read model (exchange/marketdata.py), fed by the venue's tap.
        if market is None:
            market = MarketData()
            market.attach(venue)
        self.market = market
        # The shell's clock (ms). With one, every command first runs the funding intervals and
        # expiries due before it, so nothing trades past a boundary that was not yet settled.
        self.clock: Callable[[], int] | None = None

    @classmethod
    def open(cls, ledger: Ledger, config: ExchangeConfig, directory: Path, *, namespace: str = "x",
             asset: str = "USDC", policy: FsyncPolicy = FsyncPolicy.ALWAYS,
             snapshot_every: int = DEFAULT_SNAPSHOT_EVERY) -> ExchangeService:
        """Recover the venue journaled in ``directory`` and bring the ledger up to date with it.

        The market-data read model follows the recovery: it loads its snapshot taken with the
        venue snapshot recovery starts from, then sees the replayed journal tail.
        """
        market = MarketData()
        durable, rec = DurableVenue.open(directory, config, namespace=namespace, policy=policy,
                                         snapshot_every=snapshot_every,
                                         observe=market.recovering(directory))
        durable.on_snapshot = market.save_snapshot
        svc = cls(ledger, rec.venue, asset, durable, market=market)
        svc.events.extend(rec.events)
        svc._backlog = rec.postings
        log.info("exchange venue recovered from %s: snapshot %d, %d records replayed, %d postings "
                 "re-submitted, %d unfinished records and %d torn bytes dropped", directory,
                 rec.snapshot_seq, rec.replayed, len(rec.postings), rec.dropped, rec.torn_bytes)
        svc.flush()
        mismatches = svc.reconcile()
        if mismatches:
            # The ledger disagrees with the recovered venue (e.g. a database restored without
            # its exchange directory): refuse to trade on it rather than guess.
            raise LedgerOutOfSync(f"after recovery the ledger disagrees with the venue on "
                                  f"{len(mismatches)} accounts, first {mismatches[:5]}")
        return svc

    def reconcile(self) -> list[str]:
        """Flush, then return the clearing keys whose ledger balance or hold differs from the venue."""
        with self.lock:
            self.flush()
            ch = self.venue.clearing
            out = [f"m:{a.id}" for a in ch.accounts.values() if self.ledger_balance(f"m:{a.id}") != a.cash]
            out += [f"h:{a.id}" for a in ch.accounts.values() if self.ledger_hold(a.id) != a.hold]
            out += [k for k, v in ((CLEARING, ch.clearing), (FEES, ch.fees), (INSURANCE, ch.insurance),
                                   (BAD_DEBT, ch.bad_debt))
                    if self.ledger_balance(k) != v]
            return sorted(out)

    def close(self) -> None:
        """Flush, then close the journal (a snapshot first, so the next start replays nothing)."""
        with self.lock:
            self.flush()
            if self.durable is not None:
                if self.durable.since_snapshot and not self._backlog:
                    self.durable.snapshot()
                self.durable.close()
                self.durable = None

    @contextmanager
    def command(self) -> Iterator[Venue]:
        """Run venue calls under the lock and flush their postings to the ledger afterwards."""
        with self.lock:
            try:
                if self.clock is not None:
                    now_ms = int(self.clock())
                    if self.venue.due(now_ms):
                        self.venue.advance(now_ms)
                yield self.venue
            finally:
                self.flush()

    def flush(self) -> int:
        """Commit the journal, then write queued postings to the ledger; return how many."""
        with self.lock:
            postings, events = self.venue.drain()
            if self.durable is not None:
                self.durable.commit()
            self.events.extend(events)
            self.liquidations += sum(1 for e in events if type(e) is LiquidationStarted)
            if len(self.events) > MAX_EVENTS_KEPT:
                del self.events[: len(self.events) - MAX_EVENTS_KEPT]
            backlog = self._backlog
            backlog.extend(postings)
            submitted = 0
            while backlog:
                chunk = backlog[:MAX_BATCH]
                self.writer.submit(chunk)  # raises LedgerOutOfSync naming the refused posting
                # Only accepted postings leave the backlog: a failed write is retried next time.
                del backlog[:len(chunk)]
                submitted += len(chunk)
            if self.durable is not None and self.durable.snapshot_due():
                self.durable.snapshot()
            return submitted

    def _request(self, p: Posting) -> TransferRequest:
        return self.writer.request(p)

    def ledger_account(self, key: str) -> int:
        """Return the ledger account id behind a clearing-house key, creating it on first use."""
        return self.writer.account(key)

    def credit_deposit(self, owner: str, amount: int, transfer_id: str) -> None:
        """Credit an on-chain deposit to ``owner``'s spot balance (hot wallet -> user)."""
        self.ledger.transfer(TransferRequest(
            id=transfer_id, debit_account=self.ledger_account(WALLET),
            credit_account=self.ledger_account(f"a:{owner}"), amount=amount, asset=self.asset))

    def ledger_balance(self, key: str) -> int:
        """Return the posted credit balance of a key's ledger account."""
        return self.ledger.balance(self.ledger_account(key)).credit_balance_posted

    def ledger_hold(self, account: str) -> int:
        """Return the pending (held) amount of an account's margin hold."""
        return self.ledger.balance(self.ledger_account(f"h:{account}")).credits_pending

