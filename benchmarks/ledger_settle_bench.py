"""Settlement postings/s through the one hash-chained journal (issue 21, clearing shards).

With clearing shards the ledger leaves the order path: each shard's settlement
consumer writes the venue's postings in linked batches (``Ledger.submit(...,
linked=True)``), one writer per shard, all appending to the single journal and
so all taking its head row lock. This measures postings/s and the latency of
one batch submit for linked batches of 1, 16, 64, 256, 1024 postings, with 1
and 2 concurrent writers (two shards' settlement *processes*, each with its own
accounts, so the only thing they share is the head lock).

The postings are exchange-like, per simulated order of a trader: the void of the
trader's previous margin hold and a new hold (pending ``m: -> h:``), a fee
(single ``m: -> fees``), realised PnL (single ``m: <-> clearing``), and for every
eighth order a collateral deposit (pending ``a: -> m:``, then its post): 4.25
postings per order, so 2,000 orders/s need about 8,500 postings/s. Each cell also
gives the CPU per posting of the writers and (PostgreSQL on this machine) of their
database backends: on a loaded machine it moves far less than wall time.

    python benchmarks/ledger_settle_bench.py [--no-sqlite] [--admin-url URL | --database-url URL]
        [--batches 1,16,64,256,1024] [--writers 1,2] [--seconds 1.5] [--profile BATCH]

``--admin-url`` (or STRONGROOM_BENCH_POSTGRES_URL): a PostgreSQL server where a
scratch database is created and dropped; ``--database-url``: an empty PostgreSQL
database to migrate and use. SQLite runs on a temporary file (WAL, synchronous
FULL, as shipped) unless ``--no-sqlite``. ``--profile BATCH`` prints a cProfile
of one writer submitting batches of BATCH instead, with the statements it sends
per batch.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing as mp
import os
import pstats
import queue
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from sqlalchemy import text

from custody.db import make_engine, make_session_factory, scratch_postgres_database
from custody.ledger.entry import AccountKind, TransferKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger
from strongroom.migrate import upgrade

TRADERS = 64
FUNDS = 10**15
ACTOR = "service:bench-settle"


def _owner(writer: int, name: str) -> str:
    return f"s{writer}.{name}"


def setup_accounts(ledger: Ledger, writer: int) -> dict[str, int]:
    """Create (or find) writer ``writer``'s shard accounts and fund its traders' spot balances."""
    ids: dict[str, int] = {}
    ids["fees"] = ledger.ensure_account(_owner(writer, "platform"), "USDC", AccountKind.FEES.value).id
    ids["clearing"] = ledger.ensure_account(_owner(writer, "clearing"), "USDC",
                                            AccountKind.USER_MARGIN.value).id
    src = ledger.ensure_account(_owner(writer, "funding"), "USDC", AccountKind.EXTERNAL.value).id
    funding = []
    for t in range(TRADERS):
        owner = _owner(writer, f"t{t}")
        ids[f"m{t}"] = ledger.ensure_account(owner, "USDC", AccountKind.USER_MARGIN.value).id
        ids[f"h{t}"] = ledger.ensure_account(owner, "USDC", AccountKind.USER_HELD.value).id
        ids[f"a{t}"] = ledger.ensure_account(owner, "USDC", AccountKind.USER_AVAILABLE.value).id
        funding.append(TransferRequest(id=f"fund.{writer}.{t}", debit_account=src,
                                       credit_account=ids[f"a{t}"], amount=FUNDS, asset="USDC"))
    assert all(r.ok for r in ledger.submit(funding, actor=ACTOR))
    return ids


def postings(ids: dict[str, int], tag: str) -> Iterator[TransferRequest]:
    """Yield an endless exchange-like posting stream over one writer's accounts (ids unique by tag)."""
    holds: dict[int, str] = {}
    order = 0
    while True:
        t = order % TRADERS
        m, h = ids[f"m{t}"], ids[f"h{t}"]
        previous = holds.get(t)
        if previous is not None:
            yield TransferRequest(id=f"{tag}.hv.{order}", kind=TransferKind.VOID, pending_id=previous,
                                  code=7)
        holds[t] = hold = f"{tag}.h.{order}"
        yield TransferRequest(id=hold, kind=TransferKind.PENDING, debit_account=m, credit_account=h,
                              amount=100 + order % 50, asset="USDC", code=7)
        yield TransferRequest(id=f"{tag}.f.{order}", debit_account=m, credit_account=ids["fees"],
                              amount=3, asset="USDC", code=7)
        pnl = (m, ids["clearing"]) if order % 2 else (ids["clearing"], m)
        yield TransferRequest(id=f"{tag}.p.{order}", debit_account=pnl[0], credit_account=pnl[1],
                              amount=17, asset="USDC", code=7)
        if order % 8 == 0:
            deposit = f"{tag}.d.{order}"
            yield TransferRequest(id=deposit, kind=TransferKind.PENDING, debit_account=ids[f"a{t}"],
                                  credit_account=m, amount=1_000, asset="USDC")
            yield TransferRequest(id=f"{tag}.dp.{order}", kind=TransferKind.POST, pending_id=deposit)
        order += 1


