"""The worked example in docs/engine-replay.md is exactly what the CLI does."""

import re
from pathlib import Path

from click.testing import CliRunner

from exchange.engine.cli import cli

DOC = Path(__file__).resolve().parents[3] / "docs" / "engine-replay.md"


def example_block(name: str) -> str:
    match = re.search(rf"<!-- example: {name} -->\n```jsonl\n(.*?)```", DOC.read_text(), re.S)
    assert match, f"docs/engine-replay.md has no '{name}' example block"
    return match.group(1)


def test_documented_example_replays_to_documented_events_and_book(tmp_path: Path) -> None:
    commands = tmp_path / "commands.jsonl"
    commands.write_text(example_block("commands"))
    events, book = tmp_path / "events.jsonl", tmp_path / "book.jsonl"
    result = CliRunner().invoke(
        cli, ["replay", "--in", str(commands), "--out", str(events), "--final-book", str(book)]
    )
    assert result.exit_code == 0, result.output
    assert events.read_text() == example_block("events")
    assert book.read_text() == example_block("final-book")


def test_documented_output_fields_are_present() -> None:
    required = {
        "accepted": {"seq", "type", "id"},
        "trade": {"seq", "type", "maker", "taker", "price", "qty"},
        "cancelled": {"seq", "type", "id", "qty", "reason"},
        "rejected": {"seq", "type", "id", "reason"},
        "amended": {"seq", "type", "id"},
    }
    import json

    seen = set()
    for line in example_block("events").splitlines():
        event = json.loads(line)
        assert required[event["type"]] <= event.keys()
        seen.add(event["type"])
    assert seen == set(required)
