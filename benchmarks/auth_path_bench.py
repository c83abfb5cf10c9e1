"""What a signed order costs before the exchange code runs: signature, key, nonce, KYC limits.

    python benchmarks/auth_path_bench.py [--database-url postgresql://...] [--store db|nats]
        [--requests 2000] [--users 20] [--profile]

Builds the app in-process (PostgreSQL when ``--database-url`` names an admin
URL: a throwaway database is created and dropped; SQLite otherwise), creates
``--users`` traders with API keys, then runs ``--requests`` signed
``POST /api/v1/exchange/orders`` request contexts through exactly what the
order view does before the venue or the gateway: ``authenticate(TRADE)``
(key + secret, timestamp, HMAC, replay store) and the KYC trading limits.

``--store db`` is the embedded default (key row + keystore decrypt, nonce
INSERT, KYC read: database round trips on every request). ``--store nats``
is scale-out mode (docs/scale-out.md, "Signed requests without the
database"): it starts a local 3-node JetStream cluster and uses the
in-memory key/limits caches and the JetStream KV nonce store.

``--full`` runs whole requests instead, in shard mode (docs/scale-out.md,
"Clearing shards"): a local 3-node cluster, one shard with every instrument,
the app's shard gateway (its replica applies each order in this process),
traders funded on the shard and BTC marked; each request is a signed
``POST /api/v1/exchange/orders`` (a bid that rests) through the Flask test
client. ``--store db`` then means shard mode with the database auth path
(``AUTH_NONCE_STORE=db``), the configuration before this change.

Prints per request: CPU time of this process (µs) and of each of its threads
(the request thread, the NATS event loop), CPU time of the local nats-server
nodes, wall time (µs, p50/p99) and SQL statements executed. ``--profile`` /
``--profile-loops`` print cProfile CPU-time profiles of the request thread /
the NATS loop threads. A script printing numbers, not a pass/fail test.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import event  # noqa: E402

from custody.db import scratch_postgres_database  # noqa: E402
from custody.keystore import LocalKeystore  # noqa: E402
from exchange.instruments import DEFAULT_CONFIG  # noqa: E402
from policies.api_key import Scope  # noqa: E402
from policies.request_signing import sign_request  # noqa: E402
from policies.roles import Role  # noqa: E402
from strongroom.migrate import upgrade  # noqa: E402

ORDERS = "/api/v1/exchange/orders"
WARMUP = 200
TICK = 100_000  # BTC-PERP's tick (exchange/data/market.toml)
BTC_PRICE = 600_000 * TICK  # 60,000 USDC
MARK_EVERY_S = 2.0


@contextmanager
def _database(admin_url: str | None, tmp: Path) -> Iterator[str]:
    if admin_url is None:
        url = f"sqlite:///{tmp / 'bench.db'}"
        upgrade(url)
        yield url
        return
    with scratch_postgres_database(admin_url, f"sr_authbench_{uuid.uuid4().hex[:10]}") as url:
        upgrade(url)
        yield url


def _app(url: str, tmp: Path, store: str, nats_urls: list[str], shard: str | None) -> Any:
    from strongroom.app import create_app
    from strongroom.settings import Settings

    keystore = LocalKeystore(tmp / "keystore.srks", "benchmark passphrase, not a secret", scrypt_log2_n=10)
    config: dict[str, Any] = {"KEYSTORE": keystore, "EXCHANGE_INSTRUMENTS": DEFAULT_CONFIG,
                              "EXCHANGE_FEED": "none", "AUTH_NONCE_STORE": store,
                              "RATELIMIT_ENABLED": False}
    if store == "nats":
        config["AUTH_NATS_URLS"] = nats_urls
    if shard is not None:
        from exchange.instruments import load_instruments

        config.update(EXCHANGE_SHARD_NATS_URLS=nats_urls, EXCHANGE_DEV_MODE=True,
                      EXCHANGE_SHARDS={shard: sorted(load_instruments(DEFAULT_CONFIG).instruments)})
    return create_app(config, settings=Settings(data_dir=tmp / "data", database_url=url))


def _new_shard(urls: list[str]) -> str:
    """Create a shard's streams once the new cluster accepts R3 streams; return its name."""
    import asyncio

    import nats

    from exchange.stream.topology import ensure_shard_topology

    name = "BENCH"

    async def create() -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                nc = await nats.connect(servers=urls, connect_timeout=2)
                try:
                    await ensure_shard_topology(nc.jetstream(), [name], 3)
                    return
                finally:
                    await nc.close()
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    asyncio.run(create())
    return name