def _batch(stream: Iterator[TransferRequest], size: int) -> list[TransferRequest]:
    return [next(stream) for _ in range(size)]


def _backend_pid(engine: Any) -> int | None:
    """Return the PostgreSQL backend pid of the engine's (single, reused) pooled connection."""
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _cpu_s(pid: int | None) -> float:
    """Return the user + system CPU seconds process ``pid`` has used (0 if unreadable or None)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def writer_main(url: str, writer: int, ids: dict[str, int], tag: str, size: int, seconds: float,
                barrier: Any, out: Any) -> None:
    """One settlement writer: submit linked batches of ``size`` for ``seconds`` after the barrier.

    Besides wall time it reports the CPU the submits cost: this process's (SQLite runs in it)
    and, on PostgreSQL, its server backend's (same machine), which a loaded machine inflates
    far less than wall time.
    """
    engine = make_engine(url)
    ledger = Ledger(make_session_factory(engine))
    stream = postings(ids, f"{tag}w{writer}")
    ledger.submit(_batch(stream, 8), linked=True, actor=ACTOR)  # warm the connection and caches
    backend = _backend_pid(engine)
    latencies: list[float] = []
    count = 0
    client_cpu = 0.0
    barrier.wait()
    began = time.perf_counter()
    server_began = _cpu_s(backend)
    deadline = began + seconds
    while time.perf_counter() < deadline:
        batch = _batch(stream, size)
        t0, c0 = time.perf_counter(), time.process_time()
        results = ledger.submit(batch, linked=True, actor=ACTOR)
        latencies.append((time.perf_counter() - t0) * 1000)
        client_cpu += time.process_time() - c0
        if not all(r.ok for r in results):
            cause = next(r for r in results if not r.ok)
            raise RuntimeError(f"batch refused: {cause.id} {cause.code} {cause.message}")
        count += size
    elapsed = time.perf_counter() - began
    out.put((count, elapsed, latencies, client_cpu, _cpu_s(backend) - server_began))
    engine.dispose()


def run(url: str, accounts: list[dict[str, int]], writers: int, size: int, seconds: float,
        ) -> tuple[float, float, float, float, float]:
    """Return (postings/s over all writers, p50 ms, p99 ms of one batch submit,
    client CPU us/posting, database backend CPU us/posting)."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(writers + 1), ctx.Queue()
    tag = f"r{time.time_ns() % 10**12:x}b{size}"
    procs = [ctx.Process(target=writer_main,
                         args=(url, w, accounts[w], tag, size, seconds, barrier, out))
             for w in range(writers)]
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=300)
        got = []
        while len(got) < writers:
            try:
                got.append(out.get(timeout=1))
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in procs):
                    raise RuntimeError("a writer process failed (see its traceback above)") from None
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    total = sum(g[0] for g in got)
    window = max(g[1] for g in got)
    flat = sorted(x for g in got for x in g[2])
    client_us = sum(g[3] for g in got) / total * 1e6
    server_us = sum(g[4] for g in got) / total * 1e6
    return (total / window, statistics.median(flat), flat[min(len(flat) - 1, int(len(flat) * 0.99))],
            client_us, server_us)


