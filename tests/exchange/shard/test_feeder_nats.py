"""Shard feeders on a local 3-node JetStream cluster: one leader appends, a standby takes over."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import nats
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError
from prometheus_client import CollectorRegistry

from exchange.commands import Advance, Quote, Tick
from exchange.feeds import ScriptedFeed, SourceQuote
from exchange.instruments import MARKET_CONFIG, load_instruments
from exchange.stream.cluster import LocalCluster
from exchange.stream.shard.feeder import FEEDER_HEADER, FeederMetrics, ShardFeeder, feeder_lease_key
from exchange.stream.shard.machine import ShardMachine
from exchange.stream.shard.wire import command_decoder, shard_stream
from exchange.stream.topology import ensure_shard_topology, lease_bucket
from tests.exchange.helpers import BTC, NOW, USDC

CONFIG = load_instruments(MARKET_CONFIG)  # what `strongroom shard-feeder` loads by default
ROOT = Path(__file__).resolve().parents[3]
HANG_S = 90.0  # bounds a hang only; every wait polls for its condition


async def until(condition: Callable[[], bool], what: str, timeout_s: float = HANG_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def stream_messages(js: JetStreamContext, shard: str) -> list[tuple[int, bytes, str]]:
    """Return every (seq, body, feeder name) of the shard's command stream, in order."""
    info = await js.stream_info(shard_stream(shard))
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(shard_stream(shard), seq)
        out.append((seq, msg.data or b"", (msg.headers or {}).get(FEEDER_HEADER, "")))
    return out


async def lease_holder(js: JetStreamContext, shard: str) -> str | None:
    kv = await lease_bucket(js)
    try:
        entry = await kv.get(feeder_lease_key(shard))
    except KeyNotFoundError:
        return None
    return None if entry.value is None else entry.value.decode()


async def cancel_until_done(task: asyncio.Task[object]) -> None:
    """Cancel ``task`` until it has ended (a crash without clean-up).

    On Python 3.11 `asyncio.wait_for` can swallow a cancellation that arrives just as its
    timeout fires (fixed in 3.12), and the feeder sleeps in one between rounds: one
    `cancel()` then `await task` could wait forever. Cancel again until it is done.
    """
    deadline = time.monotonic() + HANG_S
    while not task.done():
        assert time.monotonic() < deadline, "the task would not end"
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    with contextlib.suppress(asyncio.CancelledError):
        task.result()


def check_stream(bodies: list[bytes]) -> None:
    """The stream applies cleanly, in time order, and its ticks never go back."""
    machine = ShardMachine(CONFIG, "MAIN")
    results = machine.apply_many(list(enumerate(bodies, 1)))
    assert [r.code for r in results] == [0] * len(results), [r.message for r in results if r.code]
    stamps = [command_decoder.decode(b).ts_ms for b in bodies]
    assert stamps == sorted(stamps)
    assert all(type(command_decoder.decode(b).cmd) in (Advance, Quote, Tick) for b in bodies)


def test_feeder_two_feeders_only_the_leader_appends_and_the_standby_takes_over_when_it_dies(
        nats_cluster: LocalCluster) -> None:
    asyncio.run(_two_feeders(nats_cluster.urls))


