"""`strongroom halt market|breaker --shard NAME --nats URLS`: kill switches of a clearing shard."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

from click.testing import CliRunner

from exchange.commands import Deposit, Place
from exchange.engine.messages import NewOrder
from exchange.instruments import load_instruments
from exchange.risk.codes import RiskCode
from exchange.stream.cluster import LocalCluster
from exchange.stream.shard.oneshot import append_and_wait_result
from exchange.stream.shard.wire import ShardCommand
from exchange.stream.shard.worker import run_shard_worker
from strongroom.cli import main
from tests.exchange.shard.worker_flow import ready_shards
from tests.strongroom.test_cli import admins, env  # noqa: F401  (fixtures)

CONFIG = load_instruments()
WAIT_S = 120.0


def test_cli_halt_market_shard_mode_leader_refuses_in_stream_order_then_reopens(
        nats_cluster: LocalCluster, env: dict[str, str], admins: dict[str, str]) -> None:  # noqa: F811
    import nats

    shard = "H" + uuid.uuid4().hex[:8].upper()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(WAIT_S)  # type: ignore[arg-type]

    async def prepare() -> None:
        nc = await nats.connect(servers=nats_cluster.urls)
        await ready_shards(nc.jetstream(), [shard])
        await nc.close()
    run(prepare())
    stop = asyncio.Event()
    worker = asyncio.run_coroutine_threadsafe(
        run_shard_worker(nats_cluster.urls, CONFIG, shard, name="cli", stop=stop), loop)
    urls = ",".join(nats_cluster.urls)
    now = int(time.time() * 1000)

    def order(oid: str) -> tuple[int, object]:
        place = Place("BTC-PERP", NewOrder(oid, "alice", "buy", 1, price=60_000_000_000,
                                           ts=now * 1_000_000))
        return run(append_and_wait_result(nats_cluster.urls, shard, oid,  # type: ignore[return-value]
                                          ShardCommand(place, now), WAIT_S))
    try:
        run(append_and_wait_result(nats_cluster.urls, shard, "r.dep",
                                   ShardCommand(Deposit("alice", 10_000_000_000), now), WAIT_S))
        runner = CliRunner()
        done = runner.invoke(main, ["halt", "market", "BTC-PERP", "--mode", "halted", "--by", "boss1",
                                    "--reason", "drill", "--nats", urls, "--shard", shard], env=env)
        assert done.exit_code == 0, done.output + done.stderr
        out = json.loads(done.output)
        assert out["applied"] is True and out["shard"] == shard and out["mode"] == "halted", out
        _, refused = order("alice:1")
        assert refused is not None and refused.code == RiskCode.MARKET_HALTED  # type: ignore[attr-defined]
        reopened = runner.invoke(main, ["halt", "market", "BTC-PERP", "--mode", "open", "--by", "boss1",
                                        "--nats", urls, "--shard", shard], env=env)
        assert reopened.exit_code == 0, reopened.output + reopened.stderr
        _, after = order("alice:2")
        assert after is not None and after.code != RiskCode.MARKET_HALTED  # type: ignore[attr-defined]
        bad = runner.invoke(main, ["halt", "breaker", "BTC-PERP", "--max-move-bps", "99999",
                                   "--by", "boss1", "--nats", urls, "--shard", shard], env=env)
        assert bad.exit_code == 1 and json.loads(bad.stderr)["code"] == 2023
        unknown = runner.invoke(main, ["halt", "market", "NOPE-PERP", "--mode", "halted", "--by", "boss1",
                                       "--nats", urls, "--shard", shard], env=env)
        assert unknown.exit_code == 1 and json.loads(unknown.stderr)["code"] != 0
    finally:
        loop.call_soon_threadsafe(stop.set)
        worker.result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
