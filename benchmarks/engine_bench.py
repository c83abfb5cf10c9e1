"""Benchmark the matching engine on the standard seeded stream.

Reports engine core throughput (commands/s, JSON parsing excluded),
p50/p99/p99.9 per-command latency (perf_counter_ns around each
`process()` call, timer overhead included and reported), end-to-end
`strongroom-engine replay` throughput (a real subprocess reading and
writing files), and memory per resting order (tracemalloc).

    python benchmarks/engine_bench.py [--commands 1000000] [--seed 42] [--stream FILE]
                                      [--repeat 3]

Not a pass/fail test. Which core runs (the Cython build of orderbook.py or
pure Python; STRONGROOM_ENGINE_PURE=1 forces pure) is printed first; see
scripts/build-engine.sh. On a shared machine use --repeat and read the best
and the median.
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
from exchange.engine.instrument import Instrument
from exchange.engine.messages import Command, NewOrder
from exchange.engine.orderbook import OrderBook

INSTRUMENT = Instrument(symbol="BENCH")
DRAIN_EVERY = 10_000
RESTING_FOR_MEMORY = 100_000


def core_throughput(commands: list[Command]) -> tuple[float, float]:
    """Return commands/s by wall clock and by this process's CPU time."""
    book = OrderBook(INSTRUMENT)
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


def batch_throughput(commands: list[Command]) -> tuple[float, float]:
    """Like `core_throughput`, through `process_many()` in slices of DRAIN_EVERY."""
    book = OrderBook(INSTRUMENT)
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


def latencies(commands: list[Command]) -> tuple[list[int], int]:
    book = OrderBook(INSTRUMENT)
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


def memory_per_resting_order() -> float:
    """Bytes retained per resting order (order node, id string, index entry, levels)."""
    encoder = msgspec.json.Encoder()
    decoder = msgspec.json.Decoder(NewOrder)
    lines = [
        encoder.encode(NewOrder(f"o{i}", f"acct{i % 100}", "buy" if i % 2 else "sell",
                                1 + i % 10, price=100_000 - 1 - i % 50 if i % 2 else
                                100_000 + 1 + i % 50))
        for i in range(RESTING_FOR_MEMORY)
    ]
    book = OrderBook(INSTRUMENT)
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
          f"load {os.getloadavg()[0]:.2f}, core {orderbook_module.CORE}: "
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

        rates = []
        cpu_rates = []
        batch_cpu_rates = []
        for _ in range(args.repeat):
            rate, cpu_rate = core_throughput(commands)
            rates.append(rate)
            cpu_rates.append(cpu_rate)
            print(f"core throughput:   {rate:>12,.0f} commands/s  "
                  f"({n:,} commands, parsing excluded; {cpu_rate:,.0f}/s of CPU time)")
            rate, cpu_rate = batch_throughput(commands)
            batch_cpu_rates.append(cpu_rate)
            print(f"core, process_many:{rate:>12,.0f} commands/s  "
                  f"(batches of {DRAIN_EVERY:,}; {cpu_rate:,.0f}/s of CPU time)")

        p99s = []
        for _ in range(args.repeat):
            samples, overhead = latencies(commands)
            ordered = sorted(samples)
            p99s.append(percentile(ordered, 0.99) / 1e3)
            print(f"latency per cmd:   p50 {percentile(ordered, 0.50) / 1e3:.2f} µs, "
                  f"p99 {p99s[-1]:.2f} µs, "
                  f"p99.9 {percentile(ordered, 0.999) / 1e3:.2f} µs, "
                  f"max {ordered[-1] / 1e3:.1f} µs (timer overhead ~{overhead} ns included)")

        cli_rates = []
        for _ in range(args.repeat):
            cli_rate, cli_cpu_rate, size_mb = replay_cli(stream, n)
            cli_rates.append(cli_rate)
            print(f"replay CLI:        {cli_rate:>12,.0f} commands/s end to end "
                  f"(process start, parse, match, write {size_mb:.0f} MB of events; "
                  f"{cli_cpu_rate:,.0f}/s of its CPU time)")
        if args.repeat > 1:
            print(f"summary over {args.repeat} runs: core {_spread(rates)} commands/s "
                  f"(CPU time: {_spread(cpu_rates)}; process_many CPU time: "
                  f"{_spread(batch_cpu_rates)}); "
                  f"p99 best {min(p99s):.2f} µs, median {statistics.median(p99s):.2f} µs; "
                  f"replay CLI {_spread(cli_rates)} commands/s")

    per_order = memory_per_resting_order()
    print(f"memory per resting order: {per_order:,.0f} bytes "
          f"({RESTING_FOR_MEMORY:,} resting orders, tracemalloc)")


if __name__ == "__main__":
    main()