async def _two_feeders(urls: list[str]) -> None:
    shard = "F" + uuid.uuid4().hex[:8].upper()
    admin = await nats.connect(servers=urls)
    nc_a = await nats.connect(servers=urls)
    nc_b = await nats.connect(servers=urls)
    try:
        js = admin.jetstream()
        await ensure_shard_topology(js, [shard])
        feeds = {}
        for name, btc in (("A", BTC), ("B", BTC + 7 * USDC)):
            feeds[name] = ScriptedFeed(CONFIG.indices)
            feeds[name].set("BTC", btc)
        reg_a, reg_b = CollectorRegistry(), CollectorRegistry()
        a = ShardFeeder(nc_a.jetstream(), CONFIG, shard, feeds["A"], "A", interval_ms=100,
                        metrics=FeederMetrics(reg_a))
        b = ShardFeeder(nc_b.jetstream(), CONFIG, shard, feeds["B"], "B", interval_ms=100,
                        metrics=FeederMetrics(reg_b))

        def sample(reg: CollectorRegistry, name: str) -> float | None:
            return reg.get_sample_value(name, {"shard": shard})
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        task_a = asyncio.create_task(a.run(stop_a))
        await until(lambda: a.stats.rounds >= 2, "A to lead")
        task_b = asyncio.create_task(b.run(stop_b))
        await until(lambda: a.stats.rounds >= 12, "A to feed ten more rounds")
        assert b.stats.terms == 0 and b.stats.appended == 0, "the standby appends nothing"
        assert await lease_holder(js, shard) == "A"
        assert sample(reg_a, "strongroom_shard_feeder_leading") == 1
        assert sample(reg_b, "strongroom_shard_feeder_leading") in (None, 0)
        # A dies without giving its lease up (a crash): B takes over once the lease expires.
        await cancel_until_done(task_a)
        await nc_a.close()
        killed = time.monotonic()
        await until(lambda: b.stats.appended > 0, "B to take over")
        takeover_s = time.monotonic() - killed
        await until(lambda: b.stats.rounds >= 3, "B to feed")
        stop_b.set()
        await asyncio.wait_for(task_b, HANG_S)
        assert await lease_holder(js, shard) is None, "a stopped feeder gives its lease up"
        assert sample(reg_b, "strongroom_shard_feeder_leading") == 0
        assert sample(reg_b, "strongroom_shard_feeder_appends_total") == b.stats.appended
        assert sample(reg_b, "strongroom_shard_feeder_rounds_total") == b.stats.rounds
        last_round = sample(reg_b, "strongroom_shard_feeder_last_round_timestamp_seconds")
        assert last_round is not None and abs(last_round - time.time()) < HANG_S
        messages = await stream_messages(js, shard)
        authors = [name for _, _, name in messages]
        first_b = authors.index("B")
        assert set(authors[:first_b]) == {"A"} and set(authors[first_b:]) == {"B"}
        ops = [(n, command_decoder.decode(body).cmd) for _, body, n in messages]
        prices = {n: {c.price for m, c in ops if m == n and type(c) is Quote and c.underlying == "BTC"}
                  for n in "AB"}
        assert prices == {"A": {BTC}, "B": {BTC + 7 * USDC}}
        check_stream([body for _, body, _ in messages])
        assert 0 < takeover_s < 30, takeover_s
    finally:
        for nc in (admin, nc_b, nc_a):
            if not nc.is_closed:
                await nc.close()


