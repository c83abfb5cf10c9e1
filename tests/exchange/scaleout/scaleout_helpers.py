"""Reading streams back for the scale-out tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import nats
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy.engine import Engine

from custody.db import make_engine, make_session_factory
from custody.ledger.entry import AccountKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger
from exchange.engine.instrument import Instrument
from exchange.engine.messages import Cancel, Command, NewOrder
from exchange.engine.orderbook import OrderBook
from exchange.stream.margin import MarginLedger, MarginWorker
from exchange.stream.topology import (
    EVENTS_STREAM,
    command_stream,
    command_subject,
    ensure_topology,
    events_subject,
    lease_bucket,
)
from exchange.stream.wire import EventBatch, batch_decoder
from exchange.stream.worker import run_worker

ROOT = Path(__file__).resolve().parents[3]
READ_RETRY_S = 20.0
SETTLE_TIMEOUT_S = 60.0
IM_PPM = 100_000  # 10 %


async def read_all(js: JetStreamContext, stream: str, subject: str) -> list[bytes]:
    """Return the bodies of every message of `subject` in `stream`, in stream order.

    Retried while JetStream is unavailable (a stream or the meta leader being
    re-elected after a node loss).
    """
    deadline = time.monotonic() + READ_RETRY_S
    while True:
        try:
            return await _read_all(js, stream, subject)
        except NatsError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


async def _read_all(js: JetStreamContext, stream: str, subject: str) -> list[bytes]:
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE,
                            mem_storage=True, num_replicas=1, inactive_threshold=10.0)
    sub = await js.pull_subscribe(subject, stream=stream, config=config)
    out: list[bytes] = []
    pending = (await sub.consumer_info()).num_pending
    while len(out) < pending:
        try:
            out.extend(m.data for m in await sub.fetch(500, timeout=1.0))
        except NatsTimeoutError:
            break
    await sub.unsubscribe()
    return out


async def command_bodies(js: JetStreamContext, symbol: str) -> list[bytes]:
    """Return the market's command stream as replay lines, in sequence order."""
    return await read_all(js, command_stream(symbol), command_subject(symbol))


async def event_batches(js: JetStreamContext, symbol: str) -> list[EventBatch]:
    """Return every event batch the market's engines published, in stream order."""
    return [batch_decoder.decode(b) for b in await read_all(js, EVENTS_STREAM, events_subject(symbol))]


async def last_batch_seq(js: JetStreamContext, stream: str, subject: str,
                         last_seq: Callable[[bytes], int]) -> int:
    """Return the last command sequence of the newest batch on `subject` (0 if none)."""
    try:
        msg = await js.get_last_msg(stream, subject)
    except NotFoundError:
        return 0
    return last_seq(msg.data or b"")


async def wait_seq(last: Callable[[], Awaitable[int]], seq: int, timeout_s: float,
                   what: str) -> None:
    """Poll `last()` until it reaches `seq`; the deadline only bounds a hang."""
    deadline = time.monotonic() + timeout_s
    done = 0
    while done < seq:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: up to {seq} not published; last {done}")
        # A timeout or a 503: the stream is electing a new leader after a node loss.
        with contextlib.suppress(NatsError, TimeoutError):
            done = await last()
        await asyncio.sleep(0.05)


async def last_published(js: JetStreamContext, symbol: str) -> int:
    """Return the last command sequence whose events are published (0 if none)."""
    return await last_batch_seq(js, EVENTS_STREAM, events_subject(symbol),
                                lambda data: batch_decoder.decode(data).last_seq)


async def wait_published(js: JetStreamContext, symbol: str, seq: int, timeout_s: float) -> None:
    """Wait until the events of command `seq` are published."""
    await wait_seq(lambda: last_published(js, symbol), seq, timeout_s, symbol)


