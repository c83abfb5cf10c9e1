"""Ledger throughput and balance-read latency on SQLite and PostgreSQL.

Prints single-transfer and batched transfers per second, and the latency of a
balance read for an account with few entries and with many (default 1M), to
show reads do not grow with history. PostgreSQL: ``STRONGROOM_BENCH_POSTGRES_URL``
or a throwaway durable cluster started by scripts/pg-throwaway.sh.

    python benchmarks/ledger_bench.py [--backend sqlite|postgres|both] [--history 1000000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from custody.db import make_engine, make_session_factory, scratch_postgres_database
from custody.ledger.entry import AccountKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import MAX_BATCH, Ledger
from strongroom.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
USERS = 1_000
FUNDING_MINOR = 10**15


@contextmanager
def postgres_url() -> Iterator[str]:
    """Yield a fresh PostgreSQL database URL (throwaway durable cluster unless configured)."""
    configured = os.environ.get("STRONGROOM_BENCH_POSTGRES_URL")
    cluster = None
    if not configured:
        cluster = tempfile.mkdtemp(prefix="strongroom-bench-pg-")
        os.rmdir(cluster)
        configured = subprocess.run(
            [str(ROOT / "scripts/pg-throwaway.sh"), "start", cluster], check=True, text=True,
            capture_output=True, env={**os.environ, "PG_DURABLE": "1"}).stdout.strip()
    try:
        with scratch_postgres_database(configured, f"sr_bench_{os.getpid()}") as url:
            yield url
    finally:
        if cluster:
            subprocess.run([str(ROOT / "scripts/pg-throwaway.sh"), "stop", cluster], check=False)


@contextmanager
def sqlite_url() -> Iterator[str]:
    """Yield a fresh SQLite database URL in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="strongroom-bench-") as tmp:
        yield f"sqlite:///{tmp}/bench.db"


def setup_ledger(url: str) -> tuple[Ledger, list[int], int]:
    """Migrate, create USERS funded user accounts and a hot wallet; return (ledger, users, wallet)."""
    upgrade(url)
    ledger = Ledger(make_session_factory(make_engine(url)))
    wallet = ledger.create_account("platform", "USDC", AccountKind.HOT_WALLET).id
    users = [ledger.create_account(f"u{i}", "USDC", AccountKind.USER_AVAILABLE).id
             for i in range(USERS)]
    ledger.submit([TransferRequest(id=f"fund-{u}", debit_account=wallet, credit_account=u,
                                   amount=FUNDING_MINOR) for u in users])
    return ledger, users, wallet


def bench_single(ledger: Ledger, users: list[int], count: int) -> tuple[float, float, float]:
    """Return transfers/s, median and p99 ms when every transfer is its own durable transaction."""
    samples = []
    start = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter_ns()
        ledger.transfer(TransferRequest(id=f"s{i}", debit_account=users[i % USERS],
                                        credit_account=users[(i * 7 + 1) % USERS], amount=1))
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    rate = count / (time.perf_counter() - start)
    samples.sort()
    return rate, statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def bench_batched(ledger: Ledger, users: list[int], count: int, batch: int, tag: str) -> tuple[float, float]:
    """Return (wall, CPU) transfers/s for unlinked batches of ``batch`` transfers, median over batches.

    CPU is this process's own time: all of it on SQLite (in-process), the client's share
    (validation, entry bytes, hashing, rows) on PostgreSQL.
    """
    walls, cpus = [], []
    for base in range(0, count, batch):
        requests = [
            TransferRequest(id=f"{tag}{i}", debit_account=users[i % USERS],
                            credit_account=users[(i * 7 + 1) % USERS], amount=1)
            for i in range(base, min(base + batch, count))
        ]
        started, cpu_started = time.perf_counter(), time.process_time()
        results = ledger.submit(requests)
        walls.append(len(requests) / (time.perf_counter() - started))
        cpus.append(len(requests) / max(time.process_time() - cpu_started, 1e-9))
        assert all(r.ok for r in results)
    return statistics.median(walls), statistics.median(cpus)


def balance_read_us(ledger: Ledger, account: int, reads: int = 2_000) -> tuple[float, float]:
    """Return (median, p99) microseconds of a balance read."""
    samples = []
    for _ in range(reads):
        start = time.perf_counter_ns()
        ledger.balance(account)
        samples.append((time.perf_counter_ns() - start) / 1_000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)]


def grow_history(ledger: Ledger, hot: int, users: list[int], entries: int) -> None:
    """Give account ``hot`` ``entries`` journal entries (batched transfers to other users)."""
    for base in range(0, entries, MAX_BATCH):
        ledger.submit([
            TransferRequest(id=f"h{i}", debit_account=hot, credit_account=users[1 + i % (USERS - 1)],
                            amount=1)
            for i in range(base, min(base + MAX_BATCH, entries))
        ])


def run(backend: str, url: str, args: argparse.Namespace) -> None:
    """Run every measurement on one backend and print the figures."""
    ledger, users, _ = setup_ledger(url)
    single, single_med, single_p99 = bench_single(ledger, users, args.single)
    batched, batched_cpu = bench_batched(ledger, users, args.batched, args.batch, "b")
    print(f"[{backend}] single transfers (one durable tx each): {single:,.0f} transfers/s "
          f"({args.single:,}), latency median {single_med:.2f} ms, p99 {single_p99:.2f} ms")
    print(f"[{backend}] batched transfers ({args.batch}/tx): median {batched:,.0f} transfers/s wall, "
          f"{batched_cpu:,.0f} transfers/s of this process's CPU ({args.batched:,})")
    if args.only_writes:
        return
    hot = users[0]
    small_med, small_p99 = balance_read_us(ledger, users[5])
    history_before = ledger.head()[0]
    start = time.perf_counter()
    grow_history(ledger, hot, users, args.history)
    grow_s = time.perf_counter() - start
    big_med, big_p99 = balance_read_us(ledger, hot)
    print(f"[{backend}] history load: {args.history:,} entries on one account in {grow_s:.1f}s "
          f"({args.history / grow_s:,.0f} transfers/s, journal {history_before:,} -> "
          f"{ledger.head()[0]:,})")
    print(f"[{backend}] balance read, account with ~{args.batched // USERS * 2:,} entries: "
          f"median {small_med:.0f} us, p99 {small_p99:.0f} us")
    print(f"[{backend}] balance read, account with {args.history:,}+ entries: "
          f"median {big_med:.0f} us, p99 {big_p99:.0f} us")


def main() -> None:
    """Parse arguments and run the benchmark on the chosen backends."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--single", type=int, default=2_000)
    parser.add_argument("--batched", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=MAX_BATCH)
    parser.add_argument("--history", type=int, default=1_000_000)
    parser.add_argument("--only-writes", action="store_true",
                        help="skip the history load and balance reads (a short run on a shared machine)")
    args = parser.parse_args()
    if args.backend in ("sqlite", "both"):
        with sqlite_url() as url:
            run("sqlite", url, args)
    if args.backend in ("postgres", "both"):
        with postgres_url() as url:
            run("postgres", url, args)


if __name__ == "__main__":
    main()
