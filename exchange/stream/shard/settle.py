"""Shard settlement: a clearing shard's result batches in, ledger postings out, exactly once.

`ShardSettlement` reads ``shardevt.<NAME>`` (stream SHARDEVT) with a durable
JetStream consumer and writes every posting of every `ShardResult` to the
ledger through the shared `PostingWriter` (exchange/postings.py), so a shard's
ledger accounts are mapped exactly like the embedded mode's (shard ``MAIN``)
or suffixed ``@<NAME>`` (any other shard: its own collateral pool).

Exactly once, by construction rather than by bookkeeping:

* Posting ids are the venue's (``s.<NAME>.<clearing seq>.<n>``, holds
  ``s.<NAME>.h.<account>.<n>``), a pure function of the command stream, so a
  batch delivered again (a crash between the ledger commit and the ack, a
  lost ack, a restarted process) finds its transfers ``exists`` and changes
  nothing.
* A round (every batch that queued up, up to FETCH_BATCH messages) is written
  in linked ledger submissions of at most MAX_BATCH postings, in stream order,
  and acknowledged (AckAll, on its last message) only after every submission
  committed.
* A posting id already in the ledger with a different body, or any other
  refusal, is corrupt state: `SettlementRefused` stops the consumer loudly
  (the process exits non-zero) instead of skipping it.

Collateral deposits (spot -> shard collateral) are decided by the ledger, not
the venue: `reserve_deposit` places the PENDING transfer ``cdep.<NAME>.<hex>``
(``a:<user>`` -> ``m:<user>``, refused atomically on an insufficient spot
balance) before the gateway appends ``FundedDeposit``; the shard posts it.
`DepositReconciler` (run by this process) appends ``VoidDeposit`` for
reservations still pending after a grace period: in stream order the machine
either already applied the deposit (the void is a no-op) or voids it and
refuses the deposit if it arrives later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import msgspec
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from custody.ledger.codes import LedgerCode, LedgerError
from custody.ledger.entry import TransferKind
from custody.ledger.models import LedgerHead, LedgerTransfer
from custody.ledger.posting import TransferRequest
from custody.ledger.service import MAX_BATCH, Ledger, wall_clock_ms
from exchange.postings import MAIN_SHARD, POSTING_CODE, SHARD_SEPARATOR, LedgerOutOfSync, PostingWriter
from exchange.risk.clearing import BAD_DEBT, CLEARING, FEES, INSURANCE
from exchange.stream.lease import Lease
from exchange.stream.shard.wire import (
    SHARD_EVENTS_STREAM,
    ShardBatch,
    ShardCommand,
    VoidDeposit,
    WirePosting,
    batch_decoder,
    encode_command,
    msg_id_of,
    shard_events_subject,
    shard_subject,
)
from exchange.stream.topology import check_symbol

log = logging.getLogger("strongroom.shard_settlement")

SETTLEMENT_ACTOR: Final = "service:shard-settlement"
DEPOSIT_ACTOR: Final = "service:shard-deposit"
DURABLE_PREFIX: Final = "shard-settlement-"
LEASE_KEY_PREFIX: Final = "settle."  # ENGINE_LEASE key of a shard's settlement: settle.<NAME>
FETCH_BATCH: Final = 256  # messages per round: batches that queued up share ledger submissions
FETCH_TIMEOUT_S: Final = 0.25
ACK_WAIT_S: Final = 60.0
RETRY_S: Final = 0.5  # pause before subscribing again after NATS trouble
DB_RETRY_S: Final = 1.0  # pause before retrying a round the database failed
DEPOSIT_REF_PREFIX: Final = "cdep."
RECONCILE_EVERY_S: Final = 10.0
VOID_DEPOSITS_AFTER_S: Final = 60
SCAN_SEQ_WINDOW: Final = 50_000  # journal entries per reconciler query (a primary-key range)


class SettlementRefused(Exception):
    """A batch cannot be settled as published (ledger refusal, reused id, foreign shard): stop."""


class DepositRefused(Exception):
    """A collateral deposit reservation was refused; ``code`` is stable, nothing was changed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ShardSettlementStats:
    """Counters of one settlement run (``created + existing == postings``)."""

    rounds: int = 0
    batches: int = 0
    postings: int = 0
    created: int = 0
    existing: int = 0
    submissions: int = 0
    last_seq: int = 0