def _prepare_shard(app: Any, shard: str, keys: list[tuple[str, str, str]]) -> Callable[[], None]:
    """Fund every trader on the shard; return a function that marks BTC (as an admin, dev mode)."""
    from exchange.api.shardmode import EXTENSION as SHARDS
    from exchange.commands import Deposit
    from exchange.stream.shard.wire import ShardCommand

    gateway = app.extensions[SHARDS].get()
    now_ms = int(time.time() * 1000)
    for name, _, _ in keys:
        sent = gateway.submit(shard, "r." + uuid.uuid4().hex,
                              ShardCommand(cmd=Deposit(name, 10**12), ts_ms=now_ms))
        assert sent.result is not None and sent.result.code == 0, sent
    _, admin = app.extensions["strongroom.access"].users.create_user(
        "ops", frozenset({Role.ADMIN}), key_scopes=frozenset({Scope.READ, Scope.TRADE}))
    assert admin is not None
    client = app.test_client()

    def mark() -> None:
        # No feeder runs here: quotes older than the staleness window would halt BTC.
        for source in ("coinbase", "kraken", "bitstamp"):
            body = json.dumps({"underlying": "BTC", "source": source, "price": BTC_PRICE}).encode()
            path = "/api/v1/exchange/operator/quotes"
            headers = sign_request(key_id=admin.credentials.key_id, secret=admin.credentials.secret,
                                   timestamp_ms=int(time.time() * 1000), method="POST", path=path,
                                   body=body)
            r = client.post(path, data=body, headers=headers, content_type="application/json")
            assert r.status_code == 200, r.get_json()

    mark()
    return mark


def _full(app: Any, key: tuple[str, str, str], n: int) -> None:
    body, headers = _signed(key[1], key[2], n, price=BTC_PRICE - 100 * TICK)
    r = app.test_client().post(ORDERS, data=body, headers=headers, content_type="application/json")
    assert r.status_code == 201, r.get_json()


def _signed(key_id: str, secret: str, n: int, price: int = 100_000) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"symbol": "BTC-PERP", "id": f"o{n}", "side": "buy", "qty": 1,
                       "price": price}).encode()
    headers = sign_request(key_id=key_id, secret=secret, timestamp_ms=int(time.time() * 1000),
                           method="POST", path=ORDERS, body=body)
    return body, headers


def _one(app: Any, key: tuple[str, str, str], n: int) -> None:
    from custody.api.auth import authenticate
    from exchange.api.blueprint import trading_limits

    body, headers = _signed(key[1], key[2], n)
    with app.test_request_context(ORDERS, method="POST", data=body, headers=headers,
                                  content_type="application/json"):
        caller = authenticate(Scope.TRADE)
        assert caller.username == key[0]
        trading_limits(caller.username)


def _wait_for_nats(app: Any) -> None:
    """Connect this process to the nonce bucket once the new cluster accepts R3 streams."""
    from strongroom.auth_fast import EXTENSION, AuthStoreUnavailable

    deadline = time.monotonic() + 60
    while True:
        try:
            app.extensions[EXTENSION].bus.ensure()
            return
        except AuthStoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _profile_loops(app: Any) -> list[tuple[Any, cProfile.Profile]]:
    """Start a profiler in each NATS event-loop thread of the app (cProfile is per thread)."""
    loops = []
    holder = app.extensions.get("strongroom.exchange.shards")
    if holder is not None:
        loops.append(holder.get()._loop)
    fast = app.extensions.get("strongroom.auth_fast")
    if fast is not None and fast.bus._loop is not None and fast.bus._loop not in loops:
        loops.append(fast.bus._loop)
    out = []
    for loop in loops:
        loop_profiler = cProfile.Profile(time.thread_time)
        loop.call_soon_threadsafe(loop_profiler.enable)
        out.append((loop, loop_profiler))
    return out


