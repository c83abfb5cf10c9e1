"""The signing log: append-only, hash-chained, verified on every read."""

from __future__ import annotations

from pathlib import Path

import pytest

from signer.results import SignerCode, SignerError
from signer.signing_log import EVENT_ONLINE_OVERRIDE, EVENT_SIGNED, GENESIS_SHA256, SigningLog


def _signed(bundle_id: str, request: str) -> dict[str, str]:
    return {
        "bundle_id": bundle_id,
        "bundle_sha256": "aa" * 32,
        "request": request,
        "chain": "bitcoin",
        "network": "regtest",
        "signer_id": "01020304",
        "output_sha256": "bb" * 32,
        "summary": "1 BTC to x",
    }


def test_log_entries_chain_and_history_indexes_them(tmp_path: Path) -> None:
    log = SigningLog(tmp_path / "log.jsonl")
    first = log.append(EVENT_SIGNED, 1, _signed("b1", "withdrawal/w1"))
    log.append(EVENT_ONLINE_OVERRIDE, 2, {"interfaces": "eth0", "command": "sign"})
    third = log.append(EVENT_SIGNED, 3, _signed("b2", "refill/r1"))
    entries = log.entries()
    assert [e.seq for e in entries] == [0, 1, 2]
    assert first.prev_sha256 == GENESIS_SHA256
    assert entries[1].prev_sha256 == first.sha256
    assert log.head_sha256() == third.sha256
    history = log.history()
    assert set(history.by_bundle) == {"b1", "b2"}
    assert history.by_request["withdrawal/w1"].bundle_id == "b1"


@pytest.mark.parametrize(
    "edit",
    [
        lambda lines: [lines[0].replace(b"1 BTC", b"9 BTC"), *lines[1:]],  # Edited entry: next prev breaks.
        lambda lines: [lines[0], lines[2]],  # Removed entry in the middle.
        lambda lines: [lines[1], lines[0], lines[2]],  # Reordered.
        lambda lines: [*lines[:2], lines[2].rstrip(b"\n")],  # Torn last write.
        lambda lines: [lines[0].replace(b'"seq":0', b'"seq": 0'), *lines[1:]],  # Not canonical.
    ],
)
def test_edited_log_refused_log_corrupt(tmp_path: Path, edit: object) -> None:
    path = tmp_path / "log.jsonl"
    log = SigningLog(path)
    for n in range(3):
        log.append(EVENT_SIGNED, n, _signed(f"b{n}", f"withdrawal/w{n}"))
    path.write_bytes(b"".join(edit(path.read_bytes().splitlines(keepends=True))))  # type: ignore[operator]
    with pytest.raises(SignerError) as error:
        log.entries()
    assert error.value.code is SignerCode.LOG_CORRUPT
    with pytest.raises(SignerError):
        log.append(EVENT_SIGNED, 9, _signed("b9", "withdrawal/w9"))


def test_missing_log_is_empty(tmp_path: Path) -> None:
    log = SigningLog(tmp_path / "none.jsonl")
    assert log.entries() == []
    assert log.head_sha256() == GENESIS_SHA256
