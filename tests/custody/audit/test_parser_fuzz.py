"""Fuzzing the auditor's parsers: whatever the bytes, no traceback and no false VERIFIED."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custody.audit.cli import main as audit_main
from custody.audit.export import KEYS_FILE, keys_fingerprint, parse_keys, read_json
from custody.audit.liability_proof import verify_liability_proof

from .doc_examples import build
from .test_docs import examples

# Files whose every byte is signed or checked against the signed journal: any change must fail.
CHECKED_FILES = ("entries.jsonl", "checkpoints.jsonl", "accounts.jsonl", "snapshots.jsonl",
                 "liabilities.jsonl")
# Files that are claims in a free JSON layout: a change must fail unless it means the same.
LAYOUT_FILES = ("manifest.json", "keys.json")
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def clean_export(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    directory = tmp_path_factory.mktemp("clean") / "export"
    build(directory)
    return {path.name: path.read_bytes() for path in directory.iterdir()}


def _mutate(data: bytes, position: int, operation: str, value: int) -> bytes:
    position %= max(len(data), 1)
    if operation == "flip":
        return data[:position] + bytes([data[position] ^ (1 << (value % 8))]) + data[position + 1:]
    if operation == "replace":
        return data[:position] + bytes([value]) + data[position + 1:]
    if operation == "insert":
        return data[:position] + bytes([value]) + data[position:]
    return data[:position] + data[position + 1:]


def _same_json(a: bytes, b: bytes) -> bool:
    """Tell whether two JSON documents mean the same, ignoring the manifest's informational
    ``created_ms`` (when the export was written: an unsigned claim nothing can check)."""
    try:
        first, second = json.loads(a), json.loads(b)
    except ValueError:
        return False
    for doc in (first, second):
        if isinstance(doc, dict) and isinstance(doc.get("created_ms"), int):
            doc["created_ms"] = 0
    return bool(first == second)


def _run(directory: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = audit_main(["verify", str(directory), "--keys", str(keys)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@FUZZ
@given(name=st.sampled_from(CHECKED_FILES + LAYOUT_FILES), position=st.integers(0, 10**6),
       operation=st.sampled_from(["flip", "replace", "insert", "delete"]), value=st.integers(0, 255))
def test_a_mutated_export_never_tracebacks_and_never_falsely_verifies(
    clean_export: dict[str, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    name: str, position: int, operation: str, value: int,
) -> None:
    directory = Path(tempfile.mkdtemp(dir=tmp_path))
    for file_name, data in clean_export.items():
        (directory / file_name).write_bytes(data)
    keys = directory.parent / "pinned-keys.json"
    keys.write_bytes(clean_export[KEYS_FILE])
    mutated = _mutate(clean_export[name], position, operation, value)
    (directory / name).write_bytes(mutated)
    code, out, err = _run(directory, keys, capsys)
    assert code in (0, 1, 2)
    assert "Traceback" not in out + err
    unchanged = mutated == clean_export[name] or (
        name in LAYOUT_FILES and _same_json(mutated, clean_export[name]))
    if not unchanged:
        assert code != 0, f"{name} {operation} at {position} verified:\n{out}"
        assert "result: VERIFIED" not in out


def test_the_clean_example_export_verifies(
    clean_export: dict[str, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for file_name, data in clean_export.items():
        (tmp_path / file_name).write_bytes(data)
    (tmp_path.parent / "k.json").write_bytes(clean_export[KEYS_FILE])
    code, out, _ = _run(tmp_path, tmp_path.parent / "k.json", capsys)
    assert code == 0, out


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**300, 2**300) | st.text(max_size=20)
    | st.sampled_from(["00" * 32, "0", str(2**256), "-1", "\x1b[2J"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                       max_size=4),
    max_leaves=12)


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _paths(child, (*prefix, index))
    return found


def _replace_at(node: object, path: tuple, value: object) -> object:
    if not path:
        return value
    copied = copy.deepcopy(node)
    target = copied
    for step in path[:-1]:
        target = target[step]  # type: ignore[index]
    target[path[-1]] = value  # type: ignore[index]
    return copied


PROOF = json.loads(examples("proof-of-reserves.md")["liability-proof"])
PUBLIC_KEY = parse_keys(json.loads(examples("ledger-export.md")["keys.json"]))[
    ("ledger-checkpoint", 1)].public_key
PROOF_PATHS = _paths(PROOF)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(index=st.integers(0, len(PROOF_PATHS) - 1), value=json_values)
def test_a_mutated_liability_proof_never_raises_and_never_falsely_verifies(index: int, value: object) -> None:
    mutated = _replace_at(PROOF, PROOF_PATHS[index], value)
    check = verify_liability_proof(mutated, PUBLIC_KEY)
    # With a pinned key the embedded public_key is not used: changing it changes nothing proven.
    if not (isinstance(mutated, dict) and {**mutated, "public_key": None} == {**PROOF, "public_key": None}):
        assert not check.ok, (PROOF_PATHS[index], value)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, 10**5), operation=st.sampled_from(["flip", "replace", "insert", "delete"]),
       value=st.integers(0, 255))
def test_a_mutated_proof_file_exits_1_or_2_with_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], position: int, operation: str, value: int
) -> None:
    raw = json.dumps(PROOF).encode()
    mutated = _mutate(raw, position, operation, value)
    proof, keys = tmp_path / "proof.json", tmp_path / "keys.json"
    proof.write_bytes(mutated)
    keys.write_text(examples("ledger-export.md")["keys.json"])
    code = audit_main(["verify-liability", str(proof), "--keys", str(keys)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    if not _same_json(mutated, raw):
        assert code in (1, 2) and "VERIFIED" not in captured.out


@pytest.mark.parametrize(("proof_text", "message"), [
    (lambda p: json.dumps(p).replace('"version": 2', '"version": 2, "version": 2', 1), "duplicate key"),
    (lambda p: json.dumps({**p, "leaf_index": [1, 2]}), "leaf_index and tree_size must be integers"),
    (lambda p: "[" * 50_000 + "]" * 50_000, "nested more than"),
    (lambda p: json.dumps({**p, "balance": str(2**256)}), "balance must be a decimal string"),
])
def test_unusable_liability_proofs_exit_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], proof_text, message: str  # type: ignore[no-untyped-def]
) -> None:
    (tmp_path / "proof.json").write_text(proof_text(PROOF))
    (tmp_path / "keys.json").write_text(examples("ledger-export.md")["keys.json"])
    assert audit_main(["verify-liability", str(tmp_path / "proof.json"), "--keys",
                       str(tmp_path / "keys.json")]) == 2
    assert message in capsys.readouterr().err


def test_keys_fingerprint_is_independent_of_the_keys_file_layout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = json.loads(examples("ledger-export.md")["keys.json"])
    (tmp_path / "a.json").write_text(json.dumps(document, indent=4))
    (tmp_path / "b.json").write_text(json.dumps(document, separators=(",", ":")))
    assert audit_main(["keys-fingerprint", str(tmp_path / "a.json")]) == 0
    first = capsys.readouterr().out
    assert audit_main(["keys-fingerprint", str(tmp_path / "b.json")]) == 0
    assert capsys.readouterr().out == first
    expected = keys_fingerprint(parse_keys(read_json(tmp_path / "a.json")).values())
    assert first.startswith(expected) and "ledger-checkpoint v1" in first