def spawn_feeder(shard: str, name: str, urls: list[str], seed: int) -> subprocess.Popen[bytes]:
    """Start `strongroom shard-feeder` as its own process (to kill -9 it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", "from strongroom.cli import main; main()", "shard-feeder",
         "--shard", shard, "--nats", ",".join(urls), "--name", name, "--seed", str(seed),
         "--interval-ms", "100"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_feeder_cli_leader_killed_standby_takes_over_and_sigterm_releases_the_lease(
        nats_cluster: LocalCluster) -> None:
    asyncio.run(_cli_feeders(nats_cluster.urls))


async def _cli_feeders(urls: list[str]) -> None:
    shard = "G" + uuid.uuid4().hex[:8].upper()
    nc = await nats.connect(servers=urls)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        js = nc.jetstream()
        await ensure_shard_topology(js, [shard])
        procs.append(spawn_feeder(shard, "cli-a", urls, seed=1))

        async def leads(name: str, proc: subprocess.Popen[bytes]) -> None:
            deadline = time.monotonic() + HANG_S
            while (holder := await lease_holder(js, shard)) != name:
                assert time.monotonic() < deadline, f"{name} never led; holder {holder}"
                assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
                await asyncio.sleep(0.1)

        await leads("cli-a", procs[0])
        procs.append(spawn_feeder(shard, "cli-b", urls, seed=2))
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(30)
        await leads("cli-b", procs[1])
        # B appends from then on: wait for its first commands, then stop it cleanly.
        deadline = time.monotonic() + HANG_S
        while not any(n == "cli-b" for _, _, n in await stream_messages(js, shard)):
            assert time.monotonic() < deadline, "cli-b never appended"
            await asyncio.sleep(0.1)
        procs[1].send_signal(signal.SIGTERM)
        out, err = procs[1].communicate(timeout=60)
        assert procs[1].returncode == 0, err.decode()[-2000:]
        stats = json.loads(out.decode().strip().splitlines()[-1])
        assert stats["feeder"] == "cli-b" and stats["terms"] == 1 and stats["appended"] > 0
        assert await lease_holder(js, shard) is None
        messages = await stream_messages(js, shard)
        authors = [n for _, _, n in messages]
        first_b = authors.index("cli-b")
        assert set(authors[:first_b]) == {"cli-a"} and set(authors[first_b:]) == {"cli-b"}
        check_stream([body for _, body, _ in messages])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
        await nc.close()


def test_feeder_with_shard_worker_liquidates_on_a_mark_move_and_halts_on_a_stale_index(
        nats_cluster: LocalCluster) -> None:
    """The whole path: feeder -> shard stream -> shard worker -> results, in stream order."""
    asyncio.run(_end_to_end(nats_cluster.urls))


async def _end_to_end(urls: list[str]) -> None:
    import dataclasses

    from exchange.commands import Deposit, Place, SeedInsurance
    from exchange.engine.messages import NewOrder
    from exchange.risk.codes import RiskCode
    from exchange.stream.shard.wire import ShardCommand, ShardResult, encode_command, msg_id_of
    from exchange.stream.shard.worker import run_shard_worker
    from tests.exchange.shard.worker_flow import append, batches, ready_shards, wait_published

    # A short staleness, so the test need not wait 10 s for the index to go stale.
    staleness_ms = 4_000
    config = dataclasses.replace(CONFIG, indices={
        u: dataclasses.replace(c, staleness_ms=staleness_ms) for u, c in CONFIG.indices.items()})
    shard = "E" + uuid.uuid4().hex[:8].upper()
    nc = await nats.connect(servers=urls)
    stop_worker, stop_feeder = asyncio.Event(), asyncio.Event()
    tasks: list[asyncio.Task[object]] = []
    try:
        js = nc.jetstream()
        await ready_shards(js, [shard])
        tasks.append(asyncio.create_task(run_shard_worker(urls, config, shard, name="w",
                                                          stop=stop_worker)))
        feed = ScriptedFeed(config.indices)
        feed.set("BTC", BTC)
        feed.set("ETH", 3_000 * USDC)
        feeder = ShardFeeder(js, config, shard, feed, "f1", interval_ms=100)
        tasks.append(asyncio.create_task(feeder.run(stop_feeder)))
        await until(lambda: feeder.stats.rounds >= 2, "the feeder to lead")

        async def send(op: object, msg_id: str | None = None) -> ShardResult:
            now = time.time_ns() // 1_000_000
            mid = msg_id or msg_id_of(op, uuid.uuid4().hex)  # type: ignore[arg-type]
            seq = await append(js, shard, mid, encode_command(ShardCommand(op, now)))  # type: ignore[arg-type]
            await wait_published(js, shard, seq, HANG_S)
            return next(r for b in await batches(js, shard) for r in b.results if r.seq == seq)

        def order(oid: str, account: str, side: str, qty: int, price: int = BTC) -> Place:
            return Place("BTC-PERP", NewOrder(oid, account, side, qty, price=price,  # type: ignore[arg-type]
                                              ts=time.time_ns()))

        assert (await send(SeedInsurance(50 * USDC))).code == 0
        for name, amount in (("short", 50_000 * USDC), ("lev", 1_500 * USDC),
                             ("short2", 50_000 * USDC), ("fresh", 10_000 * USDC)):
            assert (await send(Deposit(name, amount))).code == 0
        for maker, qty in (("short", 600), ("short2", 400)):
            assert (await send(order(f"{maker}-s", maker, "sell", qty))).code == 0
            taken = await send(order(f"lev-{maker}", "lev", "buy", qty))
            assert taken.code == 0 and taken.events, taken.message
        feed.set("BTC", BTC - 3_000 * USDC)  # far past lev's bankruptcy price

        liquidated: list[ShardResult] = []

        async def liquidation_published() -> bool:
            liquidated[:] = [r for b in await batches(js, shard) for r in b.results
                             if any(e["type"] == "LiquidationStarted" for e in r.risk)]
            return bool(liquidated)

        deadline = time.monotonic() + HANG_S
        while not await liquidation_published():
            assert time.monotonic() < deadline, "no liquidation published"
            await asyncio.sleep(0.1)
        [result] = liquidated
        bodies = [body for _, body, _ in await stream_messages(js, shard)]
        assert type(command_decoder.decode(bodies[result.seq - 1]).cmd) is Tick
        assert ("insurance", "m:lev", 50 * USDC) in [p[2:5] for p in result.postings]

        # The feeder stops: once the last quotes are older than the staleness, new risk is refused.
        stop_feeder.set()
        await tasks.pop()
        last_ts = max(command_decoder.decode(body).ts_ms
                      for _, body, name in await stream_messages(js, shard) if name == "f1")
        while time.time_ns() // 1_000_000 <= last_ts + staleness_ms + 200:
            await asyncio.sleep(0.1)
        refused = await send(order("fresh-1", "fresh", "buy", 1, BTC - 3_000 * USDC))
        assert refused.code == RiskCode.INDEX_STALE, refused
        # A feeder takes over: fresh quotes, the same order (a new id) is accepted.
        again = ShardFeeder(js, config, shard, feed, "f2", interval_ms=100)
        stop_feeder.clear()
        tasks.append(asyncio.create_task(again.run(stop_feeder)))
        await until(lambda: again.stats.rounds >= 2, "the second feeder to feed")
        assert (await send(order("fresh-2", "fresh", "buy", 1, BTC - 3_000 * USDC))).code == 0
    finally:
        stop_feeder.set()
        stop_worker.set()
        for task in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 60)
        await nc.close()


class SlowFeed(ScriptedFeed):
    """A feed whose poll takes ``delay_ms`` of the (fake) clock, like a slow exchange API."""

    def __init__(self, clock: list[int], delay_ms: int) -> None:
        super().__init__(CONFIG.indices)
        self.clock, self.delay_ms = clock, delay_ms

    def poll(self, now_ms: int) -> list[SourceQuote]:
        quotes = super().poll(now_ms)
        self.clock[0] += self.delay_ms
        return quotes


def test_feeder_slow_source_round_stamped_after_the_poll_quotes_keep_their_own_time(
        nats_cluster: LocalCluster) -> None:
    asyncio.run(_slow_source(nats_cluster.urls))


async def _slow_source(urls: list[str]) -> None:
    shard = "S" + uuid.uuid4().hex[:8].upper()
    nc = await nats.connect(servers=urls)
    try:
        js = nc.jetstream()
        await ensure_shard_topology(js, [shard])
        clock = [NOW]
        feed = SlowFeed(clock, delay_ms=3_000)
        feed.set("BTC", BTC)
        feeder = ShardFeeder(js, CONFIG, shard, feed, "slow", clock=lambda: clock[0])
        await feeder.round()
        commands = [command_decoder.decode(body) for _, body, _ in await stream_messages(js, shard)]
        assert {c.ts_ms for c in commands} == {NOW + 3_000}, "stamped when the round is appended"
        quotes = [c.cmd for c in commands if type(c.cmd) is Quote]
        assert quotes and {q.ts_ms for q in quotes} == {NOW}, "a quote keeps the time it was read"
        [tick] = [c.cmd for c in commands if type(c.cmd) is Tick]
        assert tick.now_ms == NOW + 3_000
    finally:
        await nc.close()


def test_feeder_cli_sigterm_while_nats_unreachable_exits_cleanly(tmp_path: Path) -> None:
    from exchange.stream.cluster import free_ports

    [port] = free_ports(1)  # nothing listens there
    err = tmp_path / "stderr"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with err.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from strongroom.cli import main; main()", "shard-feeder",
             "--shard", "MAIN", "--nats", f"nats://127.0.0.1:{port}", "--name", "lonely"],
            env=env, stdout=subprocess.PIPE, stderr=sink)
    try:
        deadline = time.monotonic() + HANG_S
        while b"Connect call failed" not in err.read_bytes():  # it is trying to connect
            assert proc.poll() is None, err.read_text()[-2000:]
            assert time.monotonic() < deadline, "the feeder never tried to connect"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.read_text()[-2000:]
        assert json.loads(out.decode().strip().splitlines()[-1])["feeder"] == "lonely"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
