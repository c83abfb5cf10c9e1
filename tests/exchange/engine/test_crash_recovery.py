"""Kill a real engine process with SIGKILL mid-stream and recover its journal."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
from engine_streams import INSTRUMENT, random_stream

from exchange.engine.journal import list_segments
from exchange.engine.orderbook import OrderBook
from exchange.engine.recovery import DurableEngine, recover
from exchange.engine.snapshot import list_snapshots

COMMANDS = 200_000
SNAPSHOT_EVERY = 10_000
KILL_TIMEOUT_S = 60


def instrument_flags() -> list[str]:
    ins = INSTRUMENT
    return ["--symbol", ins.symbol, "--tick-size", str(ins.tick_size), "--lot-size", str(ins.lot_size),
            "--min-qty", str(ins.min_qty), "--max-qty", str(ins.max_qty),
            "--band-bps", str(ins.band_bps), "--reference-price", str(ins.reference_price)]


def test_sigkill_mid_stream_recovers_identical_state(tmp_path: Path) -> None:
    stream = random_stream(99, COMMANDS)
    commands = tmp_path / "commands.jsonl"
    commands.write_bytes(msgspec.json.Encoder().encode_lines(stream))
    journal = tmp_path / "journal"
    proc = subprocess.Popen(
        [sys.executable, "-m", "exchange.engine.cli", "replay", "--in", str(commands),
         "--out", os.devnull, "--journal-dir", str(journal), "--fsync", "never",
         "--group-commit", "37", "--snapshot-every", str(SNAPSHOT_EVERY), *instrument_flags()],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + KILL_TIMEOUT_S
    # Kill once a couple of snapshots exist and the live segment has a tail.
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list_snapshots(journal)) >= 3 and list_segments(journal)[-1].stat().st_size > 50_000:
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"engine finished before it could be killed: {proc.stderr}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    rec = recover(journal)
    assert 0 < rec.snapshot_seq < rec.command_seq < COMMANDS
    assert rec.replayed == rec.command_seq - rec.snapshot_seq
    uninterrupted = OrderBook(INSTRUMENT)
    for cmd in stream[: rec.command_seq]:
        uninterrupted.process(cmd)
    assert rec.book.state_hash() == uninterrupted.state_hash()

    # The recovered engine carries on and ends where a clean run ends.
    engine = DurableEngine.open(journal, snapshot_every=SNAPSHOT_EVERY)
    tail = stream[rec.command_seq : rec.command_seq + 5_000]
    for i in range(0, len(tail), 100):
        engine.submit_batch(tail[i : i + 100])
    engine.close()
    for cmd in tail:
        uninterrupted.process(cmd)
    assert recover(journal).book.state_hash() == uninterrupted.state_hash()
