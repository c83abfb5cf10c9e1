"""Open-loop HTTP/1.1 load generator for the REST benchmarks (shard_api_bench.py).

The generator must not eat the CPU it measures (2 cores shared with the
server): every request is built and signed **before** the clock starts
(`prepare_signed`), the timestamp of request i being the wall-clock time it
is due, so it stays inside the server's auth window (5 s) whenever the
server keeps up; during the run a request is only written to a raw
keep-alive socket and its answer's status line and body length parsed
(`run_open_loop`). Open loop: request i is due at ``start + i / rate``
whatever happened before; a request that finds every connection busy waits
in the queue, and its latency counts from the due time, so client-side
queueing is measured, not hidden (no coordinated omission).

`run_processes` splits the requests over a few processes (request i to
process ``i % procs``) for rates one event loop cannot write; each process
reports its own CPU seconds (``time.process_time``) so the report can show
what the generator itself cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from policies.request_signing import sign_request

CONNECT_TIMEOUT_S = 10.0
HEADER_LIMIT_BYTES = 64 * 1024
BODY_LIMIT_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Signer:
    """One API key: the generator signs as this trader."""

    name: str
    key_id: str
    secret: str


def raw_request(host: str, method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """Return the bytes of one HTTP/1.1 keep-alive request."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}",
             "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def prepare_signed(host: str, method: str, path: str, bodies: Sequence[bytes], signers: Sequence[Signer],
                   start_wall_s: float, rate: float) -> list[bytes]:
    """Sign `method` `path` with each body (signer i % len), timestamp = its due wall-clock time.

    Every request is distinct (a body with its own order id, or its own timestamp), so the
    server's replay cache never refuses one as a replay.
    """
    out = []
    for i, body in enumerate(bodies):
        signer = signers[i % len(signers)]
        ts_ms = int((start_wall_s + i / rate) * 1000)
        headers = sign_request(key_id=signer.key_id, secret=signer.secret, timestamp_ms=ts_ms,
                               method=method, path=path, body=body)
        if body:
            headers["Content-Type"] = "application/json"
        out.append(raw_request(host, method, path, body, headers))
    return out


@dataclass
class Outcome:
    """What one generator saw: per request (index, status, latency from due time, s)."""

    results: list[tuple[int, int, float]] = field(default_factory=list)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    connects: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    bodies: dict[int, bytes] = field(default_factory=dict)  # a few answers, for the report


def source_address(k: int) -> str:
    """Return the loopback address connection `k` binds to: one client address per connection.

    The API limits requests per client IP (custody/api/ratelimit.py, 1,200 a minute per
    process); thousands of users come from many addresses, not from one load generator's.
    Linux routes all of 127.0.0.0/8 to the loopback interface.
    """
    return f"127.1.{k // 250}.{k % 250 + 1}"


class _Conn:
    def __init__(self, host: str, port: int, source: str | None = None) -> None:
        self.host, self.port, self.source = host, port, source
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def ensure(self, outcome: Outcome) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=HEADER_LIMIT_BYTES,
                                        local_addr=(self.source, 0) if self.source else None),
                CONNECT_TIMEOUT_S)
            outcome.connects += 1
        return self.reader, self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def exchange(self, data: bytes, outcome: Outcome) -> tuple[int, bytes]:
        """Send one request, return (status, body); reconnect once if a kept-alive socket was closed."""
        for attempt in (1, 2):
            fresh = self.writer is None
            reader, writer = await self.ensure(outcome)
            try:
                writer.write(data)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if fresh or attempt == 2:
                    raise
                continue  # the server closed an idle keep-alive connection: once more, fresh
            status, length, close, chunked = _parse_head(head)
            body = await (_read_chunked(reader) if chunked else reader.readexactly(length))
            if close:
                self.close()
            return status, body
        raise AssertionError("unreachable")


