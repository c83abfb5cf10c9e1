"""Benchmark the matching engine on the standard seeded stream.

Reports engine core throughput (commands/s, JSON parsing excluded),
p50/p99/p99.9 per-command latency (perf_counter_ns around each
`process()` call, timer overhead included and reported), end-to-end
`strongroom-engine replay` throughput (a real subprocess reading and
writing files), and memory per resting order (tracemalloc).

    python benchmarks/engine_bench.py [--commands 1000000] [--seed 42] [--stream FILE]
                                      [--repeat 3]

Every in-process figure is measured for two books, alternating in the same
run: FastBook (the C core of exchange/engine/_ccore.c, what the replay CLI
runs; built with `python -m exchange.engine.fastbook build`) and OrderBook
(the Cython build of orderbook.py, or pure Python; STRONGROOM_ENGINE_PURE=1
forces pure for both; see scripts/build-engine.sh). Which cores run is
printed first. On a shared machine use --repeat and read the CPU-time
medians and the ratio of the two books in the same run, not wall time.
"""

import argparse
import gc
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from array import array
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).parent))
import engine_stream

import exchange.engine.orderbook as orderbook_module
from exchange.engine import fastbook
from exchange.engine.fastbook import FastBook
from exchange.engine.instrument import Instrument
from exchange.engine.messages import Command, NewOrder
from exchange.engine.orderbook import OrderBook

INSTRUMENT = Instrument(symbol="BENCH")
DRAIN_EVERY = 10_000
RESTING_FOR_MEMORY = 100_000


BOOKS: dict[str, type[OrderBook] | type[FastBook]] = {"FastBook": FastBook, "OrderBook": OrderBook}


def core_throughput(commands: list[Command], make: type[OrderBook] | type[FastBook]
                    ) -> tuple[float, float]:
    """Return commands/s by wall clock and by this process's CPU time."""
    book = make(INSTRUMENT)
    process = book.process
    events = book.events
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter_ns()
        started_cpu = time.process_time_ns()
        for i, cmd in enumerate(commands):
            process(cmd)
            if i % DRAIN_EVERY == 0:
                events.clear()
        elapsed = time.perf_counter_ns() - started
        elapsed_cpu = time.process_time_ns() - started_cpu
    finally:
        gc.enable()
    return len(commands) * 1e9 / elapsed, len(commands) * 1e9 / elapsed_cpu


def batch_throughput(commands: list[Command], make: type[OrderBook] | type[FastBook]
                     ) -> tuple[float, float]:
    """Like `core_throughput`, through `process_many()` in slices of DRAIN_EVERY."""
    book = make(INSTRUMENT)
    process_many = book.process_many
    events = book.events
    slices = [commands[i:i + DRAIN_EVERY] for i in range(0, len(commands), DRAIN_EVERY)]
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter_ns()
        started_cpu = time.process_time_ns()
        for chunk in slices:
            process_many(chunk)
            events.clear()
        elapsed = time.perf_counter_ns() - started
        elapsed_cpu = time.process_time_ns() - started_cpu
    finally:
        gc.enable()
    return len(commands) * 1e9 / elapsed, len(commands) * 1e9 / elapsed_cpu


def latencies(commands: list[Command], make: type[OrderBook] | type[FastBook]
              ) -> tuple[list[int], int]:
    book = make(INSTRUMENT)
    process = book.process
    events = book.events
    clock = time.perf_counter_ns
    samples = array("q", bytes(8 * len(commands)))
    overhead = min(-(clock() - clock()) for _ in range(1000))
    gc.collect()
    for i, cmd in enumerate(commands):
        t0 = clock()
        process(cmd)
        samples[i] = clock() - t0
        if i % DRAIN_EVERY == 0:
            events.clear()
    return samples.tolist(), overhead


def percentile(sorted_samples: list[int], p: float) -> int:
    index = min(len(sorted_samples) - 1, int(len(sorted_samples) * p))
    return sorted_samples[index]


