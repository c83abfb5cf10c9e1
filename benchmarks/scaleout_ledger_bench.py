"""How far the ledger's journal head lock lets scale-out margin holds go (issue 21, "ledger scale").

Every ledger write (the gateways' margin holds, the margin worker's and
settlement's postings) appends to one hash chain and takes the chain's head
row lock until it commits. This measures the gateway's hot write, a margin
hold with its free-collateral check (`MarginLedger.reserve`), from 1, 2, 4, 8
threads, each with its own connection and its own traders, so the only thing
they share is the head lock. If throughput stays flat as threads are added,
the head lock is the bound: about 1 / (time the lock is held per write).

    python benchmarks/scaleout_ledger_bench.py --admin-url postgresql://... [--seconds 2]

`--admin-url` (or STRONGROOM_BENCH_POSTGRES_URL) names a PostgreSQL server
where a scratch database may be created and dropped.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
import uuid

from sqlalchemy import text

from custody.db import make_engine, make_session_factory, scratch_postgres_database
from custody.ledger.entry import AccountKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger
from exchange.stream.margin import HoldBatcher, MarginLedger
from strongroom.migrate import upgrade

TRADERS_PER_THREAD = 8
FUNDS = 10**15


def _run(url: str, threads: int, seconds: float, *, baseline: bool = False,
         grouped: bool = False) -> tuple[float, float, float]:
    """Return (holds/s, p50 ms, p99 ms) of `threads` threads reserving for `seconds`.

    `baseline`: each operation is instead one committed single-row INSERT into a
    table of its own (no shared row lock): what the database itself sustains.
    """
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    setup = MarginLedger(Ledger(sessions), sessions)
    src = setup.ledger.ensure_account("bench-funding", "USDC", AccountKind.EXTERNAL.value).id
    run_id = uuid.uuid4().hex[:6]
    names = [[f"b{run_id}t{t}u{u}" for u in range(TRADERS_PER_THREAD)] for t in range(threads)]
    for group in names:
        for name in group:
            setup.ledger.transfer(TransferRequest(id=f"fund.{name}", debit_account=src,
                                                  credit_account=setup.accounts(name)[0],
                                                  amount=FUNDS, asset="USDC"))
    samples: list[list[float]] = [[] for _ in range(threads)]
    batcher = HoldBatcher(setup) if grouped else None
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def work(t: int) -> None:
        own = make_engine(url)
        own_sessions = make_session_factory(own)
        margin = MarginLedger(Ledger(own_sessions), own_sessions)
        for name in names[t]:
            margin.accounts(name)  # warm the account id cache
        start.wait()
        i = 0
        while not stop.is_set():
            name = names[t][i % TRADERS_PER_THREAD]
            t0 = time.perf_counter()
            if batcher is not None:
                batcher.reserve(name, f"{name}:o{i}", 10, "BENCH-PERP")
            elif baseline:
                with own.begin() as conn:
                    conn.execute(text("INSERT INTO bench_commit (v) VALUES (:v)"), {"v": i})
            else:
                margin.reserve(name, f"{name}:o{i}", 10, "BENCH-PERP")
            samples[t].append((time.perf_counter() - t0) * 1000)
            i += 1
        own.dispose()

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - began
    if batcher is not None:
        batcher.close()
    engine.dispose()
    flat = sorted(x for s in samples for x in s)
    p99 = flat[min(len(flat) - 1, int(len(flat) * 0.99))]
    return len(flat) / elapsed, statistics.median(flat), p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default=os.environ.get("STRONGROOM_BENCH_POSTGRES_URL"))
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--threads", default="1,2,4,8")
    args = parser.parse_args()
    if not args.admin_url:
        print("scaleout_ledger_bench: skipped, --admin-url (or STRONGROOM_BENCH_POSTGRES_URL) "
              "must name a PostgreSQL server")
        return
    load = os.getloadavg()[0]
    with scratch_postgres_database(args.admin_url, f"sr_bench_hold_{os.getpid()}") as url:
        upgrade(url)
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE bench_commit (id BIGSERIAL PRIMARY KEY, v BIGINT)"))
        engine.dispose()
        print(f"load average before: {load:.1f} on {os.cpu_count()} CPUs")
        print("| threads | holds/s | p50 ms | p99 ms | grouped holds/s | p50 ms | p99 ms "
              "| plain commits/s | p50 ms | p99 ms |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for threads in (int(x) for x in args.threads.split(",")):
            row = [_run(url, threads, args.seconds), _run(url, threads, args.seconds, grouped=True),
                   _run(url, threads, args.seconds, baseline=True)]
            print(f"| {threads} | " + " | ".join(f"{r:,.0f} | {a:.1f} | {b:.1f}" for r, a, b in row)
                  + " |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