async def ready_topology(js: JetStreamContext, markets: list[str]) -> None:
    """Create the R3 streams of `markets`, retrying while the cluster cannot place them yet.

    Right after a node was restarted (or under load) JetStream answers "no suitable
    peers for placement" or times out for a while; the deadline only bounds a hang.
    """
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        try:
            await ensure_topology(js, markets, 3)
            return
        except (NatsError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


def events_by_command(batches: list[EventBatch]) -> list[tuple[int, list[object]]]:
    """Flatten batches to (command seq, events as builtins), in published order."""
    return [(c.seq, [msgspec.to_builtins(e) for e in c.events]) for b in batches for c in b.commands]


def order_flow(n: int, seed: int) -> list[tuple[str, Command]]:
    """Return n (command id, command) pairs: crossing limit orders and some cancels."""
    rng = random.Random(seed)
    out: list[tuple[str, Command]] = []
    live: list[str] = []
    for i in range(n):
        if live and rng.random() < 0.15:
            oid = live.pop(rng.randrange(len(live)))
            out.append((f"c{seed}-{i}", Cancel(id=oid)))
            continue
        oid = f"o{seed}-{i}"
        side = "buy" if rng.random() < 0.5 else "sell"
        price = 1000 + rng.randrange(-10, 11)
        out.append((f"c{seed}-{i}", NewOrder(id=oid, account=f"acct{rng.randrange(8)}",
                                             side=side, qty=rng.randrange(1, 20), price=price)))
        live.append(oid)
    return out


def replay_single_process(instrument: Instrument, bodies: list[bytes]) -> tuple[list[list[object]], str]:
    """Run command bodies through one in-process book: events per command and the state hash."""
    from exchange.engine.replay import parse_line

    book = OrderBook(instrument)
    per_command = []
    for i, body in enumerate(bodies, 1):
        book.process(parse_line(i, body, skip_invalid=True))
        per_command.append([msgspec.to_builtins(e) for e in book.take_events()])
    return per_command, book.state_hash()


def margin_ledger(url: str) -> tuple[MarginLedger, Engine]:
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    return MarginLedger(Ledger(sessions), sessions), engine


def fund(margin: MarginLedger, account: str, amount: int) -> None:
    ledger = margin.ledger
    src = ledger.ensure_account("funding", "USDC", AccountKind.EXTERNAL.value).id
    ledger.transfer(TransferRequest(id=f"fund.{account}", debit_account=src,
                                    credit_account=margin.accounts(account)[0], amount=amount,
                                    asset="USDC"))


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Stack:
    """An engine worker and the margin worker for one market, on a loop in a thread."""

    def __init__(self, urls: list[str], market: str, ledger: MarginLedger, tick: int, *,
                 void_stuck_after_ms: int | None = None, engine: bool = True) -> None:
        self.urls, self.market, self.ledger, self.tick = urls, market, ledger, tick
        self.void_stuck_after_ms = void_stuck_after_ms
        self.with_engine = engine  # False: the engines run elsewhere (processes)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> Stack:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(2 * SETTLE_TIMEOUT_S)
        return self

    async def _start(self) -> None:
        nc = await nats.connect(servers=self.urls, max_reconnect_attempts=-1)
        self.nc, self.js = nc, nc.jetstream()
        await ready_topology(self.js, [self.market])
        self.stop_engine, self.stop_margin = asyncio.Event(), asyncio.Event()
        self.engine = asyncio.create_task(run_worker(
            self.urls, Instrument(self.market, tick_size=self.tick), name="w1",
            stop=self.stop_engine)) if self.with_engine else asyncio.create_task(asyncio.sleep(0))
        await self._start_margin()

    async def _start_margin(self, checkpoint_every: int = 0) -> None:
        self.stop_margin = asyncio.Event()
        self.worker = MarginWorker(self.js, self.ledger, IM_PPM, [self.market],
                                   void_stuck_after_ms=self.void_stuck_after_ms,
                                   reconcile_every_s=0.2, checkpoint_every=checkpoint_every)
        self.margin = asyncio.create_task(self.worker.run(self.stop_margin))

    def start_margin(self, checkpoint_every: int = 0) -> None:
        asyncio.run_coroutine_threadsafe(self._start_margin(checkpoint_every), self.loop).result(30)

    def stop_margin_worker(self) -> MarginWorker:
        async def go() -> None:
            self.stop_margin.set()
            await self.margin
        asyncio.run_coroutine_threadsafe(go(), self.loop).result(60)
        return self.worker

    def written(self) -> int:
        """Return the last command whose margin postings the margin worker has written."""
        return self.worker.written.get(self.market, 0)

    def bodies(self) -> list[bytes]:
        return asyncio.run_coroutine_threadsafe(command_bodies(self.js, self.market),
                                                self.loop).result(60)

    def close(self) -> None:
        async def go() -> None:
            self.stop_engine.set()
            self.stop_margin.set()
            await asyncio.gather(self.engine, self.margin, return_exceptions=True)
            await self.nc.close()
        asyncio.run_coroutine_threadsafe(go(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def spawn_engine(market: str, name: str, urls: list[str], *extra: str) -> subprocess.Popen[bytes]:
    """Start `strongroom engine-worker` for `market` as its own process (to kill -9 it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", "from strongroom.cli import main; main()", "engine-worker",
         "--market", market, "--nats", ",".join(urls), "--name", name, *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def lease_holder(js: JetStreamContext, market: str, timeout_s: float) -> str:
    """Return the name of the worker leading `market`, waiting up to `timeout_s` for one."""
    kv = await lease_bucket(js)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return (await kv.get(market)).value.decode()  # type: ignore[union-attr]
        except NatsError:  # not found (nobody leads yet) or NATS weather
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
