"""Shared by the stream benchmarks (scaleout_bench.py, shard_bench.py): spawn workers, wait for batches."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nats
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

ROOT = Path(__file__).resolve().parents[1]


def spawn(args: list[str], urls: list[str]) -> subprocess.Popen[bytes]:
    """Start `python <args> --nats <urls>` with the repository on its path, output discarded."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, *args, "--nats", ",".join(urls)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_all(js: JetStreamContext, names: list[str], seq: int, timeout_s: float, *,
                   stream: str, subject_of: Callable[[str], str],
                   last_seq_of: Callable[[bytes], int], what: str, poll_s: float = 0.02) -> float:
    """Wait until the last batch on `subject_of(name)` covers command `seq` for every name.

    `last_seq_of` reads a batch's last command sequence; `what` names the
    names in the timeout message. Return the time (time.monotonic()).
    """
    async def last_published(name: str) -> int:
        try:
            msg = await js.get_last_msg(stream, subject_of(name))
        except NotFoundError:
            return 0
        return last_seq_of(msg.data or b"")

    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while pending:
        for name in list(pending):
            try:
                if await last_published(name) >= seq:
                    pending.discard(name)
            except nats.errors.TimeoutError:
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} {sorted(pending)} did not reach {seq}")
        if pending:
            await asyncio.sleep(poll_s)
    return time.monotonic()
