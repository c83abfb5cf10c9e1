"""The examples in docs/scale-out.md parse with the code that reads those formats."""

from __future__ import annotations

import re
from pathlib import Path

from exchange.engine.messages import NewOrder, Rejected, Trade
from exchange.stream.margin import MarginBook, Position
from exchange.stream.publisher import validate_command
from exchange.stream.settlement import FeeSchedule, fee_postings
from exchange.stream.wire import batch_decoder, batch_msg_id

DOC = Path(__file__).resolve().parents[3] / "docs" / "scale-out.md"


def _json_blocks() -> list[bytes]:
    return [b.strip().encode() for b in re.findall(r"```json\n(.*?)```", DOC.read_text(), re.S)]


def test_scaleout_doc_command_example_is_a_valid_replay_line() -> None:
    cmd = validate_command(_json_blocks()[0])
    assert isinstance(cmd, NewOrder)
    assert (cmd.id, cmd.account, cmd.qty, cmd.price) == ("o-17", "alice", 5, 1000)


def test_scaleout_doc_event_batch_example_decodes_and_settles_with_stream_ids() -> None:
    batch = batch_decoder.decode(_json_blocks()[1])
    assert batch_msg_id(batch) == "BTC-PERP:41-42"
    assert [c.seq for c in batch.commands] == [41, 42]
    assert isinstance(batch.commands[0].events[1], Trade)
    assert isinstance(batch.commands[1].events[0], Rejected)
    postings = fee_postings(batch, FeeSchedule("USDC", taker_fee_ppm=500, maker_fee_ppm=200))
    assert [(p.transfer_id, p.payer, p.amount) for p in postings] == [
        ("fee.BTC-PERP.41.0.t", "alice", 2), ("fee.BTC-PERP.41.0.m", "bob", 1)]


def test_scaleout_doc_event_batch_example_folds_to_documented_margin_ids() -> None:
    batch = batch_decoder.decode(_json_blocks()[1])
    book = MarginBook(im_ppm=100_000)
    book.last_seq["BTC-PERP"] = 40  # the example is the middle of a stream
    postings = book.apply(batch)
    assert [(p.id, p.kind.value, p.account, p.amount, p.pending_id) for p in postings] == [
        ("imv.BTC-PERP.41.0", "void", "alice", 0, "im.o-17"),
        ("pm.BTC-PERP.41.0", "single", "alice", 500, None),
        ("pm.BTC-PERP.41.1", "single", "bob", 500, None),
        ("imv.BTC-PERP.42.r", "void", "", 0, "im.o-18"),
    ]
    assert book.positions[("alice", "BTC-PERP")] == Position(5, 5000)


def test_scaleout_doc_control_examples_decode_and_round_trip() -> None:
    import msgspec

    from exchange.stream.controls import CONTROL_PREFIX, Control, VoidHold, encode_control

    controls = msgspec.json.decode(_json_blocks()[2], type=list[Control])
    assert [type(c).__name__ for c in controls] == ["SetStatus", "SetBreaker", "ArmDeadman", "VoidHold"]
    assert all(encode_control(c).startswith(CONTROL_PREFIX) for c in controls)
    assert controls[3] == VoidHold("0123456789abcdef:bid-7", 1700000000000000000)
