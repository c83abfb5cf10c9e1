"""Run one order stream through our two cores and three PyPI order books, side by side.

The workload is the standard seeded stream of benchmarks/engine_stream.py
(one instrument: ~50% passive limits, ~30% cancels, ~15% aggressive limits,
~5% market orders), reduced to plain tuples. Every engine builds its own
command objects inside the timed loop, from the same tuples:

- strongroom-c: FastBook, the C core of exchange/engine/_ccore.c (what the
  replay CLI runs; built here when missing);
- strongroom (compiled): the Cython build of exchange/engine/orderbook.py;
- strongroom (pure): the same source interpreted (STRONGROOM_ENGINE_PURE=1);
- limit-order-book 2.0.0: C++ through ctypes (integer ids, reports no trades);
- cython-orderbook 0.1.2: Cython, SortedDict of OrderedDict levels;
- pyorderbook 0.4.9: pure Python, Decimal prices, uuid ids (no market orders:
  a market order is a limit at the far end of the book, its rest cancelled).

The peers are installed from PyPI into a throwaway venv that the script
creates (and deletes, unless --venv names one to reuse). Each engine runs in
its own process, the engines take turns (round robin, --repeat rounds), and
the script prints the median commands/s by wall clock and by the process's
CPU time, and each engine's ratio to limit-order-book (CPU time, same run). On a shared machine
read the CPU-time column: it does not count time the process waited for a core.

    python benchmarks/peers_bench.py [--commands 1000000] [--repeat 3] [--venv DIR]

Not a pass/fail test.
"""

import argparse
import contextlib
import gc
import json
import marshal
import os
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

PEERS = ("limit-order-book==2.0.0", "cython-orderbook==0.1.2", "pyorderbook==0.4.9")
OURS = ("strongroom-c", "strongroom-compiled", "strongroom-pure")
ENGINES = (*OURS, "limit-order-book", "cython-orderbook", "pyorderbook")
ROOT = Path(__file__).resolve().parent.parent
DRAIN_EVERY = 10_000
# Far prices for pyorderbook's emulated market orders (it has none).
FAR_BUY_PRICE = 10**12
FAR_SELL_PRICE = 1

# Workload tuples: (NEW, id, is_buy, qty, price, account) with price 0 for a
# market order, or (CANCEL, id).
NEW = 0
CANCEL = 1


# ------------------------------------------------------------- workload


