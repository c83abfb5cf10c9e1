"""The clearing-shard examples in docs/scale-out.md parse with the code that reads them."""

from __future__ import annotations

import re
from pathlib import Path

from exchange.commands import Place
from exchange.instruments import load_instruments
from exchange.stream.shard.machine import ShardMachine
from exchange.stream.shard.wire import command_decoder

DOC = Path(__file__).resolve().parents[3] / "docs" / "scale-out.md"


def _shard_command_examples() -> list[bytes]:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(), re.S)
    return [b.strip().encode() for b in blocks if b.lstrip().startswith('{"cmd":')]


def test_shard_doc_command_example_decodes_and_applies_as_a_limit_order_with_limits() -> None:
    [example] = _shard_command_examples()
    command = command_decoder.decode(example)
    assert isinstance(command.cmd, Place) and command.cmd.order.id == "u1:c7"
    assert command.user == "alice" and command.limits is not None
    assert command.limits.max_notional == 500_000_000_000
    result = ShardMachine(load_instruments(), "MAIN").apply(1, example)
    assert result.seq == 1 and result.code != 3101  # decodes; refused for want of collateral