def profile(url: str, ids: dict[str, int], size: int, batches: int = 20) -> None:
    """Print where one writer's batch submit spends its time and how many statements it sends."""
    engine = make_engine(url)
    ledger = Ledger(make_session_factory(engine))
    stream = postings(ids, f"prof{time.time_ns() % 10**12:x}")
    ledger.submit(_batch(stream, size), linked=True, actor=ACTOR)
    statements = 0
    # Count every statement sent through a DBAPI cursor (the ORM's and bulk.py's raw ones):
    # on PostgreSQL each is at least one round trip (COPY a few messages, one wait).
    raw = engine.raw_connection()
    dbapi_cls = type(raw.dbapi_connection.cursor())  # type: ignore[union-attr]
    raw.close()
    patched: dict[str, Any] = {}
    for name in ("execute", "executemany", "copy"):
        original = getattr(dbapi_cls, name, None)
        if original is None:
            continue

        def wrapper(self: Any, *a: Any, _orig: Any = original, **k: Any) -> Any:
            nonlocal statements
            statements += 1
            return _orig(self, *a, **k)

        try:
            setattr(dbapi_cls, name, wrapper)
            patched[name] = original
        except TypeError:  # sqlite3.Cursor is a C type: in-process calls, no round trips
            pass
    work = [_batch(stream, size) for _ in range(batches)]
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for batch in work:
        assert all(r.ok for r in ledger.submit(batch, linked=True, actor=ACTOR))
    prof.disable()
    elapsed = time.perf_counter() - t0
    for name, original in patched.items():
        setattr(dbapi_cls, name, original)
    print(f"profile: {batches} linked batches of {size}: {elapsed / batches * 1000:.2f} ms/batch, "
          f"{size * batches / elapsed:,.0f} postings/s, {statements / batches:.1f} statements/batch "
          "(cursor statements, plus BEGIN and COMMIT; not counted on SQLite)")
    buf = io.StringIO()
    order = os.environ.get("BENCH_PROFILE_SORT", "cumulative")
    pstats.Stats(prof, stream=buf).sort_stats(order).print_stats(25)
    print(buf.getvalue())
    engine.dispose()


@contextmanager
def _sqlite_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="strongroom-settle-") as tmp:
        yield f"sqlite:///{tmp}/settle.db"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default=os.environ.get("STRONGROOM_BENCH_POSTGRES_URL"))
    parser.add_argument("--database-url", help="an empty PostgreSQL database to use")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--batches", default="1,16,64,256,1024")
    parser.add_argument("--writers", default="1,2")
    parser.add_argument("--profile", type=int, help="profile one writer at this batch size instead")
    args = parser.parse_args()
    with ExitStack() as stack:
        backends: list[tuple[str, str]] = []
        if not args.no_sqlite:
            backends.append(("sqlite", stack.enter_context(_sqlite_url())))
        if args.database_url:
            backends.append(("postgresql", args.database_url))
        elif args.admin_url:
            backends.append(("postgresql", stack.enter_context(scratch_postgres_database(
                args.admin_url, f"sr_bench_settle_{os.getpid()}"))))
        else:
            print("ledger_settle_bench: PostgreSQL skipped, --admin-url / --database-url / "
                  "STRONGROOM_BENCH_POSTGRES_URL not given")
        writer_counts = [int(x) for x in args.writers.split(",")]
        sizes = [int(x) for x in args.batches.split(",")]
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        for backend, url in backends:
            upgrade(url)
            setup = Ledger(make_session_factory(make_engine(url)))
            accounts = [setup_accounts(setup, w) for w in range(max(writer_counts))]
            if args.profile:
                print(f"[{backend}]")
                profile(url, accounts[0], args.profile)
                continue
            print(f"\n[{backend}] linked batch submits, {args.seconds:g} s per cell")
            print("(CPU: microseconds per posting, of the writer processes and, on PostgreSQL, "
                  "of their database backends)")
            print("| batch | " + " | ".join(f"{w} writer(s): postings/s | p50 ms | p99 ms | "
                                          "CPU writer | CPU db" for w in writer_counts) + " |")
            print("|---|" + "---|---|---|---|---|" * len(writer_counts))
            for size in sizes:
                cells = [run(url, accounts, w, size, args.seconds) for w in writer_counts]
                print(f"| {size} | " + " | ".join(
                    f"{r:,.0f} | {p50:.1f} | {p99:.1f} | {cw:.0f} | {cd:.0f}"
                    for r, p50, p99, cw, cd in cells) + " |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