def durable_name(shard: str) -> str:
    """Return the durable consumer name of ``shard``'s settlement."""
    return DURABLE_PREFIX + check_symbol(shard)


class ShardSettlement:
    """Write a shard's result batches to the ledger; idempotent, in stream order."""

    def __init__(self, ledger: Ledger, shard: str, asset: str = "USDC") -> None:
        self.shard = check_symbol(shard)
        self.writer = PostingWriter(ledger, asset, self.shard, actor=SETTLEMENT_ACTOR)
        self.stats = ShardSettlementStats()

    def postings(self, batches: Sequence[ShardBatch]) -> list[WirePosting]:
        """Return the postings of ``batches`` in order, each id once; raise on a foreign or reused id."""
        out: list[WirePosting] = []
        seen: dict[str, WirePosting] = {}
        last = self.stats.last_seq
        for batch in batches:
            if batch.shard != self.shard:
                raise SettlementRefused(f"batch {batch.first_seq}-{batch.last_seq} is of shard "
                                        f"{batch.shard[:40]!r}, this settlement is {self.shard}'s")
            if last and batch.first_seq > last + 1:
                # The worker publishes every command's result, fenced: a hole means batches
                # were lost or deleted from SHARDEVT, so their postings would never be written.
                raise SettlementRefused(f"shard {self.shard}: results {last + 1}-"
                                        f"{batch.first_seq - 1} are missing (batch "
                                        f"{batch.first_seq}-{batch.last_seq} follows {last})")
            last = max(last, batch.last_seq)
            for result in batch.results:
                for posting in result.postings:
                    p = cast(WirePosting, tuple(posting))
                    before = seen.get(p[0])
                    if before is None:
                        seen[p[0]] = p
                        out.append(p)
                    elif before != p:
                        raise SettlementRefused(f"posting id {p[0]!r} appears twice with different "
                                                f"bodies (command {result.seq}): {before} / {p}")
        return out

    def settle(self, batches: Sequence[ShardBatch]) -> int:
        """Write every posting of ``batches`` (linked submissions of MAX_BATCH); return how many.

        Raise SettlementRefused if the ledger refuses one (the submission that
        held it changed nothing; earlier ones stay, and are found on retry).
        """
        postings = self.postings(batches)
        writer = self.writer
        before = writer.stats.created, writer.stats.existing, writer.stats.submissions
        for start in range(0, len(postings), MAX_BATCH):
            chunk = postings[start:start + MAX_BATCH]
            try:
                writer.submit(chunk)
            except LedgerOutOfSync as exc:
                raise SettlementRefused(f"shard {self.shard}: {exc}") from exc
            except (LedgerError, ValueError) as exc:  # an account the ledger cannot open
                raise SettlementRefused(f"shard {self.shard}: {exc}") from exc
        s = self.stats
        s.rounds += 1
        s.batches += len(batches)
        s.postings += len(postings)
        s.created += writer.stats.created - before[0]
        s.existing += writer.stats.existing - before[1]
        s.submissions += writer.stats.submissions - before[2]
        if batches:
            s.last_seq = max(s.last_seq, max(b.last_seq for b in batches))
        return len(postings)

    # ------------------------------------------------------------------ reconcile

    def _balance(self, key: str) -> int:
        account = self.writer.find(key)
        return 0 if account is None else self.writer.ledger.balance(account).credit_balance_posted

    def _hold(self, account_id: str) -> int:
        account = self.writer.find(f"h:{account_id}")
        return 0 if account is None else self.writer.ledger.balance(account).credits_pending

    def reconcile(self, machine: Any) -> list[str]:
        """Return the clearing keys whose ledger balance or hold differs from ``machine``'s venue.

        ``machine``: a ShardMachine (or a bare Venue) that has applied exactly the
        commands whose batches were settled. Empty: the ledger equals the replica
        for every account's collateral and hold, and for clearing, fees, insurance
        and bad debt. Reads only; never opens an account.
        """
        venue = getattr(machine, "venue", machine)
        ch = venue.clearing
        out = [f"m:{a.id}" for a in ch.accounts.values() if self._balance(f"m:{a.id}") != a.cash]
        out += [f"h:{a.id}" for a in ch.accounts.values() if self._hold(a.id) != a.hold]
        out += [k for k, v in ((CLEARING, ch.clearing), (FEES, ch.fees), (INSURANCE, ch.insurance),
                               (BAD_DEBT, ch.bad_debt)) if self._balance(k) != v]
        return sorted(out)


