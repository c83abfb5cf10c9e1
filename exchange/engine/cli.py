"""`strongroom-engine`: replay command files through one book, recover journals.

See docs/engine-replay.md for the formats.
"""

import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import click

from exchange.engine.fastbook import FastBook
from exchange.engine.instrument import Instrument
from exchange.engine.journal import FsyncPolicy, JournalCorrupt
from exchange.engine.orderbook import OrderBook
from exchange.engine.recovery import DEFAULT_SNAPSHOT_EVERY, DurableEngine, recover
from exchange.engine.replay import (
    ReplayError,
    ReplayResult,
    final_book_lines,
    replay,
    replay_durable,
)
from exchange.engine.snapshot import SnapshotCorrupt

EXIT_BAD_INPUT = 2
EXIT_BAD_JOURNAL = 3


def _open_in(stack: ExitStack, path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    return stack.enter_context(open(path, "rb"))


def _open_out(stack: ExitStack, path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdout.buffer
    return stack.enter_context(open(path, "wb", buffering=1 << 20))


def _fail(message: str, code: int) -> None:
    click.echo(f"strongroom-engine: error: {message}", err=True)
    sys.exit(code)


@click.group()
def cli() -> None:
    """Run and recover Strongroom matching engines."""


@cli.command("replay")
@click.option("--in", "input_path", required=True, help="commands JSONL file ('-' = stdin)")
@click.option("--out", "output_path", required=True, help="events JSONL file ('-' = stdout)")
@click.option("--final-book", "final_book", default=None, help="write resting orders here")
@click.option("--skip-invalid", is_flag=True, help="reject bad lines and continue")
@click.option("--market-data", is_flag=True, help="also emit depth and bbo events")
@click.option("--symbol", default="REPLAY", show_default=True)
@click.option("--tick-size", type=int, default=1, show_default=True)
@click.option("--lot-size", type=int, default=1, show_default=True)
@click.option("--min-qty", type=int, default=1, show_default=True)
@click.option("--max-qty", type=int, default=1_000_000_000, show_default=True)
@click.option("--band-bps", type=int, default=None, help="price band; default: none")
@click.option("--reference-price", type=int, default=None, help="initial band reference")
@click.option("--journal-dir", type=click.Path(path_type=Path), default=None,
              help="journal + snapshot the run into this new directory")
@click.option("--fsync", "fsync", type=click.Choice([p.value for p in FsyncPolicy]),
              default="always", show_default=True)
@click.option("--fsync-interval-ms", type=int, default=5, show_default=True)
@click.option("--snapshot-every", type=int, default=DEFAULT_SNAPSHOT_EVERY, show_default=True)
@click.option("--group-commit", type=int, default=1, show_default=True,
              help="commands per journal commit")
@click.option("--summary", is_flag=True, help="print a JSON summary to stderr")
def replay_command(
    input_path: str, output_path: str, final_book: str | None, skip_invalid: bool,
    market_data: bool, symbol: str, tick_size: int, lot_size: int, min_qty: int, max_qty: int,
    band_bps: int | None, reference_price: int | None, journal_dir: Path | None, fsync: str,
    fsync_interval_ms: int, snapshot_every: int, group_commit: int, summary: bool,
) -> None:
    """Replay one instrument's commands (pure matching, no accounts or margin)."""
    instrument = Instrument(symbol, tick_size, lot_size, min_qty, max_qty, band_bps,
                            reference_price)
    try:
        instrument.check()
    except ValueError as exc:
        _fail(f"instrument: {exc}", EXIT_BAD_INPUT)
    if group_commit <= 0:
        _fail(f"--group-commit was {group_commit}, must be positive", EXIT_BAD_INPUT)
    started_ns = time.perf_counter_ns()
    engine: DurableEngine | None = None
    with ExitStack() as stack:
        src = _open_in(stack, input_path)
        out = _open_out(stack, output_path)
        try:
            if journal_dir is None:
                book: OrderBook | FastBook = FastBook(instrument, market_data=market_data,
                                                      encoded_events=True)
                result = replay(src, out, book, skip_invalid=skip_invalid)
            else:
                engine = DurableEngine.create(
                    journal_dir, instrument, market_data=market_data,
                    policy=FsyncPolicy(fsync), interval_ms=fsync_interval_ms,
                    snapshot_every=snapshot_every,
                )
                stack.callback(engine.close)
                book = engine.book
                result = replay_durable(src, out, engine, skip_invalid=skip_invalid,
                                        group_commit=group_commit)
        except ReplayError as exc:
            out.flush()
            _fail(str(exc), EXIT_BAD_INPUT)
        except (FileExistsError, ValueError) as exc:
            _fail(str(exc), EXIT_BAD_INPUT)
    if final_book is not None:
        Path(final_book).write_bytes(final_book_lines(book))
    if summary:
        _print_summary(result, book, time.perf_counter_ns() - started_ns)


def _print_summary(result: ReplayResult, book: OrderBook | FastBook, elapsed_ns: int) -> None:
    info: dict[str, Any] = {
        "commands": result.commands,
        "invalid": result.invalid,
        "event_seq": book.seq,
        "resting": len(book.orders),
        "state_hash": book.state_hash(),
        "elapsed_s": round(elapsed_ns / 1e9, 6),
        "commands_per_s": int(result.commands * 1e9 / elapsed_ns) if elapsed_ns else 0,
    }
    click.echo(json.dumps(info), err=True)


@cli.command("recover")
@click.option("--journal-dir", type=click.Path(path_type=Path, exists=True, file_okay=False),
              required=True)
@click.option("--final-book", "final_book", default=None, help="write resting orders here")
def recover_command(journal_dir: Path, final_book: str | None) -> None:
    """Rebuild a book from snapshot + journal (read-only) and print its state as JSON."""
    try:
        rec = recover(journal_dir)
    except (JournalCorrupt, SnapshotCorrupt) as exc:
        _fail(str(exc), EXIT_BAD_JOURNAL)
        return
    if final_book is not None:
        Path(final_book).write_bytes(final_book_lines(rec.book))
    click.echo(json.dumps({
        "command_seq": rec.command_seq,
        "event_seq": rec.book.seq,
        "snapshot_seq": rec.snapshot_seq,
        "replayed": rec.replayed,
        "torn_bytes": rec.torn_bytes,
        "resting": len(rec.book.orders),
        "state_hash": rec.book.state_hash(),
    }))


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