def write_workload(path: Path, commands: int, seed: int) -> None:
    """Generate the standard stream and store it as marshalled tuples."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT))
    import engine_stream

    from exchange.engine.messages import Cancel, NewOrder

    out: list[tuple[int, ...]] = []
    accounts = {name: i for i, name in enumerate(engine_stream.ACCOUNTS)}
    for cmd in engine_stream.generate(commands, seed):
        if isinstance(cmd, NewOrder):
            price = 0 if cmd.type == "market" else cmd.price
            out.append((NEW, int(cmd.id[1:]), cmd.side == "buy", cmd.qty, price,
                        accounts[cmd.account]))
        elif isinstance(cmd, Cancel):
            out.append((CANCEL, int(cmd.id[1:])))
        else:
            raise AssertionError(f"unexpected command {cmd!r}")
    path.write_bytes(marshal.dumps(out))


# -------------------------------------------------------------- workers
# Each returns a function that runs the whole workload once.


def _strongroom_c(workload: list[tuple[int, ...]]):  # type: ignore[no-untyped-def]
    return _strongroom(workload, fast=True)


def _strongroom(workload: list[tuple[int, ...]], fast: bool = False):  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT))
    from exchange.engine.fastbook import FastBook
    from exchange.engine.instrument import Instrument
    from exchange.engine.messages import Cancel, NewOrder
    from exchange.engine.orderbook import OrderBook

    make_book = FastBook if fast else OrderBook

    ids = [f"o{i}" for i in range(max(t[1] for t in workload) + 1)]
    accounts = [f"acct{i}" for i in range(100)]

    def run() -> None:
        book = make_book(Instrument(symbol="BENCH"))
        process = book.process
        events = book.events
        for i, t in enumerate(workload):
            if t[0] == NEW:
                side = "buy" if t[2] else "sell"
                if t[4]:
                    process(NewOrder(ids[t[1]], accounts[t[5]], side, t[3], price=t[4]))
                else:
                    process(NewOrder(ids[t[1]], accounts[t[5]], side, t[3], type="market"))
            else:
                process(Cancel(ids[t[1]]))
            if i % DRAIN_EVERY == 0:
                events.clear()

    return run


def _limit_order_book(workload: list[tuple[int, ...]]):  # type: ignore[no-untyped-def]
    from limit_order_book import LimitOrderBook

    def run() -> None:
        book = LimitOrderBook()
        for t in workload:
            if t[0] == NEW:
                if t[4]:
                    if t[2]:
                        book.limit_buy(t[1], t[3], t[4])
                    else:
                        book.limit_sell(t[1], t[3], t[4])
                elif t[2]:
                    book.market_buy(t[1], t[3])
                else:
                    book.market_sell(t[1], t[3])
            elif book.has(t[1]):
                # Cancelling an id it does not hold is undefined behaviour in
                # the C++ core; the stream only cancels live orders, so this
                # guard is always true when both books agree.
                book.cancel(t[1])

    return run


def _cython_orderbook(workload: list[tuple[int, ...]]):  # type: ignore[no-untyped-def]
    from cython_orderbook import Order, OrderBook, OrderSide

    bid = OrderSide.BID
    ask = OrderSide.ASK

    def run() -> None:
        book = OrderBook()
        handles: dict[int, str] = {}
        for t in workload:
            if t[0] == NEW:
                if t[4]:
                    o = Order(bid if t[2] else ask, t[3], t[4])
                    book.add_limit_order(o)
                    handles[t[1]] = o.order_id
                else:
                    book.add_market_order(Order(bid if t[2] else ask, t[3]))
            else:
                book.cancel_order(handles.pop(t[1]))

    return run


def _pyorderbook(workload: list[tuple[int, ...]]):  # type: ignore[no-untyped-def]
    from pyorderbook import Book, ask, bid

    def run() -> None:
        book = Book()
        handles = {}
        for t in workload:
            if t[0] == NEW:
                make = bid if t[2] else ask
                if t[4]:
                    o = make("BENCH", t[4], t[3])
                    book.match(o)
                    handles[t[1]] = o
                else:
                    o = make("BENCH", FAR_BUY_PRICE if t[2] else FAR_SELL_PRICE, t[3])
                    book.match(o)
                    if o.quantity:
                        book.cancel(o)
            else:
                o = handles.pop(t[1])
                if o.quantity:
                    with contextlib.suppress(KeyError):  # filled meanwhile
                        book.cancel(o)

    return run


WORKERS = {
    "strongroom-c": _strongroom_c,
    "strongroom-compiled": _strongroom,
    "strongroom-pure": _strongroom,
    "limit-order-book": _limit_order_book,
    "cython-orderbook": _cython_orderbook,
    "pyorderbook": _pyorderbook,
}


def worker(name: str, workload_path: Path) -> None:
    """Run one engine once over the workload and print its timings as JSON."""
    import logging

    logging.disable(logging.CRITICAL)
    workload = marshal.loads(workload_path.read_bytes())
    run = WORKERS[name](workload)
    core = ""
    if name == "strongroom-c":
        from exchange.engine import fastbook

        core = "c" if fastbook.active() else "pure"
    elif name in OURS:
        import exchange.engine.orderbook as orderbook_module

        core = orderbook_module.CORE
    gc.collect()
    gc.disable()
    started = time.perf_counter_ns()
    started_cpu = time.process_time_ns()
    run()
    elapsed = time.perf_counter_ns() - started
    elapsed_cpu = time.process_time_ns() - started_cpu
    print(json.dumps({"engine": name, "core": core, "commands": len(workload),
                      "wall_per_s": len(workload) * 1e9 / elapsed,
                      "cpu_per_s": len(workload) * 1e9 / elapsed_cpu}))


# -------------------------------------------------------------- driver


def make_peer_venv(path: Path) -> Path:
    """Create a venv at `path` with the peers installed; return its python."""
    python = path / "bin" / "python"
    if not python.exists():
        venv.EnvBuilder(with_pip=True).create(path)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    *PEERS], check=True)
    return python


def ensure_compiled_core() -> None:
    """Build the Cython core when it is missing or stale."""
    probe = subprocess.run(
        [sys.executable, "-W", "ignore", "-c",
         "import exchange.engine.orderbook as m; print(m.CORE)"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        check=True,
    )
    if probe.stdout.strip() != "cython":
        print("building the compiled core (scripts/build-engine.sh)", file=sys.stderr)
        subprocess.run([str(ROOT / "scripts" / "build-engine.sh"), "build"], check=True,
                       env={**os.environ, "PYTHON": sys.executable})


def ensure_c_core() -> None:
    """Build the C core (exchange/engine/_ccore.c) when it is missing or stale."""
    probe = subprocess.run(
        [sys.executable, "-c", "from exchange.engine import fastbook; print(fastbook.active())"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        check=True,
    )
    if probe.stdout.strip() != "True":
        print("building the C core (python -m exchange.engine.fastbook build)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "exchange.engine.fastbook", "build"], check=True,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def run_engine(name: str, python: Path, workload: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("STRONGROOM_ENGINE_PURE", None)
    if name == "strongroom-pure":
        env["STRONGROOM_ENGINE_PURE"] = "1"
    done = subprocess.run([str(python), __file__, "--worker", name, "--workload", str(workload)],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=3, help="round-robin rounds")
    parser.add_argument("--venv", type=Path, default=None,
                        help="reuse (or create) the peers' venv here instead of a temporary one")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workload", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.workload)
        return

    engines = [e for e in args.engines.split(",") if e]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines {sorted(unknown)}; choose from {ENGINES}")
    with tempfile.TemporaryDirectory(prefix="peers-bench-") as tmp:
        workload = Path(tmp) / "workload.marshal"
        started = time.perf_counter()
        write_workload(workload, args.commands, args.seed)
        print(f"workload: {args.commands:,} commands (seed {args.seed}) in "
              f"{time.perf_counter() - started:.1f} s; python {sys.version.split()[0]}, "
              f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.2f}")
        peer_python = Path(sys.executable)
        if any(e not in OURS for e in engines):
            peer_python = make_peer_venv(args.venv or Path(tmp) / "venv")
        if "strongroom-compiled" in engines:
            ensure_compiled_core()
        if "strongroom-c" in engines:
            ensure_c_core()
        runs: dict[str, list[dict[str, float]]] = {e: [] for e in engines}
        for _ in range(args.repeat):
            for name in engines:
                python = Path(sys.executable) if name in OURS else peer_python
                runs[name].append(run_engine(name, python, workload))
    report(engines, runs, args.repeat)


def report(engines: list[str], runs: dict[str, list[dict[str, float]]], repeat: int) -> None:
    wall = {e: statistics.median(r["wall_per_s"] for r in runs[e]) for e in engines}
    cpu = {e: statistics.median(r["cpu_per_s"] for r in runs[e]) for e in engines}
    base = "limit-order-book" if "limit-order-book" in engines else engines[0]
    print(f"\nmedian of {repeat} round-robin runs; ratio = engine / {base} (CPU time)")
    print(f"{'engine':<22}{'commands/s (wall)':>20}{'commands/s (CPU)':>20}{'ratio':>9}")
    for e in sorted(engines, key=lambda e: -cpu[e]):
        core = runs[e][0].get("core")
        expected = {"strongroom-c": "c", "strongroom-compiled": "cython",
                    "strongroom-pure": "pure"}.get(e, "")
        label = e if core == expected else f"{e} [core {core}!]"
        print(f"{label:<22}{wall[e]:>20,.0f}{cpu[e]:>20,.0f}{cpu[e] / cpu[base]:>9.2f}")


if __name__ == "__main__":
    main()