# ---------------------------------------------------------------------- the consumer


async def run_shard_settlement(js: JetStreamContext, settlement: ShardSettlement,
                               stop: asyncio.Event, *, durable: str | None = None,
                               fetch_batch: int = FETCH_BATCH, holder: str | None = None) -> None:
    """Settle ``shardevt.<NAME>`` with the shard's durable consumer until ``stop``.

    One process settles a shard at a time (lease ``settle.<NAME>`` in
    ENGINE_LEASE; a second one stands by), because the ledger must see the
    batches in stream order: a void before its pending would be refused. For
    the same reason every (re)subscription restarts the durable consumer at its
    ack floor, so the messages a killed process had fetched but not
    acknowledged come first, not after newer ones (`_restart_consumer`).

    NATS trouble (a node lost, a leader election answering 503, an ack timing
    out) never stops it: it waits RETRY_S and subscribes again; a batch not yet
    acknowledged is delivered again and found ``exists``. A SettlementRefused
    (corrupt state) or an undecodable batch does stop it.
    """
    name = durable or durable_name(settlement.shard)
    lease = Lease(js, f"{LEASE_KEY_PREFIX}{settlement.shard}", holder or f"{name}-{uuid.uuid4().hex[:8]}")
    while not stop.is_set():
        if not await lease.acquire(stop):
            return
        keeper = asyncio.create_task(lease.keep())
        try:
            await _settle_while_leading(js, settlement, stop, lease.lost, name, fetch_batch)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            if not lease.lost.is_set():
                await lease.release()


async def _settle_while_leading(js: JetStreamContext, settlement: ShardSettlement,
                                stop: asyncio.Event, lost: asyncio.Event, name: str,
                                fetch_batch: int) -> None:
    subject = shard_events_subject(settlement.shard)
    while not stop.is_set() and not lost.is_set():
        try:
            sub, floor = await _restart_consumer(js, name, subject, fetch_batch)
            if floor:
                await _resume_after(js, settlement, subject, floor)
            log.info("shard settlement consuming %s as %s", subject, name)
            await _consume(sub, settlement, stop, lost, fetch_batch)
        except (NatsError, TimeoutError) as exc:
            log.warning("shard settlement %s: %s: %s; subscribing again in %ss", name,
                        type(exc).__name__, exc, RETRY_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RETRY_S)
    if lost.is_set():
        log.error("shard settlement %s lost its lease: standing by", name)


async def _resume_after(js: JetStreamContext, settlement: ShardSettlement, subject: str,
                        floor: int) -> None:
    """Take the last command settled from the consumer's ack floor message.

    Everything up to the floor was settled and acknowledged, so the next batch must
    follow it: a restarted process checks for a hole across its own restart too.
    """
    try:
        msg = await js.get_msg(SHARD_EVENTS_STREAM, floor)
    except NotFoundError:
        return  # deleted by retention: nothing to compare with
    if msg.subject == subject and msg.data:
        done = batch_decoder.decode(msg.data)
        settlement.stats.last_seq = max(settlement.stats.last_seq, done.last_seq)


async def _restart_consumer(js: JetStreamContext, name: str, subject: str,
                            fetch_batch: int) -> tuple[JetStreamContext.PullSubscription, int]:
    """(Re)create the durable consumer at its ack floor, bind to it; return it and the floor.

    Messages delivered to a dead process but never acknowledged would otherwise
    only come back after ack_wait, behind newer ones; starting again at the
    floor delivers everything not acknowledged in stream order (the ones that
    were settled are found ``exists``).
    """
    floor = 0
    try:
        info = await js.consumer_info(SHARD_EVENTS_STREAM, name)
    except NotFoundError:
        pass
    else:
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        await js.delete_consumer(SHARD_EVENTS_STREAM, name)
    await js.add_consumer(SHARD_EVENTS_STREAM, ConsumerConfig(
        durable_name=name, filter_subject=subject, ack_policy=AckPolicy.ALL, ack_wait=ACK_WAIT_S,
        max_ack_pending=fetch_batch * 2,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if floor else DeliverPolicy.ALL,
        opt_start_seq=floor + 1 if floor else None))
    return await js.pull_subscribe_bind(name, SHARD_EVENTS_STREAM), floor


