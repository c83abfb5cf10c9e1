"""Void gateway margin holds whose order never reached the engine (a failed, never retried append).

The gateway reserves an order's margin (`im.<order id>`, reference
`<market>/<order id>`) *before* it appends the order; if the append fails
(503 `stream_unavailable`) and the client never retries, the hold would stay
forever. The reconciler (run by the margin worker) finds gateway holds that
are still pending after `grace_ms` and whose order is not live in the margin
worker's fold, and appends a tombstone for each: a `ctl_void` control command
(exchange/stream/controls.py) under the command id `void.<order id>`, to the
order's own market stream.

The decision is the engine's, in stream order, so a late append cannot slip
through:

- the order reached the stream *before* the tombstone: the engine processed
  it first (it rests, traded or was refused, and the margin worker moved its
  hold accordingly); if it is live the tombstone changes nothing, otherwise
  its release is a tolerant void that finds the hold already gone;
- the order reaches the stream *after* the tombstone (a gateway that hung
  past the grace time, or a client retry that raced a gateway's check): the
  tombstone won, the margin worker voided the hold on it, and the engine
  refuses the order id from then on (`rejected`, reason `hold_voided`), so it
  never rests without margin. A client retry through a gateway is refused
  before that: the hold is resolved, so the id counts as used (409 2006).

Idempotent: the tombstone's command id deduplicates repeated appends inside
the stream's duplicate window, a repeated tombstone after it is refused by
nothing and changes nothing (the id is already voided), and the void's
ledger id comes from the tombstone's stream sequence like every other
margin posting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from sqlalchemy import and_, exists, select
from sqlalchemy.orm import aliased

from custody.ledger.entry import TransferKind
from custody.ledger.models import LedgerTransfer
from exchange.stream.controls import NS_PER_MS, VoidHold
from exchange.stream.margin import HOLD_CODE, MarginBook, MarginLedger, hold_id
from exchange.stream.publisher import CommandPublisher, StreamRefused

log = logging.getLogger("strongroom.reconcile")

DEFAULT_GRACE_MS = 60_000  # well past a gateway's longest append (5 s timeout + 15 s slack)
DEFAULT_EVERY_S = 10.0
SCAN_LIMIT = 1_000


@dataclass
class ReconcileStats:
    """What the reconciler did (read by tests and the worker's exit report)."""

    scans: int = 0
    tombstones: int = 0
    failed: int = 0


def void_command_id(order_id: str) -> str:
    """Return the command id of the tombstone of `order_id`."""
    return f"void.{order_id}"


class HoldReconciler:
    """Find stuck gateway holds of `markets` and append their tombstones."""

    def __init__(self, ledger: MarginLedger, publisher: CommandPublisher, book: MarginBook,
                 markets: list[str], *, grace_ms: int = DEFAULT_GRACE_MS) -> None:
        if grace_ms < 0:
            raise ValueError(f"grace_ms was {grace_ms}, must not be negative")
        self.ledger = ledger
        self.publisher = publisher
        self.book = book
        self.markets = markets
        self.grace_ms = grace_ms
        self.stats = ReconcileStats()

    def stuck(self, market: str, now_ms: int) -> list[str]:
        """Return the order ids of `market`'s gateway holds pending since before `now - grace`.

        One indexed-by-nothing scan of the pending holds (bounded by SCAN_LIMIT per
        round); the partial index on `pending_id` answers the "not resolved" part.
        """
        resolution = aliased(LedgerTransfer)
        prefix = f"{market}/"
        query = (select(LedgerTransfer.reference)
                 .where(LedgerTransfer.kind == TransferKind.PENDING.value,
                        LedgerTransfer.code == HOLD_CODE,
                        LedgerTransfer.id.startswith("im.", autoescape=True),
                        LedgerTransfer.reference.startswith(prefix, autoescape=True),
                        LedgerTransfer.timestamp_ms <= now_ms - self.grace_ms,
                        ~exists().where(and_(resolution.pending_id == LedgerTransfer.id)))
                 .order_by(LedgerTransfer.seq).limit(SCAN_LIMIT))
        with self.ledger.sessions() as session:
            refs = session.scalars(query).all()
        return [ref[len(prefix):] for ref in refs if len(ref) > len(prefix)]

    async def run_once(self, now_ms: int | None = None) -> int:
        """Scan every market once; return how many tombstones were appended."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        appended = 0
        for market in self.markets:
            order_ids = await asyncio.to_thread(self.stuck, market, now)
            for order_id in order_ids:
                if (market, order_id) in self.book.orders:
                    continue  # resting, its hold is the order's: nothing is stuck
                try:
                    await self.publisher.append_control(
                        market, void_command_id(order_id), VoidHold(order_id, now * NS_PER_MS))
                except StreamRefused as exc:  # NATS weather: the next scan tries again
                    self.stats.failed += 1
                    log.warning("tombstone of %s on %s not appended: %s", order_id, market, exc)
                    continue
                appended += 1
                log.info("hold %s of %s stuck since before %d ms: tombstone appended",
                         hold_id(order_id), market, now - self.grace_ms)
        self.stats.scans += 1
        self.stats.tombstones += appended
        return appended

    async def run(self, stop: asyncio.Event, every_s: float = DEFAULT_EVERY_S) -> None:
        """Scan every `every_s` until `stop`; database or NATS trouble only skips a round."""
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:  # a scan must never stop the margin worker
                log.exception("hold reconciliation round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
