"""End-to-end scale-out benchmark: signed REST orders -> gunicorn -> NATS R3 -> engine -> events.

    python benchmarks/scaleout_api_bench.py --database-url postgresql+psycopg://.../db \\
        [--workers 3] [--threads 8] [--clients 48] [--seconds 10] [--rate 2000]

Starts a local 3-node JetStream cluster, migrates the (empty, throwaway)
PostgreSQL database, creates traders with API keys and funds their margin,
starts `strongroom engine-worker` and `strongroom margin-worker` for BTC-PERP
and gunicorn (STRONGROOM_ROLE=api, `--workers` x `--threads`) in scale-out
mode, then offers `--rate` signed POST /api/v1/exchange/orders per second
(open loop, from `--clients` threads with keep-alive connections) for
`--seconds`. Each request: HMAC check + nonce (PostgreSQL), margin hold
(ledger, journal head lock), append (R3), wait for the engine's events.

Prints the achieved rate of answered orders and the latency percentiles (from
the moment each request was due, so queueing in the client counts), by HTTP
status. A script printing numbers, not a pass/fail test. The load generator
runs on the same (2-core) machine and competes for the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from exchange.stream.cluster import LocalCluster  # noqa: E402
from policies.request_signing import sign_request  # noqa: E402

CLI = "from strongroom.cli import main; main()"
MARKET = "BTC-PERP"
TICK = 100_000  # BTC-PERP's tick in exchange/data/market.toml
MID = 600_000 * TICK  # 60,000 USDC
START_TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([sys.executable, "-c", CLI, *args], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True)
    return out.stdout


def _traders(env: dict[str, str], n: int) -> list[tuple[str, str, str]]:
    out = []
    for i in range(n):
        name = f"bench{i}"
        text = _cli(env, "users", "create", "--username", name, "--role", "trader", "--kyc-tier", "2")
        key = re.search(r"api key id:\s+(\S+)", text)
        secret = re.search(r"api key secret:\s+(\S+)", text)
        assert key and secret, text
        out.append((name, key.group(1), secret.group(1)))
    return out


def _fund(database_url: str, names: list[str], amount: int) -> None:
    from custody.db import make_engine, make_session_factory
    from custody.ledger.entry import AccountKind
    from custody.ledger.posting import TransferRequest
    from custody.ledger.service import Ledger

    engine = make_engine(database_url)
    ledger = Ledger(make_session_factory(engine))
    src = ledger.ensure_account("bench-funding", "USDC", AccountKind.EXTERNAL.value).id
    for name in names:
        dst = ledger.ensure_account(name, "USDC", AccountKind.USER_MARGIN.value).id
        ledger.transfer(TransferRequest(id=f"bench.fund.{name}", debit_account=src,
                                        credit_account=dst, amount=amount, asset="USDC"))
    engine.dispose()


def _wait_http(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("gunicorn stopped at start")
        try:
            if requests.get(f"{base}/api/v1/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise SystemExit("gunicorn did not answer in time")


class Load:
    """Open-loop load: request i is due at start + i / rate; latency counts from then."""

    def __init__(self, base: str, traders: list[tuple[str, str, str]], rate: int,
                 seconds: float, prefix: str) -> None:
        self.base, self.traders, self.rate, self.prefix = base, traders, rate, prefix
        self.total = int(rate * seconds)
        self.next = 0
        self.lock = threading.Lock()
        self.results: list[tuple[int, float]] = []
        self.start = 0.0

    def _take(self) -> int | None:
        with self.lock:
            if self.next >= self.total:
                return None
            self.next += 1
            return self.next - 1

    def client(self) -> None:
        session = requests.Session()
        while (i := self._take()) is not None:
            due = self.start + i / self.rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            _, key_id, secret = self.traders[i % len(self.traders)]
            side = "buy" if i % 2 else "sell"
            # Prices straddle the middle: about half of the orders cross and trade.
            price = MID + TICK * ((i * 7919) % 11 - 5)
            body = json.dumps({"symbol": MARKET, "id": f"{self.prefix}{i}", "side": side, "qty": 1,
                               "price": price}).encode()
            headers = sign_request(key_id=key_id, secret=secret,
                                   timestamp_ms=int(time.time() * 1000), method="POST",
                                   path="/api/v1/exchange/orders", body=body)
            headers["Content-Type"] = "application/json"
            try:
                r = session.post(self.base + "/api/v1/exchange/orders", data=body,
                                 headers=headers, timeout=30)
                status = r.status_code
            except requests.RequestException:
                status = 0
            with self.lock:
                self.results.append((status, time.perf_counter() - due))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("STRONGROOM_DATABASE_URL"),
                        help="an empty, throwaway PostgreSQL database")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--clients", type=int, default=48)
    parser.add_argument("--traders", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=2000)
    args = parser.parse_args()
    if not args.database_url or not args.database_url.startswith("postgresql"):
        # `make bench` runs every script: without a throwaway PostgreSQL this one has nothing to do.
        print("scaleout_api_bench: skipped, --database-url (or STRONGROOM_DATABASE_URL) must name "
              "an empty PostgreSQL database")
        return
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="scaleout-api-bench-"))
    cluster = LocalCluster(tmp / "nats", 3).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        urls = ",".join(cluster.urls)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "STRONGROOM_DATA_DIR": str(tmp / "data"),
               "STRONGROOM_DATABASE_URL": args.database_url,
               "STRONGROOM_KEYSTORE_PASSPHRASE": "benchmark passphrase, not a secret",
               "STRONGROOM_EXCHANGE_FEED": "none", "STRONGROOM_EXCHANGE_NATS_URLS": urls,
               "STRONGROOM_LOG_LEVEL": "WARNING"}
        _cli(env, "migrate")
        traders = _traders(env, args.traders)
        _fund(args.database_url, [t[0] for t in traders], 10**18)
        for command in (["engine-worker", "--market", MARKET, "--tick-size", str(TICK)],
                        ["margin-worker", "--market", MARKET]):
            procs.append(subprocess.Popen([sys.executable, "-c", CLI, *command, "--nats", urls],
                                          env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        port = _free_port()
        gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or "gunicorn"
        procs.append(subprocess.Popen(
            [gunicorn, "-c", str(ROOT / "deploy" / "gunicorn.conf.py"), "strongroom.wsgi:app"],
            env={**env, "STRONGROOM_ROLE": "api", "STRONGROOM_WORKERS": str(args.workers),
                 "STRONGROOM_THREADS": str(args.threads), "STRONGROOM_BIND": f"127.0.0.1:{port}"},
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        base = f"http://127.0.0.1:{port}"
        _wait_http(base, procs[-1])
        # Warm every worker's gateway (connects lazily on the first order).
        warm = Load(base, traders, 50, 2.0, "w")
        warm.start = time.perf_counter()
        threads = [threading.Thread(target=warm.client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        load = Load(base, traders, args.rate, args.seconds, "b")
        load.start = time.perf_counter()
        threads = [threading.Thread(target=load.client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - load.start
        _report(args, load, elapsed, warm, load_before)
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _report(args: argparse.Namespace, load: Load, elapsed: float, warm: Load,
            load_before: tuple[float, float, float]) -> None:
    statuses = Counter(s for s, _ in load.results)
    ok = sorted(lat for s, lat in load.results if s in (201, 202))
    print(f"target: {args.rate} orders/s for {args.seconds:.0f} s; gunicorn {args.workers} workers "
          f"x {args.threads} threads; {args.clients} client threads; 3-node NATS (R3); "
          f"1 engine worker + 1 margin worker; PostgreSQL")
    print(f"warm-up statuses: {dict(Counter(s for s, _ in warm.results))}")
    print(f"sent {len(load.results)} in {elapsed:.2f} s; statuses {dict(statuses)}")
    print(f"achieved: {len(ok) / elapsed:.0f} orders/s answered 201/202")
    if ok:
        q = statistics.quantiles(ok, n=100) if len(ok) >= 100 else [ok[len(ok) // 2]] * 99
        print(f"latency from due time: p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms, "
              f"max {ok[-1] * 1000:.1f} ms")
    print(f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} "
          f"({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
