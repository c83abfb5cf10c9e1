"""End-to-end clearing-shard benchmark: signed REST orders -> gunicorn -> NATS R3 -> shard worker.

    python benchmarks/shard_api_bench.py --admin-url postgresql://.../postgres \\
        [--rate 2000] [--seconds 5] [--configs gthread:2x8,sync:3x1] [--gen-procs 1]
    python benchmarks/shard_api_bench.py --mode auth ...   # gunicorn + Flask + signed auth only

`--admin-url` (or STRONGROOM_BENCH_POSTGRES_URL) names a PostgreSQL server where
a scratch database is created and dropped (or `--database-url`: an empty,
throwaway database). Shard mode (`--mode shard`, the default) starts a local
3-node JetStream cluster, `strongroom shard-worker --shard MAIN`, `strongroom
shard-settlement` (writes the postings to PostgreSQL) and, per gunicorn
configuration, gunicorn in shard mode (STRONGROOM_EXCHANGE_SHARD_NATS_URLS):
each API worker process runs a read replica of the shard and answers its own
orders from it. Index prices come from `strongroom shard-feeder` with
`--feeder`, else from this script (three quotes and a tick per second
appended to the shard stream). Traders get a spot balance in the ledger and
move it to collateral through the REST API (`POST /collateral/deposit`).

Then `--rate` signed `POST /api/v1/exchange/orders` per second for `--seconds`,
open loop (benchmarks/http_load.py): requests are built and signed before the
clock starts (timestamp = due time, inside the 5 s auth window) and written to
raw keep-alive HTTP/1.1 connections from asyncio in `--gen-procs` forked
processes, latency counted from each request's due time. Orders come in
pairs: one rests at the index price, the next (another trader, same size)
crosses it; the resting side alternates, so positions stay bounded and about
half the orders trade.

`--mode auth` measures the floor under every signed request: signed `GET
/api/v1/me` (HMAC check, replay cache, user lookup) through the same gunicorn
configurations, no NATS. Both modes report, per configuration: answered
requests/s, p50/p99/p99.9 from due time, status codes, and the CPU seconds of
each process group during the run (gunicorn master + workers, shard worker,
settlement, NATS nodes, the load generator) with CPU ms per answered request.
A script printing numbers, not a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from http_load import CpuMeter, Outcome, Signer, prepare_signed, run_processes, tree_pids  # noqa: E402

from policies.request_signing import sign_request  # noqa: E402

CLI = "from strongroom.cli import main; main()"
SHARD = "MAIN"
SYMBOL = "BTC-PERP"
USDC = 1_000_000
BTC = 60_000 * USDC  # index price, USDC minor units per BTC
TICK = 100_000  # BTC-PERP tick (exchange/data/market.toml)
SOURCES = ("coinbase", "kraken", "bitstamp")
ORDERS_PATH = "/api/v1/exchange/orders"
ME_PATH = "/api/v1/me"
START_TIMEOUT_S = 180.0
SPOT_USDC = 100_000_000 * USDC
COLLATERAL_USDC = 50_000_000 * USDC


@dataclass(frozen=True)
class GunicornConfig:
    """One gunicorn configuration of the sweep: worker class, workers x threads."""

    worker_class: str
    workers: int
    threads: int

    @classmethod
    def parse(cls, text: str) -> GunicornConfig:
        kind, _, shape = text.partition(":")
        workers, _, threads = shape.partition("x")
        config = cls(kind, int(workers), int(threads or 1))
        if kind not in ("sync", "gthread") or config.workers < 1 or config.threads < 1:
            raise ValueError(f"gunicorn config was {text!r}, must be sync:<W>x1 or gthread:<W>x<T>")
        if kind == "sync" and config.threads != 1:
            raise ValueError(f"{text}: sync workers have one thread")
        return config

    def __str__(self) -> str:
        return f"{self.worker_class}:{self.workers}x{self.threads}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def scratch_database(args: argparse.Namespace) -> Iterator[str | None]:
    """Yield the database URL to use: --database-url, else a scratch one on --admin-url."""
    if args.database_url:
        yield args.database_url
        return
    if not args.admin_url:
        yield None
        return
    from custody.db import scratch_postgres_database

    admin = args.admin_url.replace("postgresql://", "postgresql+psycopg://", 1)
    with scratch_postgres_database(admin, f"sr_shard_bench_{uuid.uuid4().hex[:10]}") as url:
        yield url


def create_traders(n: int) -> list[Signer]:
    """Create `n` traders (KYC tier 2) with trade-scoped API keys, in this process."""
    from custody.access.users import parse_roles, parse_scopes
    from strongroom.commands.access import services

    svc = services()
    svc.policies.ensure_default()
    out = []
    for i in range(n):
        user, key = svc.users.create_user(f"bench{i}", parse_roles(("trader",)), kyc_tier=2, actor="bench",
                                          key_scopes=parse_scopes(("read", "trade")))
        assert key is not None
        out.append(Signer(user.username, key.credentials.key_id, key.credentials.secret))
    return out


def fund_spot(database_url: str, names: list[str], amount: int) -> None:
    """Give each trader a spot USDC balance (user_available) from an external account."""
    from custody.db import make_engine, make_session_factory
    from custody.ledger.entry import AccountKind
    from custody.ledger.posting import TransferRequest
    from custody.ledger.service import Ledger

    engine = make_engine(database_url)
    ledger = Ledger(make_session_factory(engine))
    src = ledger.ensure_account("bench-funding", "USDC", AccountKind.EXTERNAL.value).id
    for name in names:
        dst = ledger.ensure_account(name, "USDC", AccountKind.USER_AVAILABLE.value).id
        ledger.transfer(TransferRequest(id=f"bench.spot.{name}", debit_account=src, credit_account=dst,
                                        amount=amount, asset="USDC"))
    engine.dispose()


def signed_call(port: int, signer: Signer, method: str, path: str, body: dict[str, object] | None
                ) -> tuple[int, str]:
    """One signed request (setup only), on a fresh connection."""
    data = json.dumps(body).encode() if body is not None else b""
    headers = sign_request(key_id=signer.key_id, secret=signer.secret, timestamp_ms=int(time.time() * 1000),
                           method=method, path=path, body=data)
    if data:
        headers["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


async def _ensure_topology(urls: list[str]) -> None:
    """Create the shard's streams and stores (R3) before anything appends, retrying while the
    new cluster elects its meta leader."""
    import nats

    from exchange.stream.topology import ensure_shard_topology

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        nc = None
        try:
            nc = await nats.connect(servers=urls, connect_timeout=2)
            await ensure_shard_topology(nc.jetstream(), [SHARD], 3)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
        finally:
            if nc is not None:
                await nc.close()


class PriceFeed:
    """Append three index quotes and a tick to the shard stream every second (no feeder)."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.stop = threading.Event()
        self.appended = 0
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        import nats

        from exchange.commands import Quote, Tick
        from exchange.stream.shard.wire import ShardCommand, encode_command, shard_subject

        nc = await nats.connect(servers=self.urls)
        js = nc.jetstream()
        try:
            while not self.stop.is_set():
                now_ms = int(time.time() * 1000)
                ops = [Quote("BTC", s, BTC, now_ms) for s in SOURCES] + [Tick("BTC", now_ms)]
                for k, op in enumerate(ops):
                    with contextlib.suppress(Exception):  # a missed round only ages the index
                        await js.publish(shard_subject(SHARD), encode_command(ShardCommand(op, now_ms)),
                                         timeout=5.0, headers={"Nats-Msg-Id": f"r.benchfeed.{now_ms}.{k}"})
                        self.appended += 1
                await asyncio.sleep(1.0)
        finally:
            await nc.close()

    def start(self) -> PriceFeed:
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def order_bodies(n: int, traders: int, prefix: str) -> list[tuple[int, bytes]]:
    """Return (trader index, body) of n orders: pairs of a resting order and one that fills it."""
    out = []
    for i in range(n):
        pair, second = divmod(i, 2)
        rest_side = "buy" if (pair // max(1, traders // 2)) % 2 == 0 else "sell"
        if not second:
            trader, side, price = (2 * pair) % traders, rest_side, BTC
        else:
            trader = (2 * pair + 1) % traders
            side = "sell" if rest_side == "buy" else "buy"
            price = BTC + 5 * TICK if side == "buy" else BTC - 5 * TICK
        body = {"symbol": SYMBOL, "id": f"{prefix}{i}", "side": side, "qty": 1 + pair % 4, "price": price}
        out.append((trader, json.dumps(body, separators=(",", ":")).encode()))
    return out


def build_requests(mode: str, signers: list[Signer], n: int, prefix: str, port: int, start_wall_s: float,
                   rate: float) -> list[bytes]:
    """Pre-build and pre-sign every request of one run."""
    host = f"127.0.0.1:{port}"
    if mode == "auth":
        return prepare_signed(host, "GET", ME_PATH, [b""] * n, signers, start_wall_s, rate)
    bodies = order_bodies(n, len(signers), prefix)
    # prepare_signed signs request i as signer i % len: line the bodies up with their traders.
    ordered = [signers[t] for t, _ in bodies]
    out = []
    for i, (_, body) in enumerate(bodies):
        out += prepare_signed(host, "POST", ORDERS_PATH, [body], [ordered[i]], start_wall_s + i / rate, rate)
    return out


class Stack:
    """The processes under test (NATS cluster, shard processes, gunicorn) and their CPU groups."""

    def __init__(self, args: argparse.Namespace, tmp: Path, database_url: str) -> None:
        self.args, self.tmp, self.database_url = args, tmp, database_url
        self.cluster = None
        self.shard_procs: dict[str, subprocess.Popen[bytes]] = {}
        self.gunicorn: subprocess.Popen[bytes] | None = None
        self.feed: PriceFeed | None = None
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "STRONGROOM_DATA_DIR": str(tmp / "data"),
                    "STRONGROOM_DATABASE_URL": database_url,
                    "STRONGROOM_KEYSTORE_PASSPHRASE": "benchmark passphrase, not a secret",
                    "STRONGROOM_EXCHANGE_FEED": "none", "STRONGROOM_LOG_LEVEL": "WARNING"}

    def start_shards(self) -> None:
        from exchange.stream.cluster import LocalCluster

        self.cluster = LocalCluster(self.tmp / "nats", 3).start()
        asyncio.run(_ensure_topology(self.cluster.urls))
        urls = ",".join(self.cluster.urls)
        self.env["STRONGROOM_EXCHANGE_SHARD_NATS_URLS"] = urls
        commands = {"shard-worker": ["shard-worker", "--shard", SHARD, "--name", "bench-leader"],
                    "shard-settlement": ["shard-settlement", "--shard", SHARD]}
        if self.args.feeder:
            commands["shard-feeder"] = ["shard-feeder", "--shard", SHARD]
        for name, command in commands.items():
            log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
            self.shard_procs[name] = subprocess.Popen([sys.executable, "-c", CLI, *command, "--nats", urls],
                                                      env=self.env, cwd=ROOT, stdout=log, stderr=log)
            log.close()
        if not self.args.feeder:
            self.feed = PriceFeed(self.cluster.urls).start()
        time.sleep(1.0)
        self.check_alive()

    def check_alive(self) -> None:
        """Stop the run with the process's log if a shard process exited."""
        for name, proc in self.shard_procs.items():
            if proc.poll() is not None:
                tail = (self.tmp / f"{name}.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"{name} exited with {proc.returncode}:\n{tail}")

    def start_gunicorn(self, config: GunicornConfig) -> int:
        port = _free_port()
        gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or "gunicorn"
        log = open(self.tmp / f"gunicorn-{config.worker_class}-{config.workers}x{config.threads}.log", "wb")  # noqa: SIM115
        self.gunicorn = subprocess.Popen(
            [gunicorn, "-c", str(ROOT / "deploy" / "gunicorn.conf.py"), "-k", config.worker_class,
             "--workers", str(config.workers), "--threads", str(config.threads), "strongroom.wsgi:app"],
            env={**self.env, "STRONGROOM_ROLE": "api", "STRONGROOM_BIND": f"127.0.0.1:{port}"},
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.gunicorn.poll() is not None:
                raise SystemExit(f"gunicorn stopped at start; see {log.name}")
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/api/v1/health")
                if conn.getresponse().status == 200:
                    conn.close()
                    return port
            time.sleep(0.3)
        raise SystemExit("gunicorn did not answer in time")

    def stop_gunicorn(self) -> None:
        if self.gunicorn is not None:
            self.gunicorn.send_signal(signal.SIGTERM)
            try:
                self.gunicorn.wait(30)
            except subprocess.TimeoutExpired:
                self.gunicorn.kill()
                self.gunicorn.wait()
            self.gunicorn = None

    def meter(self) -> CpuMeter:
        gunicorn = self.gunicorn
        trees = {"gunicorn": lambda: tree_pids(gunicorn.pid) if gunicorn else []}
        for name, proc in self.shard_procs.items():
            trees[name] = lambda proc=proc: tree_pids(proc.pid)
        if self.cluster is not None:
            nodes = [n.process.pid for n in self.cluster.nodes if n.process is not None]
            trees["nats (3 nodes)"] = lambda: list(nodes)
        return CpuMeter(trees)

    def close(self) -> None:
        self.stop_gunicorn()
        if self.feed is not None:
            self.feed.close()
        for proc in self.shard_procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.shard_procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.cluster is not None:
            self.cluster.stop()


def deposit_collateral(port: int, signers: list[Signer]) -> Counter[int]:
    """Move each trader's collateral in through the REST API (ledger reservation + FundedDeposit)."""
    statuses: Counter[int] = Counter()
    for signer in signers:
        status, text = signed_call(port, signer, "POST", "/api/v1/exchange/collateral/deposit",
                                   {"amount": COLLATERAL_USDC})
        statuses[status] += 1
        if status != 200:
            print(f"collateral deposit for {signer.name}: {status} {text[:300]}", file=sys.stderr)
    return statuses


def run_load(stack: Stack, port: int, signers: list[Signer], rate: float, seconds: float, prefix: str,
             measure: bool) -> tuple[Outcome, list[float], dict[str, float], float]:
    """Build, sign and send one open-loop run; return outcome, generator CPU, server CPU, duration."""
    n = max(1, int(rate * seconds))
    t_build = time.perf_counter()
    # Sign against a start a little ahead; signing cost per request is measured on the way.
    estimate = 0.00005 * n + 1.0
    start_wall = time.time() + estimate
    requests = build_requests(stack.args.mode, signers, n, prefix, port, start_wall, rate)
    built_s = time.perf_counter() - t_build
    if time.time() > start_wall:  # signing took longer than estimated: start now, shifted
        start_wall = time.time() + 0.2
    meter = stack.meter()
    meter.start()
    outcome, cpus = run_processes("127.0.0.1", port, requests, rate, start_wall, stack.args.connections,
                                  stack.args.gen_procs, stack.tmp)
    used = meter.stop() if measure else {}
    if measure:
        print(f"  pre-built and signed {n} requests in {built_s:.2f} s ({1e6 * built_s / n:.0f} us each)")
    return outcome, cpus, used, time.time() - start_wall


def report(config: GunicornConfig, rate: float, seconds: float, outcome: Outcome, gen_cpus: list[float],
           used: dict[str, float], duration: float) -> dict[str, object]:
    statuses = Counter(s for _, s, _ in outcome.results)
    ok = sorted(lat for _, s, lat in outcome.results if s in (200, 201, 202))
    answered = len(ok) / max(duration, 1e-9)

    def q(p: float) -> float:
        return 1000 * ok[min(len(ok) - 1, int(p * len(ok)))] if ok else float("nan")

    server_cpu = sum(used.values())
    row = {"config": str(config), "offered_per_s": rate, "answered_per_s": round(answered),
           "p50_ms": round(q(0.50), 1), "p99_ms": round(q(0.99), 1), "p999_ms": round(q(0.999), 1),
           "max_ms": round(1000 * ok[-1], 1) if ok else None, "statuses": dict(statuses),
           "connects": outcome.connects, "errors": outcome.errors,
           "cpu_s": {k: round(v, 2) for k, v in used.items()},
           "cpu_ms_per_answer": {k: round(1000 * v / max(1, len(ok)), 2) for k, v in used.items()},
           "server_cpu_ms_per_answer": round(1000 * server_cpu / max(1, len(ok)), 2),
           "generator_cpu_s": [round(c, 2) for c in gen_cpus],
           "generator_cpu_ms_per_request": round(1000 * sum(gen_cpus) / max(1, len(outcome.results)), 3),
           "run_s": round(duration, 2)}
    print(json.dumps(row))
    for i, body in sorted(outcome.bodies.items())[:3]:
        print(f"  e.g. request {i}: {body[:200]!r}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("shard", "auth"), default="shard")
    parser.add_argument("--admin-url", default=os.environ.get("STRONGROOM_BENCH_POSTGRES_URL"),
                        help="PostgreSQL server URL where a scratch database may be created")
    parser.add_argument("--database-url", default=None, help="an empty, throwaway PostgreSQL database")
    parser.add_argument("--configs", default="gthread:2x8",
                        help="gunicorn configurations to sweep, e.g. sync:3x1,gthread:2x8,gthread:4x4")
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup-seconds", type=float, default=3.0)
    parser.add_argument("--traders", type=int, default=256,
                        help="traders (API keys): at 2,000/s each signs ~8 requests/s, under the "
                             "per-key limit of 600 a minute per process")
    parser.add_argument("--connections", type=int, default=256,
                        help="keep-alive connections in all, each from its own loopback address")
    parser.add_argument("--gen-procs", type=int, default=1, help="load generator processes")
    parser.add_argument("--feeder", action="store_true", help="prices from strongroom shard-feeder")
    args = parser.parse_args()
    configs = [GunicornConfig.parse(c) for c in args.configs.split(",") if c]
    with scratch_database(args) as database_url:
        if database_url is None or not database_url.startswith("postgresql"):
            print("shard_api_bench: skipped, give --admin-url (or STRONGROOM_BENCH_POSTGRES_URL) or "
                  "--database-url naming PostgreSQL")
            return
        bench(args, configs, database_url)


def bench(args: argparse.Namespace, configs: list[GunicornConfig], database_url: str) -> None:
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="shard-api-bench-"))
    stack = Stack(args, tmp, database_url)
    rows = []
    try:
        subprocess.run([sys.executable, "-c", CLI, "migrate"], env=stack.env, cwd=ROOT, check=True,
                       capture_output=True)
        os.environ.update({k: v for k, v in stack.env.items() if k.startswith("STRONGROOM_")})
        signers = create_traders(args.traders)
        if args.mode == "shard":
            fund_spot(database_url, [s.name for s in signers], SPOT_USDC)
            stack.start_shards()
        print(f"mode {args.mode}; {args.traders} traders; {args.connections} connections from "
              f"{args.gen_procs} generator process(es); 2 cores shared; load average "
              f"{load_before[0]:.1f} before")
        for k, config in enumerate(configs):
            port = stack.start_gunicorn(config)
            if args.mode == "shard" and k == 0:
                print(f"collateral deposits: {dict(deposit_collateral(port, signers))}")
            if args.mode == "shard":
                stack.check_alive()
            # Warm every worker (a shard replica bootstraps on its process's first request).
            run_load(stack, port, signers, 40.0, args.warmup_seconds, f"w{k}-", measure=False)
            outcome, gen_cpus, used, duration = run_load(stack, port, signers, args.rate, args.seconds,
                                                         f"b{k}-", measure=True)
            rows.append(report(config, args.rate, args.seconds, outcome, gen_cpus, used, duration))
            stack.stop_gunicorn()
        if len(rows) > 1:
            best = max(rows, key=lambda r: (r["answered_per_s"], -float(r["p99_ms"] or 1e9)))
            print(f"best on {os.cpu_count()} cores: {best['config']} ({best['answered_per_s']}/s answered, "
                  f"p99 {best['p99_ms']} ms)")
    finally:
        stack.close()
        print(f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} "
              f"({os.cpu_count()} cores)")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
