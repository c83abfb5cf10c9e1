"""`strongroom halt market --nats`: the kill switch from the command line in scale-out mode."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

from click.testing import CliRunner
from scaleout_helpers import event_batches, ready_topology

from exchange.engine.instrument import Instrument
from exchange.engine.messages import NewOrder
from exchange.stream.cluster import LocalCluster
from exchange.stream.publisher import CommandPublisher
from exchange.stream.worker import run_worker
from strongroom.cli import main
from tests.strongroom.test_cli import admins, env  # noqa: F401  (fixtures)


def test_cli_halt_market_scaleout_mode_engine_refuses_in_stream_order_then_reopens(
        nats_cluster: LocalCluster, env: dict[str, str], admins: dict[str, str]) -> None:  # noqa: F811
    import nats

    symbol = "C" + uuid.uuid4().hex[:8].upper()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(120)  # type: ignore[arg-type]

    async def connect() -> object:
        nc = await nats.connect(servers=nats_cluster.urls)
        await ready_topology(nc.jetstream(), [symbol])
        return nc
    nc = run(connect())
    js = nc.jetstream()  # type: ignore[attr-defined]
    stop = asyncio.Event()
    engine = asyncio.run_coroutine_threadsafe(
        run_worker(nats_cluster.urls, Instrument(symbol), name="cli", stop=stop), loop)
    urls = ",".join(nats_cluster.urls)
    try:
        runner = CliRunner()
        done = runner.invoke(main, ["halt", "market", symbol, "--mode", "halted", "--by", "boss1",
                                    "--reason", "drill", "--nats", urls], env=env)
        assert done.exit_code == 0, done.output + done.stderr
        out = json.loads(done.output)
        assert out["applied"] is True and out["status"]["mode"] == "halted", out
        order = NewOrder(id="o1", account="a", side="buy", qty=1, price=100,
                         ts=time.time_ns())
        run(CommandPublisher(js, {symbol}).append(symbol, "o1", order))
        reopened = runner.invoke(main, ["halt", "market", symbol, "--mode", "open", "--by", "boss1",
                                        "--nats", urls], env=env)
        assert reopened.exit_code == 0 and json.loads(reopened.output)["status"] is None
        events = [(c.seq, [type(e).__name__ for e in c.events])
                  for b in run(event_batches(js, symbol)) for c in b.commands]  # type: ignore[attr-defined]
        assert events == [(1, []), (2, ["Rejected"]), (3, [])]
        bad = runner.invoke(main, ["halt", "breaker", symbol, "--max-move-bps", "99999",
                                   "--by", "boss1", "--nats", urls], env=env)
        assert bad.exit_code == 1 and json.loads(bad.stderr)["code"] == 2023
    finally:
        loop.call_soon_threadsafe(stop.set)
        engine.result(60)
        run(nc.close())  # type: ignore[attr-defined]
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
