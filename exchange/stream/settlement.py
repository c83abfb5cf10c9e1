"""The clearing/settlement consumer: engine event batches in, ledger postings out, idempotently.

It reads the `EVT` stream with a durable consumer and turns every trade into
fee postings (taker and maker fee, in ppm of the notional) from the trader's
exchange margin account to the platform fee account. Transfer ids are
derived from the market, the command stream sequence and the trade's index
among that command's trades, so they are the same whichever engine worker
produced the batch and however often settlement sees it: a redelivered
batch finds its transfers already in the ledger (`exists`) and changes
nothing. A batch is acknowledged only after the ledger committed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from custody.ledger.entry import AccountKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import MAX_BATCH, Ledger, ResultStatus
from exchange.engine.messages import Trade
from exchange.stream.topology import EVENTS_STREAM
from exchange.stream.wire import EventBatch, batch_decoder

log = logging.getLogger("strongroom.settlement")

SETTLEMENT_ACTOR = "service:settlement"
SETTLEMENT_DURABLE = "settlement"
FEE_POSTING_CODE = 7100  # ledger `code` of fees settled from the event stream
PPM = 1_000_000
FEE_PPM_MAX = 100_000  # 10 %: anything above is a configuration error
PLATFORM_OWNER = "platform"
FETCH_BATCH = 64
FETCH_TIMEOUT_S = 0.25
ACK_WAIT_S = 30.0
RETRY_S = 0.5  # pause before subscribing again after NATS trouble


class SettlementRefused(Exception):
    """The ledger refused a posting derived from engine events: corrupt state, stop."""


@dataclass(frozen=True)
class FeeSchedule:
    """Fees in ppm of the trade notional (price * qty, in the asset's minor units)."""

    asset: str = "USDC"
    taker_fee_ppm: int = 500
    maker_fee_ppm: int = 200

    def __post_init__(self) -> None:
        for name in ("taker_fee_ppm", "maker_fee_ppm"):
            value = getattr(self, name)
            if not 0 <= value <= FEE_PPM_MAX:
                raise ValueError(f"{name} was {value}, must be 0..{FEE_PPM_MAX}")


@dataclass(frozen=True)
class FeePosting:
    """One fee to move: pure output of `fee_postings`."""

    transfer_id: str
    payer: str
    amount: int
    reference: str


def fee_postings(batch: EventBatch, fees: FeeSchedule) -> list[FeePosting]:
    """Return the fee postings of every trade of `batch`, with stream-derived ids."""
    out: list[FeePosting] = []
    for command in batch.commands:
        k = 0
        for event in command.events:
            if not isinstance(event, Trade):
                continue
            notional = event.price * event.qty
            base = f"fee.{batch.market}.{command.seq}.{k}"
            ref = f"{batch.market}:{command.seq}:{k}"
            taker = notional * fees.taker_fee_ppm // PPM
            maker = notional * fees.maker_fee_ppm // PPM
            if taker:
                out.append(FeePosting(f"{base}.t", event.taker_account, taker, ref))
            if maker:
                out.append(FeePosting(f"{base}.m", event.maker_account, maker, ref))
            k += 1
    return out


@dataclass
class SettlementStats:
    """Counters of one settlement run."""

    batches: int = 0
    created: int = 0
    existing: int = 0


class Settlement:
    """Write the fee postings of event batches to the ledger on behalf of SETTLEMENT_ACTOR."""

    def __init__(self, ledger: Ledger, fees: FeeSchedule) -> None:
        self.ledger = ledger
        self.fees = fees
        self.stats = SettlementStats()
        self._accounts: dict[tuple[str, str], int] = {}

    def _account(self, owner: str, kind: AccountKind) -> int:
        key = (owner, kind.value)
        found = self._accounts.get(key)
        if found is None:
            found = self.ledger.ensure_account(owner, self.fees.asset, kind.value,
                                               actor=SETTLEMENT_ACTOR).id
            self._accounts[key] = found
        return found

    def settle(self, batch: EventBatch) -> None:
        """Write the batch's postings; raise SettlementRefused if the ledger refuses one."""
        postings = fee_postings(batch, self.fees)
        fee_account = self._account(PLATFORM_OWNER, AccountKind.FEES) if postings else 0
        requests = [TransferRequest(id=p.transfer_id, debit_account=self._account(p.payer,
                                    AccountKind.USER_MARGIN), credit_account=fee_account,
                                    amount=p.amount, asset=self.fees.asset,
                                    code=FEE_POSTING_CODE, reference=p.reference)
                    for p in postings]
        for start in range(0, len(requests), MAX_BATCH):
            results = self.ledger.submit(requests[start:start + MAX_BATCH], linked=True,
                                         actor=SETTLEMENT_ACTOR)
            for r in results:
                if r.status is ResultStatus.FAILED:
                    raise SettlementRefused(f"ledger refused {r.id}: {r.code} {r.message}")
                if r.status is ResultStatus.CREATED:
                    self.stats.created += 1
                else:
                    self.stats.existing += 1
        self.stats.batches += 1


async def run_settlement(js: JetStreamContext, settlement: Settlement, stop: asyncio.Event, *,
                         durable: str = SETTLEMENT_DURABLE, subject: str = "evt.*") -> None:
    """Consume the events stream with the durable settlement consumer until `stop`.

    NATS trouble (a node lost, a leader election answering 503, an ack that timed
    out) never stops the consumer: it waits RETRY_S and subscribes again. Nothing is
    lost or doubled by that: an unacknowledged batch is delivered again and its
    postings already in the ledger are found `existing`. A SettlementRefused (the
    ledger refused a posting) does stop it: that is corrupt state, not weather.
    """
    config = ConsumerConfig(durable_name=durable, filter_subject=subject, ack_policy=AckPolicy.EXPLICIT,
                            deliver_policy=DeliverPolicy.ALL, ack_wait=ACK_WAIT_S,
                            max_ack_pending=FETCH_BATCH * 4)
    while not stop.is_set():
        try:
            sub = await js.pull_subscribe(subject, durable=durable, stream=EVENTS_STREAM,
                                          config=config)
            log.info("settlement consuming %s as %s", subject, durable)
            await _consume(sub, settlement, stop)
        except (NatsError, TimeoutError) as exc:
            log.warning("settlement consumer %s: %s: %s; subscribing again in %ss", durable,
                        type(exc).__name__, exc, RETRY_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RETRY_S)


async def _consume(sub: JetStreamContext.PullSubscription, settlement: Settlement,
                   stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            msgs = await sub.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT_S)
        except TimeoutError:  # nats' own and, on some paths, asyncio's: nothing new
            continue
        for msg in msgs:
            # The ledger is a blocking SQLAlchemy client: keep the event loop (and the
            # connection's heartbeats) alive while it commits.
            await asyncio.to_thread(settlement.settle, batch_decoder.decode(msg.data))
            await msg.ack_sync()