def _parse_head(head: bytes) -> tuple[int, int, bool, bool]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, close, chunked = 0, False, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection":
            close = value.strip().lower() == "close"
        elif name == "transfer-encoding":
            chunked = "chunked" in value.lower()
    if length > BODY_LIMIT_BYTES:
        raise ValueError(f"content-length was {length}")
    return status, length, close, chunked


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def run_open_loop(host: str, port: int, requests: Sequence[tuple[int, bytes]], rate: float,
                        start_perf_s: float, connections: int, keep_bodies: int = 3,
                        first_connection: int = 0) -> Outcome:
    """Send `requests` ((global index, bytes)), index i due at start + i / rate; return the outcome."""
    outcome = Outcome()
    queue: asyncio.Queue[tuple[int, float, bytes] | None] = asyncio.Queue()
    cpu0, wall0 = time.process_time(), time.perf_counter()

    async def schedule() -> None:
        for i, data in requests:
            due = start_perf_s + i / rate
            delay = due - time.perf_counter()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            queue.put_nowait((i, due, data))
        for _ in range(connections):
            queue.put_nowait(None)

    async def connection(k: int) -> None:
        conn = _Conn(host, port, source_address(first_connection + k) if host.startswith("127.") else None)
        while (item := await queue.get()) is not None:
            i, due, data = item
            try:
                status, body = await conn.exchange(data, outcome)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                conn.close()
                status, body = 0, b""
                outcome.errors[type(exc).__name__] = outcome.errors.get(type(exc).__name__, 0) + 1
            outcome.results.append((i, status, time.perf_counter() - due))
            if len(outcome.bodies) < keep_bodies and status not in (200, 201, 202):
                outcome.bodies[i] = body[:300]
        conn.close()

    await asyncio.gather(schedule(), *(connection(k) for k in range(connections)))
    outcome.cpu_s = time.process_time() - cpu0
    outcome.wall_s = time.perf_counter() - wall0
    return outcome


def _child(host: str, port: int, requests: list[tuple[int, bytes]], rate: float, start_wall_s: float,
           connections: int, first_connection: int, out_path: str) -> None:
    # Each process aligns its perf clock to the shared wall-clock start.
    start_perf = time.perf_counter() + (start_wall_s - time.time())
    outcome = asyncio.run(run_open_loop(host, port, requests, rate, start_perf, connections,
                                        first_connection=first_connection))
    Path(out_path).write_text(json.dumps({
        "results": outcome.results, "cpu_s": outcome.cpu_s, "wall_s": outcome.wall_s,
        "connects": outcome.connects, "errors": outcome.errors,
        "bodies": {str(k): v.decode("utf-8", "replace") for k, v in outcome.bodies.items()}}))


def run_processes(host: str, port: int, requests: list[bytes], rate: float, start_wall_s: float,
                  connections: int, procs: int, tmp: Path) -> tuple[Outcome, list[float]]:
    """Run the open loop from `procs` forked processes; return the merged outcome and each one's CPU.

    Always in child processes, so the parent's other threads (e.g. a price feed) do not count
    as generator CPU.
    """
    ctx = multiprocessing.get_context("fork")
    children = []
    for p in range(procs):
        part = [(i, r) for i, r in enumerate(requests) if i % procs == p]
        path = tmp / f"loadgen-{p}.json"
        per = max(1, connections // procs)
        child = ctx.Process(target=_child, args=(host, port, part, rate, start_wall_s, per, p * per,
                                                 str(path)))
        child.start()
        children.append((child, path))
    merged, cpus = Outcome(), []
    for child, path in children:
        child.join()
        data = json.loads(path.read_text())
        merged.results.extend((int(i), int(s), float(lat)) for i, s, lat in data["results"])
        merged.connects += data["connects"]
        merged.wall_s = max(merged.wall_s, data["wall_s"])
        for k, v in data["errors"].items():
            merged.errors[k] = merged.errors.get(k, 0) + v
        merged.bodies.update({int(k): v.encode() for k, v in data["bodies"].items()})
        cpus.append(data["cpu_s"])
    merged.cpu_s = sum(cpus)
    return merged, cpus


def cpu_seconds(pid: int) -> float:
    """Return user + system CPU seconds of process `pid` and its reaped children (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    # fields[11..14] = utime stime cutime cstime (after the state field at index 0)
    return sum(int(x) for x in fields[11:15]) / ticks


def tree_pids(root: int) -> list[int]:
    """Return `root` and all its live descendants (gunicorn's master and workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class CpuMeter:
    """CPU seconds of named process trees between `start()` and `stop()`."""

    def __init__(self, trees: dict[str, Callable[[], list[int]]]) -> None:
        self.trees = trees
        self.before: dict[str, dict[int, float]] = {}
        self.used: dict[str, float] = {}

    def _read(self) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        for name, pids in self.trees.items():
            out[name] = {}
            for pid in pids():
                with contextlib.suppress(OSError):  # exited meanwhile
                    out[name][pid] = cpu_seconds(pid)
        return out

    def start(self) -> None:
        self.before = self._read()

    def stop(self) -> dict[str, float]:
        after = self._read()
        self.used = {name: sum(v - self.before.get(name, {}).get(pid, 0.0) for pid, v in after[name].items())
                     for name in after}
        return self.used