async def _consume(sub: JetStreamContext.PullSubscription, settlement: ShardSettlement,
                   stop: asyncio.Event, lost: asyncio.Event, fetch_batch: int) -> None:
    while not stop.is_set() and not lost.is_set():
        try:
            msgs = await sub.fetch(fetch_batch, timeout=FETCH_TIMEOUT_S)
        except TimeoutError:  # nats' own and, on some paths, asyncio's: nothing new
            continue
        if not msgs:  # a fetch can also end empty (a status reply instead of messages)
            continue
        batches = []
        for msg in msgs:
            try:
                batches.append(batch_decoder.decode(msg.data))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                meta = msg.metadata
                raise SettlementRefused(f"shard {settlement.shard}: events message "
                                        f"{meta.sequence.stream} does not decode: {exc}") from exc
        # The ledger is a blocking SQLAlchemy client: keep the event loop (and the
        # connection's heartbeats) alive while it commits. A database outage is weather:
        # retry the round (nothing of a failed submission was written) until it commits.
        while True:
            try:
                await asyncio.to_thread(settlement.settle, batches)
                break
            except SQLAlchemyError as exc:
                log.warning("shard %s settlement: database: %s; retrying in %ss",
                            settlement.shard, type(exc).__name__, DB_RETRY_S)
                await asyncio.sleep(DB_RETRY_S)
        # AckAll: acknowledging the round's last message acknowledges the whole round (only
        # this process's: the consumer was restarted at its floor when this process took it).
        await msgs[-1].ack_sync()


# ---------------------------------------------------------------------- collateral deposits


def deposit_ref(shard: str) -> str:
    """Return a fresh reservation id ``cdep.<NAME>.<32 hex>``."""
    return f"{DEPOSIT_REF_PREFIX}{check_symbol(shard)}.{uuid.uuid4().hex}"


def reserve_deposit(ledger: Ledger, user: str, amount: int, shard: str, *, asset: str = "USDC",
                    writer: PostingWriter | None = None) -> str:
    """Reserve ``amount`` of ``user``'s spot balance for shard collateral; return the ref.

    Places the ledger PENDING transfer ``ref`` from ``a:<user>`` to the
    shard's ``m:<user>``; the ledger refuses it atomically (under its journal
    head lock) if the spot balance does not cover it, so concurrent deposits
    can never spend the same balance twice. The caller then appends
    ``FundedDeposit(user, amount, ref)``; the shard posts the pending transfer
    (or the reconciler voids it if the append never arrives). Raises
    DepositRefused with code ``invalid_amount``, ``invalid_account`` or
    ``insufficient_funds``; nothing is changed then.
    """
    if type(amount) is not int or amount <= 0:
        raise DepositRefused("invalid_amount", f"amount was {str(amount)[:40]!r}, must be a "
                             "positive integer in minor units")
    if not isinstance(user, str) or not user or SHARD_SEPARATOR in user or ":" in user:
        raise DepositRefused("invalid_account", f"account was {str(user)[:80]!r}, must be a "
                             f"username (no {SHARD_SEPARATOR!r} or ':')")
    check_symbol(shard)
    if writer is None:
        writer = PostingWriter(ledger, asset, shard, actor=DEPOSIT_ACTOR)
    spot = writer.find(f"a:{user}")
    if spot is None:
        raise DepositRefused("insufficient_funds", f"{user} has no {asset} spot balance")
    try:
        collateral = writer.account(f"m:{user}")
    except LedgerError as exc:  # an owner the ledger cannot hold (too long)
        raise DepositRefused("invalid_account", exc.message) from exc
    ref = deposit_ref(shard)
    result = ledger.submit([TransferRequest(
        id=ref, kind=TransferKind.PENDING, debit_account=spot, credit_account=collateral,
        amount=amount, asset=asset, code=POSTING_CODE,
        reference=f"collateral deposit to shard {shard}")], actor=DEPOSIT_ACTOR)[0]
    if result.code is LedgerCode.INSUFFICIENT_FUNDS:
        raise DepositRefused("insufficient_funds", result.message or "insufficient spot balance")
    if result.code is not None:
        raise DepositRefused("invalid_account", f"{result.code}: {result.message}")
    return ref


