"""`strongroom-engine` command line behaviour."""

import json
from pathlib import Path

import msgspec
from click.testing import CliRunner
from engine_streams import INSTRUMENT, random_stream

from exchange.engine.cli import cli
from exchange.engine.orderbook import OrderBook

GOOD = '{"op":"new","id":"o1","account":"a1","side":"buy","type":"limit","price":10010,"qty":5}\n'


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_bad_line_reports_line_number_and_exits_non_zero(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(GOOD + "\n" + '{"op":"new","id":"o2","account":"a","side":"buy","qty":2.5}\n')
    code, output = invoke("replay", "--in", str(src), "--out", str(tmp_path / "out.jsonl"))
    assert code == 2
    assert "line 3" in output and "Expected `int`, got `float`" in output
    # Events of the lines before the bad one are written.
    assert json.loads((tmp_path / "out.jsonl").read_text())["type"] == "accepted"


def test_malformed_json_and_unknown_op_are_bad_lines(tmp_path: Path) -> None:
    for bad in ("{not json", '{"op":"explode"}', '{"op":"cancel"}', '{"op":"cancel","id":"x","z":1}'):
        src = tmp_path / "in.jsonl"
        src.write_text(GOOD + bad + "\n")
        code, output = invoke("replay", "--in", str(src), "--out", str(tmp_path / "o.jsonl"))
        assert code == 2 and "line 2" in output, bad


def test_skip_invalid_rejects_bad_line_and_continues(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"op":"new","id":"o9","qty":"lots"}\n' + GOOD)
    out = tmp_path / "out.jsonl"
    code, _ = invoke("replay", "--in", str(src), "--out", str(out), "--skip-invalid")
    assert code == 0
    first, second = (json.loads(line) for line in out.read_text().splitlines())
    assert (first["type"], first["id"], first["code"], first["reason"]) == (
        "rejected", "o9", 3018, "invalid_command")
    assert first["message"].startswith("line 1:")
    assert second["type"] == "accepted"


def test_final_book_lists_resting_orders_in_priority_order(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    lines = [
        {"op": "new", "id": "b1", "account": "a", "side": "buy", "price": 99, "qty": 1},
        {"op": "new", "id": "b2", "account": "a", "side": "buy", "price": 100, "qty": 2},
        {"op": "new", "id": "b3", "account": "a", "side": "buy", "price": 100, "qty": 3},
        {"op": "new", "id": "s1", "account": "a", "side": "sell", "price": 101, "qty": 4},
    ]
    src.write_text("".join(json.dumps(line) + "\n" for line in lines))
    book = tmp_path / "book.jsonl"
    code, _ = invoke("replay", "--in", str(src), "--out", str(tmp_path / "o"),
                     "--final-book", str(book))
    assert code == 0
    rows = [json.loads(line) for line in book.read_text().splitlines()]
    assert [(r["id"], r["side"], r["price"], r["qty"]) for r in rows] == [
        ("b2", "buy", 100, 2), ("b3", "buy", 100, 3), ("b1", "buy", 99, 1), ("s1", "sell", 101, 4)]


def test_replay_output_equals_in_process_engine(tmp_path: Path) -> None:
    stream = random_stream(5, 2_000)
    src = tmp_path / "in.jsonl"
    src.write_bytes(msgspec.json.Encoder().encode_lines(stream))
    out = tmp_path / "out.jsonl"
    code, output = invoke(
        "replay", "--in", str(src), "--out", str(out), "--market-data", "--symbol", "TEST",
        "--tick-size", "2", "--max-qty", "20", "--band-bps", "300", "--reference-price", "1000",
    )
    assert code == 0, output
    book = OrderBook(INSTRUMENT, market_data=True)
    for cmd in stream:
        book.process(cmd)
    assert out.read_bytes() == msgspec.json.Encoder().encode_lines(book.events)


def test_journaled_replay_then_recover_prints_same_state_hash(tmp_path: Path) -> None:
    stream = random_stream(6, 3_000)
    src = tmp_path / "in.jsonl"
    src.write_bytes(msgspec.json.Encoder().encode_lines(stream))
    flags = ["--symbol", "TEST", "--tick-size", "2", "--max-qty", "20", "--band-bps", "300",
             "--reference-price", "1000"]
    result = CliRunner().invoke(cli, [
        "replay", "--in", str(src), "--out", str(tmp_path / "o"), "--journal-dir",
        str(tmp_path / "j"), "--fsync", "interval", "--snapshot-every", "1000",
        "--group-commit", "16", "--summary", *flags])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stderr.strip().splitlines()[-1])
    code, output = invoke("recover", "--journal-dir", str(tmp_path / "j"))
    assert code == 0, output
    info = json.loads(output)
    assert info["command_seq"] == 3_000 and info["snapshot_seq"] == 3_000
    assert info["state_hash"] == summary["state_hash"]


def test_recover_reports_corruption_with_exit_code_3(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(GOOD * 1 + GOOD.replace("o1", "o2") + GOOD.replace("o1", "o3"))
    code, _ = invoke("replay", "--in", str(src), "--out", str(tmp_path / "o"),
                     "--journal-dir", str(tmp_path / "j"))
    assert code == 0
    [segment] = (tmp_path / "j").glob("journal-*.log")
    data = bytearray(segment.read_bytes())
    data[12] ^= 0xFF  # CRC of the first record; two good records follow
    segment.write_bytes(bytes(data))
    code, output = invoke("recover", "--journal-dir", str(tmp_path / "j"))
    assert code == 3 and "CRC mismatch" in output