def replay_cli(stream: Path, commands: int) -> tuple[float, float, float]:
    """Return the CLI's commands/s by wall clock and by its CPU time, and MB written."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "events.jsonl"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "exchange.engine.cli", "replay", "--in", str(stream),
             "--out", str(out)],
            check=True,
        )
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        size_mb = out.stat().st_size / 1e6
    return commands / elapsed, commands / cpu, size_mb


def memory_per_resting_order(make: type[OrderBook] | type[FastBook]) -> float:
    """Bytes retained per resting order (order node, id string, index entry, levels)."""
    encoder = msgspec.json.Encoder()
    decoder = msgspec.json.Decoder(NewOrder)
    lines = [
        encoder.encode(NewOrder(f"o{i}", f"acct{i % 100}", "buy" if i % 2 else "sell",
                                1 + i % 10, price=100_000 - 1 - i % 50 if i % 2 else
                                100_000 + 1 + i % 50))
        for i in range(RESTING_FOR_MEMORY)
    ]
    book = make(INSTRUMENT)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for line in lines:
        book.process(decoder.decode(line))
        book.events.clear()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(book.orders) == RESTING_FOR_MEMORY
    return (after - before) / RESTING_FOR_MEMORY


def _spread(values: list[float]) -> str:
    return f"best {max(values):,.0f}, median {statistics.median(values):,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--stream", type=Path, default=None, help="existing stream file")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each measurement")
    args = parser.parse_args()

    print(f"python {sys.version.split()[0]}, cpus {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.2f}; FastBook core: "
          f"{'c' if fastbook.active() else 'pure'}; OrderBook core {orderbook_module.CORE}: "
          f"{orderbook_module.OrderBook.__module__}")
    with tempfile.TemporaryDirectory() as tmp:
        stream = args.stream
        if stream is None:
            stream = Path(tmp) / "stream.jsonl"
            started = time.perf_counter()
            data = msgspec.json.Encoder().encode_lines(
                engine_stream.generate(args.commands, args.seed))
            stream.write_bytes(data)
            print(f"generated {args.commands} commands in {time.perf_counter() - started:.1f} s")
        decoder = msgspec.json.Decoder(Command)
        commands = [decoder.decode(line) for line in stream.read_bytes().splitlines() if line]
        n = len(commands)

        cpu_rates: dict[str, list[float]] = {name: [] for name in BOOKS}
        batch_cpu_rates: dict[str, list[float]] = {name: [] for name in BOOKS}
        for _ in range(args.repeat):
            for name, make in BOOKS.items():
                rate, cpu_rate = core_throughput(commands, make)
                cpu_rates[name].append(cpu_rate)
                print(f"{name:<9} process():      {cpu_rate:>12,.0f} commands/s of CPU time "
                      f"({rate:,.0f}/s wall; {n:,} commands, parsing excluded)")
                rate, cpu_rate = batch_throughput(commands, make)
                batch_cpu_rates[name].append(cpu_rate)
                print(f"{name:<9} process_many(): {cpu_rate:>12,.0f} commands/s of CPU time "
                      f"({rate:,.0f}/s wall; batches of {DRAIN_EVERY:,})")

        p99s: dict[str, list[float]] = {name: [] for name in BOOKS}
        for _ in range(args.repeat):
            for name, make in BOOKS.items():
                samples, overhead = latencies(commands, make)
                ordered = sorted(samples)
                p99s[name].append(percentile(ordered, 0.99) / 1e3)
                print(f"{name:<9} latency per cmd: p50 {percentile(ordered, 0.50) / 1e3:.2f} µs, "
                      f"p99 {p99s[name][-1]:.2f} µs, "
                      f"p99.9 {percentile(ordered, 0.999) / 1e3:.2f} µs, "
                      f"max {ordered[-1] / 1e3:.1f} µs (wall; timer overhead ~{overhead} ns "
                      "included)")

        cli_rates = []
        cli_cpu_rates = []
        for _ in range(args.repeat):
            cli_rate, cli_cpu_rate, size_mb = replay_cli(stream, n)
            cli_rates.append(cli_rate)
            cli_cpu_rates.append(cli_cpu_rate)
            print(f"replay CLI:        {cli_rate:>12,.0f} commands/s end to end "
                  f"(process start, parse, match, write {size_mb:.0f} MB of events; "
                  f"{cli_cpu_rate:,.0f}/s of its CPU time)")
        for name in BOOKS:
            print(f"summary {name}: process() CPU {_spread(cpu_rates[name])} commands/s; "
                  f"process_many() CPU {_spread(batch_cpu_rates[name])}; "
                  f"p99 best {min(p99s[name]):.2f} µs, median {statistics.median(p99s[name]):.2f} µs")
        ratio = statistics.median(
            f / o for f, o in zip(batch_cpu_rates["FastBook"], batch_cpu_rates["OrderBook"],
                                  strict=True))
        print(f"FastBook / OrderBook process_many() CPU rate, same runs: median {ratio:.2f}x")
        print(f"replay CLI: CPU {_spread(cli_cpu_rates)} commands/s; wall {_spread(cli_rates)}")

    for name, make in BOOKS.items():
        per_order = memory_per_resting_order(make)
        print(f"{name:<9} memory per resting order: {per_order:,.0f} bytes "
              f"({RESTING_FOR_MEMORY:,} resting orders, tracemalloc)")


if __name__ == "__main__":
    main()
