"""Replay JSONL commands through one book and write JSONL events.

This is the shell around the pure core used by `strongroom-engine replay`
and the benchmark: decoding, batching of output, optional journaling.
"""

import gc
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from typing import IO

import msgspec

from exchange.engine.fastbook import FastBook, jsonl_lines
from exchange.engine.messages import Command, Malformed
from exchange.engine.orderbook import OrderBook
from exchange.engine.recovery import DurableEngine

# Commands go to the book in batches (`process_many`, one C loop on FastBook)
# and each batch's events are written after it. Small batches keep the
# objects and buffers of one batch in memory the allocator already holds
# (batches of 1024 cost ~20% more CPU in page faults and arena churn).
INPUT_BATCH_COMMANDS = 256

_decoder: msgspec.json.Decoder[Command] = msgspec.json.Decoder(Command)
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class ReplayError(Exception):
    """An input line could not be parsed (and --skip-invalid was not given)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass(frozen=True)
class ReplayResult:
    """Counts of one replay run."""

    commands: int
    invalid: int


def parse_line(line_no: int, line: bytes, skip_invalid: bool) -> Command:
    """Decode one input line; bad lines raise or become `Malformed` commands."""
    try:
        return _decoder.decode(line)
    except msgspec.DecodeError as exc:
        if not skip_invalid:
            raise ReplayError(line_no, str(exc)) from None
        return Malformed(line_no, str(exc), _guess_id(line))


def _guess_id(line: bytes) -> str | None:
    try:
        obj = _any_decoder.decode(line)
    except msgspec.DecodeError:
        return None
    if isinstance(obj, dict):
        value = obj.get("id")
        if isinstance(value, str):
            return value
    return None


def _decode_chunk(chunk: list[bytes]) -> list[Command] | None:
    """Decode `chunk` (one JSON object per line) in one call, or None to go line by line.

    `decode_lines` alone is laxer than one `decode` per line (it accepts two
    objects on a line, or one object over two lines), so the fast path is
    taken only when every line starts with "{" and ends with "}" (then each
    line boundary is an object boundary) and there are as many commands as
    lines. Anything else (blank lines, CRLF, padding, a bad line) takes the
    exact per-line path.
    """
    data = b"".join(chunk)
    if not data.endswith(b"\n"):
        data += b"\n"
    lines = len(chunk)
    if jsonl_lines(data) != lines:
        return None
    try:
        cmds = _decoder.decode_lines(data)
    except msgspec.DecodeError:
        return None
    return cmds if len(cmds) == lines else None


def replay(
    lines: Iterable[bytes],
    out: IO[bytes],
    book: OrderBook | FastBook,
    *,
    skip_invalid: bool = False,
) -> ReplayResult:
    """Run every non-blank line through `book`, writing events to `out`.

    Lines are decoded and run in chunks of INPUT_BATCH_COMMANDS (one
    `decode_lines` and one `process_many` call each) when a chunk is plain
    JSONL; otherwise line by line, where a bad line first runs the commands
    before it, so its error (or its `Malformed` rejection) comes exactly
    where the line is.

    The cyclic garbage collector is paused for the run: the book unlinks
    every order it drops, so all its garbage is freed by reference counting,
    and collections over tens of thousands of live orders would only add
    pauses (about a tenth of the replay time).
    """
    commands = 0
    invalid = 0
    gc_was_enabled = gc.isenabled()
    gc.disable()
    process_many = book.process_many
    decode = _decoder.decode
    source = iter(lines)
    line_no = 0
    if isinstance(book, FastBook):
        drain = book.take_encoded
    else:
        events = book.events

        def drain() -> bytes:
            data = _encoder.encode_lines(events)
            events.clear()
            return data

    try:
        while chunk := list(islice(source, INPUT_BATCH_COMMANDS)):
            fast = _decode_chunk(chunk)
            if fast is not None:
                process_many(fast)
                commands += len(fast)
                line_no += len(chunk)
            else:
                batch: list[Command] = []
                for line in chunk:
                    line_no += 1
                    try:
                        batch.append(decode(line))
                    except msgspec.DecodeError:
                        if not line.strip():
                            continue
                        process_many(batch)
                        commands += len(batch)
                        batch = [parse_line(line_no, line, skip_invalid)]
                        invalid += 1
                process_many(batch)
                commands += len(batch)
            out.write(drain())
    finally:
        if gc_was_enabled:
            gc.enable()
        out.write(drain())
    return ReplayResult(commands, invalid)


def replay_durable(
    lines: Iterable[bytes],
    out: IO[bytes],
    engine: DurableEngine,
    *,
    skip_invalid: bool = False,
    group_commit: int = 1,
) -> ReplayResult:
    """Like `replay`, but journal each group of commands before running it."""
    commands = 0
    invalid = 0
    pending: list[Command] = []
    try:
        for line_no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            cmd = parse_line(line_no, line, skip_invalid)
            invalid += isinstance(cmd, Malformed)
            pending.append(cmd)
            if len(pending) >= group_commit:
                out.write(_encoder.encode_lines(engine.submit_batch(pending)))
                commands += len(pending)
                pending = []
    finally:
        if pending:
            out.write(_encoder.encode_lines(engine.submit_batch(pending)))
            commands += len(pending)
    return ReplayResult(commands, invalid)


def final_book_lines(book: OrderBook | FastBook) -> bytes:
    """Return resting orders as JSONL: bids best first, then asks best first.

    Within a price level orders appear in time priority.
    """
    state = book.state()
    rows = [
        {"id": o.id, "side": o.side, "price": o.price, "qty": o.qty, "account": o.account}
        for o in [*state.bids, *state.asks]
    ]
    return _encoder.encode_lines(rows)
