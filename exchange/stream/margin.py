"""Initial margin in the scale-out mode: reserved by the gateway, kept up to date from the events.

The gateway (exchange/stream/gateway.py) reserves an order's initial margin
in the ledger *before* appending the order to the command stream: a pending
transfer `im.<order id>` from the trader's exchange margin account to their
margin-in-use account (`<trader>:im`, kind user_held). Reserve and check run
in one ledger transaction that holds the journal head lock, so two gateways
(any number of processes) serialise on it and can never together reserve
more than the account holds. A refused order is never appended.

`MarginBook` folds the events stream into open orders and positions (pure,
deterministic: the same stream gives the same state and the same postings).
Per command it returns the ledger postings that keep the reservations true:
the filled or cancelled part of an order's hold is released (the old hold is
voided and, while the order rests, a new one holds the remainder) and the
position's margin is moved to or from the margin-in-use account. Every id is
derived from the market, the command stream sequence and an index, so the
margin worker (any number of restarts, replaying the stream from the start)
writes each posting once: a replayed posting is found `existing`.

Model of this slice (docs/scale-out.md): initial margin is
`ceil(price * qty * im_ppm / 1e6)` in the collateral asset's minor units, for
limit orders at their limit price and for positions at their entry cost.
Unrealised PnL, funding and liquidation stay in the embedded venue.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import msgspec
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody.ledger.codes import LedgerCode
from custody.ledger.entry import AccountKind, TransferKind
from custody.ledger.models import LedgerAccount, LedgerHead, LedgerTransfer
from custody.ledger.posting import TransferRequest
from custody.ledger.service import MAX_BATCH, Ledger, ResultStatus
from exchange.engine.codes import ResultCode
from exchange.engine.messages import Accepted, Cancelled, Event, Rejected, Trade
from exchange.stream.controls import CLOSED_REASON
from exchange.stream.follower import EventFollower
from exchange.stream.topology import MAX_MSG_BYTES, margin_bucket
from exchange.stream.wire import EventBatch

log = logging.getLogger("strongroom.margin")
CHECKPOINT_KEY_PREFIX = "margin."

PPM = 1_000_000
IM_PPM_MAX = PPM
MARGIN_ACTOR = "service:margin"
HOLD_CODE = 7200  # ledger `code` of order margin holds and their releases
POSITION_CODE = 7201  # ledger `code` of position margin moves
IN_USE_SUFFIX = ":im"


NOTHING_TO_RELEASE = frozenset({LedgerCode.PENDING_TRANSFER_NOT_FOUND,
                                LedgerCode.PENDING_TRANSFER_ALREADY_POSTED,
                                LedgerCode.PENDING_TRANSFER_ALREADY_VOIDED})


@dataclass(frozen=True)
class HoldRequest:
    """One order's margin hold, as a gateway asks for it."""

    account: str
    order_id: str
    amount: int
    market: str


class MarginRefused(Exception):
    """The order's initial margin exceeds the account's free collateral: nothing was reserved."""

    def __init__(self, needed: int, available: int) -> None:
        super().__init__(f"order needs {needed} initial margin, {available} is free")
        self.needed = needed
        self.available = available


class DuplicateOrder(Exception):
    """The order id belongs to another order (finished, or with other fields): pick a new id."""


class MarginCorrupt(Exception):
    """The ledger refused a posting derived from the events stream: stop and investigate."""