def _thread_cpu() -> dict[str, float]:
    """Return CPU seconds per live thread name of this process (Linux /proc; empty elsewhere)."""
    import os
    import threading

    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        try:
            stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        name = thread.name.split(" ")[0]
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _process_cpu(pids: list[int]) -> float:
    """Return the CPU seconds the given processes have used (Linux /proc; 0 elsewhere)."""
    import os

    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run(args: argparse.Namespace) -> None:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        nats_urls: list[str] = []
        nats_pids: list[int] = []
        if args.store == "nats" or args.full:
            from exchange.stream.cluster import LocalCluster

            cluster = LocalCluster(tmp / "nats", 3).start()
            stack.callback(cluster.stop)
            nats_urls = cluster.urls
            nats_pids = [n.process.pid for n in cluster.nodes if n.process is not None]
        url = stack.enter_context(_database(args.database_url, tmp))
        shard = _new_shard(nats_urls) if args.full else None
        app = _app(url, tmp, args.store, nats_urls, shard)
        stack.callback(app.extensions["strongroom.engine"].dispose)
        if shard is not None:
            from exchange.api.shardmode import EXTENSION as SHARDS

            stack.callback(app.extensions[SHARDS].close)
        if args.store == "nats":
            from strongroom.auth_fast import EXTENSION

            stack.callback(app.extensions[EXTENSION].bus.close)
            _wait_for_nats(app)
        users = app.extensions["strongroom.access"].users
        keys = []
        for i in range(args.users):
            name = f"trader{i}"
            _, new = users.create_user(name, frozenset({Role.TRADER}), kyc_tier=2,
                                       key_scopes=frozenset({Scope.READ, Scope.TRADE}))
            assert new is not None
            keys.append((name, new.credentials.key_id, new.credentials.secret))
        mark = _prepare_shard(app, shard, keys) if shard is not None else (lambda: None)
        marked = time.monotonic()
        one = _full if shard is not None else _one
        statements = [0]
        event.listen(app.extensions["strongroom.engine"], "before_cursor_execute",
                     lambda *a: statements.__setitem__(0, statements[0] + 1))
        for n in range(WARMUP):
            if time.monotonic() - marked > MARK_EVERY_S:
                mark()
                marked = time.monotonic()
            one(app, keys[n % len(keys)], n)
        statements[0] = 0
        profiler = cProfile.Profile(time.thread_time) if args.profile else None
        walls = []
        cpu = 0.0
        threads0 = _thread_cpu()
        nats0 = _process_cpu(nats_pids)
        loop_profilers = _profile_loops(app) if args.profile_loops else []
        for n in range(args.requests):
            if time.monotonic() - marked > MARK_EVERY_S:
                mark()
                marked = time.monotonic()
            cpu0, t0 = time.process_time(), time.perf_counter()
            if profiler is not None:
                profiler.enable()
            one(app, keys[n % len(keys)], WARMUP + n)
            if profiler is not None:
                profiler.disable()
            walls.append(time.perf_counter() - t0)
            cpu += time.process_time() - cpu0
        threads1 = _thread_cpu()
        nats_cpu = _process_cpu(nats_pids) - nats0
        for loop, loop_profiler in loop_profilers:
            loop.call_soon_threadsafe(loop_profiler.disable)
        walls.sort()
        db = "postgresql" if args.database_url else "sqlite"
        what = "whole shard-mode order requests" if args.full else "auth + KYC limits only"
        print(f"store={args.store} db={db} requests={args.requests} users={args.users} ({what})")
        print(f"  cpu/request   {cpu / args.requests * 1e6:8.0f} us (this process, all threads)")
        print(f"  wall p50      {statistics.median(walls) * 1e6:8.0f} us")
        print(f"  wall p99      {walls[int(len(walls) * 0.99) - 1] * 1e6:8.0f} us")
        print(f"  SQL statements/request {statements[0] / args.requests:.2f}")
        if nats_pids:
            print(f"  nats-server   {nats_cpu / args.requests * 1e6:8.0f} us/request "
                  f"({len(nats_pids)} nodes together)")
        for name in sorted(threads1):
            spent = threads1[name] - threads0.get(name, 0.0)
            if spent > 0:
                print(f"  thread {name:<20} {spent / args.requests * 1e6:8.0f} us/request")
        if profiler is not None:
            pstats.Stats(profiler).sort_stats(args.loop_sort).print_stats(40)
        time.sleep(0.2)
        for _, loop_profiler in loop_profilers:
            pstats.Stats(loop_profiler).sort_stats(args.loop_sort).print_stats(40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=None, help="PostgreSQL admin URL (default: SQLite)")
    parser.add_argument("--store", choices=("db", "nats"), default="db")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="cProfile the request thread")
    parser.add_argument("--profile-loops", action="store_true",
                        help="cProfile the NATS event-loop threads (CPU time)")
    parser.add_argument("--loop-sort", default="tottime", help="pstats sort key of --profile-loops")
    parser.add_argument("--full", action="store_true", help="whole order requests in shard mode")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