def void_deposit_command(ref: str, now_ms: int) -> tuple[str, bytes]:
    """Return (Nats-Msg-Id, body) of the VoidDeposit command of reservation ``ref``."""
    cmd = VoidDeposit(ref)
    return msg_id_of(cmd, ""), encode_command(ShardCommand(cmd=cmd, ts_ms=now_ms))


class DepositReconciler:
    """Find a shard's deposit reservations still pending after a grace period.

    Follows the ledger journal incrementally (primary-key ranges of ``seq``):
    a pending ``cdep.<NAME>.*`` transfer is tracked from its entry until a post
    or void names it. `due()` returns the refs older than the grace period not
    yet handed out; the caller appends VoidDeposit for each (`run`).
    """

    def __init__(self, sessions: sessionmaker[Session], shard: str, void_after_ms: int,
                 clock: Callable[[], int] = wall_clock_ms) -> None:
        self.sessions = sessions
        self.shard = check_symbol(shard)
        self.prefix = f"{DEPOSIT_REF_PREFIX}{self.shard}."
        self.void_after_ms = void_after_ms
        self.clock = clock
        self.cursor = 0  # journal seq scanned up to
        self.pending: dict[str, int] = {}  # ref -> timestamp_ms of its pending entry
        self.sent: set[str] = set()  # refs a VoidDeposit was appended for by this process
        self.appended = 0

    def scan(self) -> None:
        """Read the journal entries after the cursor that reserve or resolve this shard's deposits."""
        with self.sessions() as session:
            head = session.scalar(select(LedgerHead.seq).where(LedgerHead.id == 1)) or 0
            while self.cursor < head:
                upper = min(head, self.cursor + SCAN_SEQ_WINDOW)
                rows = session.execute(
                    select(LedgerTransfer.id, LedgerTransfer.kind, LedgerTransfer.pending_id,
                           LedgerTransfer.timestamp_ms)
                    .where(LedgerTransfer.seq > self.cursor, LedgerTransfer.seq <= upper,
                           or_(and_(LedgerTransfer.kind == TransferKind.PENDING.value,
                                    LedgerTransfer.id.startswith(self.prefix, autoescape=True)),
                               LedgerTransfer.pending_id.startswith(self.prefix, autoescape=True)))
                    .order_by(LedgerTransfer.seq))
                for tid, kind, pending_id, ts in rows:
                    if kind == TransferKind.PENDING.value:
                        self.pending[tid] = ts
                    elif pending_id is not None:
                        self.pending.pop(pending_id, None)
                        self.sent.discard(pending_id)
                self.cursor = upper

    def due(self) -> list[str]:
        """Scan, then return the refs pending longer than the grace period and not yet sent."""
        self.scan()
        cutoff = self.clock() - self.void_after_ms
        return sorted(ref for ref, ts in self.pending.items() if ts <= cutoff and ref not in self.sent)

    async def run(self, js: JetStreamContext, stop: asyncio.Event,
                  every_s: float = RECONCILE_EVERY_S) -> None:
        """Every ``every_s``: append VoidDeposit for each due ref (NATS trouble: try next round)."""
        subject = shard_subject(self.shard)
        while not stop.is_set():
            try:
                refs = await asyncio.to_thread(self.due)
                for ref in refs:
                    msg_id, body = void_deposit_command(ref, self.clock())
                    await js.publish(subject, body, headers={"Nats-Msg-Id": msg_id})
                    self.sent.add(ref)
                    self.appended += 1
                    log.warning("shard %s: deposit reservation %s pending for more than %d ms: "
                                "VoidDeposit appended", self.shard, ref, self.void_after_ms)
            except (NatsError, TimeoutError, SQLAlchemyError) as exc:
                log.warning("shard %s deposit reconciler: %s: %s", self.shard,
                            type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)


def shard_owner(owner: str, shard: str) -> str:
    """Return the ledger owner of a shard account (``owner`` or ``owner@NAME``)."""
    return owner if shard == MAIN_SHARD else f"{owner}{SHARD_SEPARATOR}{shard}"