def initial_margin(price: int, qty: int, im_ppm: int) -> int:
    """Return the initial margin of `qty` at `price`, rounded up (never under-reserved)."""
    if not 0 < im_ppm <= IM_PPM_MAX:
        raise ValueError(f"im_ppm was {im_ppm}, must be 1..{IM_PPM_MAX}")
    if price <= 0 or qty < 0:
        raise ValueError(f"price was {price}, qty was {qty}: price positive, qty not negative")
    return -(-price * qty * im_ppm // PPM)


def hold_id(order_id: str) -> str:
    """Return the id of the hold the gateway places for `order_id` (a book order id)."""
    return f"im.{order_id}"


def hold_reference(market: str, order_id: str) -> str:
    """Return the ledger reference of a gateway hold: `<market>/<order id>` (the reconciler's key)."""
    return f"{market}/{order_id}" if market else order_id


def in_use_owner(account: str) -> str:
    """Return the ledger owner of `account`'s margin-in-use account."""
    return account + IN_USE_SUFFIX


# ---------------------------------------------------------------------------- the fold


@dataclass
class OpenOrder:
    """An order resting (or being matched) on the book, with its current hold."""

    account: str
    side: str
    price: int
    remaining: int
    hold: str


@dataclass
class Position:
    """A signed size and the entry cost (price * qty) of the open size."""

    size: int = 0
    cost: int = 0

    def fill(self, signed_qty: int, price: int) -> None:
        """Apply a fill of `signed_qty` (buy positive) at `price`."""
        if self.size == 0 or (self.size > 0) == (signed_qty > 0):
            self.size += signed_qty
            self.cost += abs(signed_qty) * price
            return
        closed = min(abs(signed_qty), abs(self.size))
        self.cost -= self.cost * closed // abs(self.size)
        self.size += signed_qty
        if self.size == 0:
            self.cost = 0
        elif (self.size > 0) == (signed_qty > 0):  # flipped: the rest opens at `price`
            self.cost = abs(self.size) * price


@dataclass(frozen=True)
class Posting:
    """One ledger move decided by the fold: a void, a new hold or a position margin move."""

    id: str
    kind: TransferKind
    account: str  # whose margin account
    amount: int = 0
    release: bool = False  # position margin back to the margin account
    pending_id: str | None = None
    # A void of a hold that may be gone already (a refused duplicate of a finished order):
    # written on its own, and "nothing to release" is not an error.
    tolerant: bool = False


@dataclass
class MarginBook:
    """Open orders, positions and position margin of one or more markets, from event batches."""

    im_ppm: int
    orders: dict[tuple[str, str], OpenOrder] = field(default_factory=dict)
    positions: dict[tuple[str, str], Position] = field(default_factory=dict)
    position_margin: dict[tuple[str, str], int] = field(default_factory=dict)
    last_seq: dict[str, int] = field(default_factory=dict)

    def apply(self, batch: EventBatch) -> list[Posting]:
        """Fold one event batch; return the ledger postings it calls for, in order."""
        market = batch.market
        last = self.last_seq.get(market, 0)
        if batch.first_seq != last + 1:
            raise MarginCorrupt(f"{market}: batch starts at {batch.first_seq}, expected {last + 1}")
        out: list[Posting] = []
        for command in batch.commands:
            out += self._command(market, command.seq, command.events)
        self.last_seq[market] = batch.last_seq
        return out

    def _command(self, market: str, seq: int, events: list[Event]) -> list[Posting]:
        touched: dict[str, None] = {}
        accounts: dict[str, None] = {}
        voids: list[Posting] = []
        base = f"{market}.{seq}"
        for event in events:
            if isinstance(event, Accepted) and event.price is not None:
                self.orders[(market, event.id)] = OpenOrder(
                    event.account, event.side, event.price, event.qty, hold_id(event.id))
            elif isinstance(event, Trade):
                for oid, account, signed in ((event.taker, event.taker_account,
                                              event.qty if event.taker_side == "buy" else -event.qty),
                                             (event.maker, event.maker_account,
                                              -event.qty if event.taker_side == "buy" else event.qty)):
                    self._fill_order(market, oid, event.qty, touched)
                    self.positions.setdefault((account, market), Position()).fill(signed, event.price)
                    accounts[account] = None
            elif isinstance(event, Cancelled):
                self._fill_order(market, event.id, event.qty, touched)
            elif isinstance(event, Rejected) and event.id is not None \
                    and event.code != ResultCode.UNKNOWN_ORDER \
                    and event.reason != CLOSED_REASON \
                    and (market, event.id) not in self.orders:
                # A new order the book refused (or its hold's tombstone, `hold_voided`):
                # release the gateway's hold. A refused duplicate of a live order leaves
                # that order's hold alone, and so does a refused cancel (unknown_order, or
                # market_closed on a halted market): its order may still be on its way.
                voids.append(Posting(f"imv.{base}.r", TransferKind.VOID, "",
                                     pending_id=hold_id(event.id), tolerant=True))
        return voids + self._rehold(market, base, touched) + self._position_moves(
            market, base, accounts)

    def _fill_order(self, market: str, oid: str, qty: int, touched: dict[str, None]) -> None:
        order = self.orders.get((market, oid))
        if order is not None:
            order.remaining -= qty
            assert order.remaining >= 0, (market, oid, order.remaining)
            touched[oid] = None

    def _rehold(self, market: str, base: str, touched: dict[str, None]) -> list[Posting]:
        out: list[Posting] = []
        for k, oid in enumerate(touched):
            order = self.orders[(market, oid)]
            out.append(Posting(f"imv.{base}.{k}", TransferKind.VOID, order.account,
                               pending_id=order.hold))
            if order.remaining == 0:
                del self.orders[(market, oid)]
                continue
            order.hold = f"im.{base}.{k}"
            out.append(Posting(order.hold, TransferKind.PENDING, order.account,
                               initial_margin(order.price, order.remaining, self.im_ppm)))
        return out

    def _position_moves(self, market: str, base: str, accounts: dict[str, None]) -> list[Posting]:
        out: list[Posting] = []
        for k, account in enumerate(accounts):
            key = (account, market)
            position = self.positions[key]
            needed = -(-position.cost * self.im_ppm // PPM)
            held = self.position_margin.get(key, 0)
            if position.size == 0:
                del self.positions[key]
            if needed == held:
                continue
            self.position_margin[key] = needed
            if needed == 0:
                del self.position_margin[key]
            out.append(Posting(f"pm.{base}.{k}", TransferKind.SINGLE, account, abs(needed - held),
                               release=needed < held))
        return out

    def book(self, market: str, depth: int) -> dict[str, list[list[int]]]:
        """Return the market's resting size per price level, best first (hot read)."""
        levels: dict[str, dict[int, int]] = {"buy": {}, "sell": {}}
        for (m, _), order in self.orders.items():
            if m == market and order.remaining:
                side = levels[order.side]
                side[order.price] = side.get(order.price, 0) + order.remaining
        bids = sorted(levels["buy"].items(), reverse=True)[:depth]
        asks = sorted(levels["sell"].items())[:depth]
        return {"bids": [[p, q] for p, q in bids], "asks": [[p, q] for p, q in asks]}


# ---------------------------------------------------------------------------- the ledger side


class MarginLedger:
    """Reserve order margin atomically (gateway) and write the fold's postings (margin worker)."""

    def __init__(self, ledger: Ledger, sessions: sessionmaker[Session], asset: str = "USDC") -> None:
        self.ledger = ledger
        self.sessions = sessions
        self.asset = asset
        self._ids: dict[tuple[str, str], int] = {}

    def _account(self, owner: str, kind: AccountKind) -> int:
        key = (owner, kind.value)
        found = self._ids.get(key)
        if found is None:
            found = self.ledger.ensure_account(owner, self.asset, kind.value,
                                               actor=MARGIN_ACTOR).id
            self._ids[key] = found
        return found

    def accounts(self, account: str) -> tuple[int, int]:
        """Return (margin account id, margin-in-use account id) of `account`, creating them."""
        return (self._account(account, AccountKind.USER_MARGIN),
                self._account(in_use_owner(account), AccountKind.USER_HELD))

    def free(self, account: str) -> int:
        """Return the collateral of `account` not held by orders or positions."""
        balance = self.ledger.balance(self.accounts(account)[0])
        return balance.credits_posted - balance.debits_posted - balance.debits_pending

    def reserve(self, account: str, order_id: str, amount: int, market: str) -> bool:
        """Hold `amount` for `order_id`; True if placed now, False if an earlier call placed it.

        Raise MarginRefused (nothing written) if the hold would leave the account's
        free collateral negative. The check runs after the hold is applied, in the
        same transaction, which holds the ledger's journal head lock until commit:
        every other reservation waits for it, so the check sees theirs.
        """
        margin, in_use = self.accounts(account)
        request = TransferRequest(id=hold_id(order_id), debit_account=margin, credit_account=in_use,
                                  amount=amount, asset=self.asset, kind=TransferKind.PENDING,
                                  code=HOLD_CODE, reference=hold_reference(market, order_id))
        with self.sessions.begin() as session:
            result = self.ledger.submit_in(session, [request], actor=MARGIN_ACTOR)[0]
            if result.code is LedgerCode.TRANSFER_EXISTS_WITH_DIFFERENT_FIELDS:
                raise DuplicateOrder(f"order id {order_id!r} was used for another order")
            if result.status is ResultStatus.FAILED:
                raise MarginCorrupt(f"hold {request.id} refused: {result.code} {result.message}")
            row = session.execute(select(LedgerAccount).where(LedgerAccount.id == margin)
                                  .execution_options(populate_existing=True)).scalar_one()
            free = int(row.credits_posted) - int(row.debits_posted) - int(row.debits_pending)
            if result.status is ResultStatus.CREATED and free < 0:
                session.rollback()
                raise MarginRefused(amount, free + amount)
        return result.status is ResultStatus.CREATED

    def reserve_many(self, holds: Sequence[HoldRequest]) -> list[bool | Exception]:
        """Place many holds in one ledger transaction (group commit); same rules as `reserve`.

        The journal head is locked first (as every ledger writer does), so no balance can
        change until commit; the margin accounts' free collateral is read once, and the
        holds are decided in order against a running free amount: a hold that would leave
        its account negative is refused (MarginRefused) and the others still go in. A hold
        placed earlier under the same id is not counted again (False, like `reserve`); one
        with other fields is a DuplicateOrder. Per hold: True (placed now), False (placed
        before) or the exception to raise for it. One transaction and ~a dozen round trips
        for the whole group instead of for each hold: the head lock is held once.
        """
        if not holds:
            return []
        if len(holds) > MAX_BATCH:
            raise ValueError(f"{len(holds)} holds, at most {MAX_BATCH} per group")
        ids = [self.accounts(h.account) for h in holds]
        requests = [TransferRequest(id=hold_id(h.order_id), debit_account=m, credit_account=u,
                                    amount=h.amount, asset=self.asset, kind=TransferKind.PENDING,
                                    code=HOLD_CODE, reference=hold_reference(h.market, h.order_id))
                    for h, (m, u) in zip(holds, ids, strict=True)]
        out: list[bool | Exception] = [False] * len(holds)
        with self.sessions.begin() as session:
            session.execute(select(LedgerHead.id).where(LedgerHead.id == 1).with_for_update())
            margins = sorted({m for m, _ in ids})
            free = {row.id: int(row.credits_posted) - int(row.debits_posted) - int(row.debits_pending)
                    for row in session.execute(select(LedgerAccount.id, LedgerAccount.credits_posted,
                                                      LedgerAccount.debits_posted,
                                                      LedgerAccount.debits_pending)
                                               .where(LedgerAccount.id.in_(margins)))}
            existing = set(session.scalars(select(LedgerTransfer.id).where(
                LedgerTransfer.id.in_([r.id for r in requests]))))
            chosen: list[int] = []
            seen: dict[str, TransferRequest] = {}
            for i, (req, (margin, _)) in enumerate(zip(requests, ids, strict=True)):
                if req.id in seen:  # the same id twice in one group: a retry racing itself
                    out[i] = False if seen[req.id] == req else DuplicateOrder(
                        f"order id {holds[i].order_id!r} was used for another order")
                    continue
                if req.id in existing:
                    chosen.append(i)  # the ledger says exists / exists with other fields
                    seen[req.id] = req
                    continue
                amount = holds[i].amount
                if free[margin] - amount < 0:
                    out[i] = MarginRefused(amount, free[margin])
                    continue
                free[margin] -= amount
                seen[req.id] = req
                chosen.append(i)
            if chosen:
                results = self.ledger.submit_in(session, [requests[i] for i in chosen],
                                                actor=MARGIN_ACTOR)
                for i, result in zip(chosen, results, strict=True):
                    if result.code is LedgerCode.TRANSFER_EXISTS_WITH_DIFFERENT_FIELDS:
                        out[i] = DuplicateOrder(f"order id {holds[i].order_id!r} was used for "
                                                "another order")
                    elif result.status is ResultStatus.FAILED:
                        raise MarginCorrupt(f"hold {result.id} refused: {result.code} "
                                            f"{result.message}")
                    else:
                        out[i] = result.status is ResultStatus.CREATED
            # The decision above is the ledger's own state: re-read to prove it.
            for row in session.execute(select(LedgerAccount.id, LedgerAccount.credits_posted,
                                              LedgerAccount.debits_posted,
                                              LedgerAccount.debits_pending)
                                       .where(LedgerAccount.id.in_(margins))
                                       .execution_options(populate_existing=True)):
                if int(row.credits_posted) - int(row.debits_posted) - int(row.debits_pending) < 0 \
                        and any(out[i] is True and ids[i][0] == row.id for i in chosen):
                    raise MarginCorrupt(f"margin account {row.id} would go negative")
        return out

    def hold_resolved(self, order_id: str) -> bool:
        """Tell whether the hold of `order_id` exists and was already released (order done)."""
        with self.sessions() as session:
            found = session.execute(select(LedgerTransfer.id).where(
                LedgerTransfer.pending_id == hold_id(order_id))).first()
        return found is not None

    def write(self, postings: list[Posting]) -> None:
        """Write a batch's postings in order, in linked submissions; raise MarginCorrupt if refused."""
        tolerant = [p for p in postings if p.tolerant]
        for r in self.ledger.submit([self._request(p) for p in tolerant], actor=MARGIN_ACTOR) \
                if tolerant else []:
            if r.status is ResultStatus.FAILED and r.code not in NOTHING_TO_RELEASE:
                raise MarginCorrupt(f"ledger refused {r.id}: {r.code} {r.message}")
        requests = [self._request(p) for p in postings if not p.tolerant]
        for start in range(0, len(requests), MAX_BATCH):
            for r in self.ledger.submit(requests[start:start + MAX_BATCH], linked=True,
                                        actor=MARGIN_ACTOR):
                if r.status is ResultStatus.FAILED:
                    raise MarginCorrupt(f"ledger refused {r.id}: {r.code} {r.message}")

    def _request(self, p: Posting) -> TransferRequest:
        if p.kind is TransferKind.VOID:
            return TransferRequest(id=p.id, kind=TransferKind.VOID, pending_id=p.pending_id,
                                   code=HOLD_CODE)
        margin, in_use = self.accounts(p.account)
        debit, credit = (in_use, margin) if p.release else (margin, in_use)
        return TransferRequest(id=p.id, debit_account=debit, credit_account=credit,
                               amount=p.amount, asset=self.asset, kind=p.kind,
                               code=HOLD_CODE if p.kind is TransferKind.PENDING else POSITION_CODE)


class MarginCheckpoint(msgspec.Struct, frozen=True):
    """One market's fold after command `command_seq`, and where to read the events stream from.

    `stream_seq` is a lower bound of the EVT sequence of that command's batch: a
    restart subscribes after it and skips batches up to `command_seq`.
    """

    market: str
    im_ppm: int
    command_seq: int
    stream_seq: int
    orders: list[tuple[str, OpenOrder]]
    positions: list[tuple[str, Position]]
    position_margin: list[tuple[str, int]]


def checkpoint_of(book: MarginBook, market: str, stream_seq: int) -> MarginCheckpoint:
    """Return `market`'s part of `book` as a checkpoint (sorted: same state, same bytes)."""
    return MarginCheckpoint(
        market, book.im_ppm, book.last_seq.get(market, 0), stream_seq,
        sorted((oid, OpenOrder(o.account, o.side, o.price, o.remaining, o.hold))
               for (m, oid), o in book.orders.items() if m == market),
        sorted((a, Position(p.size, p.cost)) for (a, m), p in book.positions.items() if m == market),
        sorted((a, v) for (a, m), v in book.position_margin.items() if m == market))


def restore_checkpoint(book: MarginBook, cp: MarginCheckpoint) -> None:
    """Put `cp`'s market state into `book` (which holds nothing of that market yet)."""
    market = cp.market
    book.orders.update({(market, oid): o for oid, o in cp.orders})
    book.positions.update({(a, market): p for a, p in cp.positions})
    book.position_margin.update({(a, market): v for a, v in cp.position_margin})
    book.last_seq[market] = cp.command_seq


class HoldBatcher:
    """Group concurrent reservations of one process into one ledger transaction (group commit).

    Request threads queue their hold and wait; one thread takes everything queued
    (up to `max_group`) and places it with `MarginLedger.reserve_many`, holding the
    journal head lock once for the group. While a group is in the database the next
    one gathers, so the lock is held per group, not per order.
    """

    def __init__(self, margin: MarginLedger, max_group: int = 256) -> None:
        self.margin = margin
        self.max_group = max(1, min(max_group, MAX_BATCH))
        self.groups = 0  # groups written (read by the benchmark)
        self._queue: queue.SimpleQueue[tuple[HoldRequest, Future[bool]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="holds", daemon=True)
        self._thread.start()

    def reserve(self, account: str, order_id: str, amount: int, market: str) -> bool:
        """Like `MarginLedger.reserve`, placed together with whatever else is queued."""
        future: Future[bool] = Future()
        self._queue.put((HoldRequest(account, order_id, amount, market), future))
        return future.result()

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join(30)

    def _run(self) -> None:
        closing = False
        while not closing:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            while len(group) < self.max_group:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                    break
                group.append(item)
            try:
                results = self.margin.reserve_many([req for req, _ in group])
            except Exception as exc:  # the database failed the whole group: each caller sees it
                for _, future in group:
                    future.set_exception(exc)
                continue
            self.groups += 1
            for (_, future), result in zip(group, results, strict=True):
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)


class MarginWorker:
    """Fold the events of `markets` and write the postings, resuming from a checkpoint.

    With `checkpoint_every` > 0 the worker stores each market's fold in the
    `MARGIN_CHECKPOINT` bucket after every that many batches (and when it
    stops), always *after* the batch's postings are committed, so a checkpoint
    is never ahead of the ledger. A restart loads it and reads the events
    stream from there; without one (or with another `im_ppm`) it replays the
    stream from the start. Either way a posting already written is found
    `existing`, so the ledger ends the same.
    """

    def __init__(self, js: JetStreamContext, ledger: MarginLedger, im_ppm: int,
                 markets: list[str], *, void_stuck_after_ms: int | None = None,
                 reconcile_every_s: float = 10.0, checkpoint_every: int = 0) -> None:
        from exchange.stream.publisher import CommandPublisher
        from exchange.stream.reconcile import HoldReconciler

        if checkpoint_every < 0:
            raise ValueError(f"checkpoint_every was {checkpoint_every}, must not be negative")
        self.js = js
        self.ledger = ledger
        self.markets = markets
        self.book = MarginBook(im_ppm)
        self.written: dict[str, int] = {}  # market -> last command whose postings are written
        self.batches = 0  # batches folded by this run (a resumed run folds only the tail)
        self.checkpoint_every = checkpoint_every
        self.followers = {m: EventFollower(js, m, self._handle) for m in markets}
        self._since_checkpoint: dict[str, int] = {}
        self._checkpoints: KeyValue | None = None
        # Stuck gateway holds (a failed append never retried): None leaves them to an operator.
        self.reconciler = None if void_stuck_after_ms is None else HoldReconciler(
            ledger, CommandPublisher(js, set(markets)), self.book, markets,
            grace_ms=void_stuck_after_ms)
        self.reconcile_every_s = reconcile_every_s

    async def _handle(self, batch: EventBatch) -> None:
        postings = self.book.apply(batch)
        if postings:
            await asyncio.to_thread(self.ledger.write, postings)
        market = batch.market
        self.written[market] = batch.last_seq
        self.batches += 1
        if self._checkpoints is not None:
            self._since_checkpoint[market] = self._since_checkpoint.get(market, 0) + 1
            if self._since_checkpoint[market] >= self.checkpoint_every:
                await self._checkpoint(market)

    async def _checkpoint(self, market: str) -> None:
        assert self._checkpoints is not None
        if self.book.last_seq.get(market, 0) == 0:
            return
        body = msgspec.msgpack.encode(checkpoint_of(self.book, market,
                                                    self.followers[market].stream_seq))
        if len(body) > MAX_MSG_BYTES:
            log.warning("margin checkpoint of %s is %d bytes, over the bucket limit; skipped",
                        market, len(body))
            return
        try:
            await self._checkpoints.put(CHECKPOINT_KEY_PREFIX + market, body)
        except NatsError as exc:  # a missed checkpoint only makes the next start replay more
            log.warning("margin checkpoint of %s not stored: %s", market, exc)
            return
        self._since_checkpoint[market] = 0

    async def _resume(self) -> None:
        """Load each market's checkpoint (if any) into the fold and the followers."""
        assert self._checkpoints is not None
        for market, follower in self.followers.items():
            try:
                entry = await self._checkpoints.get(CHECKPOINT_KEY_PREFIX + market)
            except KeyNotFoundError:
                continue
            if not entry.value:
                continue
            cp = msgspec.msgpack.decode(entry.value, type=MarginCheckpoint)
            if cp.market != market or cp.im_ppm != self.book.im_ppm:
                log.warning("margin checkpoint of %s is for im_ppm %d, not %d: replaying the "
                            "stream from the start", market, cp.im_ppm, self.book.im_ppm)
                continue
            restore_checkpoint(self.book, cp)
            follower.stream_seq, follower.command_seq = cp.stream_seq, cp.command_seq
            self.written[market] = cp.command_seq
            log.info("margin worker resumes %s after command %d", market, cp.command_seq)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow every market until `stop`; a MarginCorrupt stops the worker."""
        if self.checkpoint_every:
            self._checkpoints = await margin_bucket(self.js)
            await self._resume()
        tasks = [f.run(stop) for f in self.followers.values()]
        if self.reconciler is not None:
            tasks.append(self.reconciler.run(stop, self.reconcile_every_s))
        await asyncio.gather(*tasks)
        if self._checkpoints is not None:
            for market in self.markets:
                await self._checkpoint(market)
