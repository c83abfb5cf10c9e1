"""The verifier's compiled fast path (custody/audit/_fastscan.c) gives the pure verifier's report.

Every export here is checked twice, pure Python and compiled, and the two
machine-readable reports must be identical: the fast path may only be faster,
never more lenient. The forged exports are signed with the pinned key (the
operator lying with its own key), so chain hashes, Merkle roots and signatures
all hold and the entry checks themselves must catch the lie.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custody.audit import fastscan, untrusted
from custody.audit.export import ENTRIES_FILE, parse_keys, read_json
from custody.audit.verify import Report, verify_export
from custody.ledger.entry import Entry, TransferKind

from .helpers import chain_hash, codes, signed_export

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
HOT, ALICE, BOB, FLIGHT, MARGIN, USDC_HOT, USDC_ALICE = 1, 2, 3, 4, 5, 6, 7
OPENED = 7


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The extension, built from the current source into a scratch directory."""
    try:
        path = fastscan.build(tmp_path_factory.mktemp("fastscan"))
    except (RuntimeError, OSError) as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"cannot build the compiled fast path here: {exc}")
    return fastscan.load_from(path)


def entry(seq: int, tid: str, kind: TransferKind, debit: int, credit: int, amount: int,
          asset: str = "BTC", pending_id: str | None = None, reference: str = "") -> bytes:
    return Entry(seq=seq, id=tid, kind=kind, debit_account=debit, credit_account=credit, asset=asset,
                 amount=amount, pending_id=pending_id, timeout_s=0, expires_ms=None, code=0,
                 reference=reference, timestamp_ms=1_000 + seq, actor="service:test").to_bytes()


def opening(seq: int, account: int, owner: str, kind: str, flags: int, asset: str = "BTC") -> bytes:
    return Entry(seq=seq, id=f"open:{account}", kind=TransferKind.OPEN, debit_account=account,
                 credit_account=account, asset=asset, amount=0, pending_id=None, timeout_s=0,
                 expires_ms=None, code=0, reference="", timestamp_ms=1, actor="service:ledger",
                 account_owner=owner, account_kind=kind, account_flags=flags).to_bytes()


def journal() -> list[bytes]:
    """Openings, deposits, trades, holds posted, voided and expired, in two assets and on margin."""
    raws = [
        opening(1, HOT, "platform", "hot_wallet", 2),
        opening(2, ALICE, "alice", "user_available", 1),
        opening(3, BOB, "bob", "user_available", 1),
        opening(4, FLIGHT, "platform", "withdrawals_in_flight", 0),
        opening(5, MARGIN, "alice", "user_margin", 0),
        opening(6, USDC_HOT, "platform", "hot_wallet", 2, "USDC"),
        opening(7, USDC_ALICE, "alice", "user_available", 1, "USDC"),
    ]
    S, P = TransferKind.SINGLE, TransferKind.PENDING
    rows = [
        ("dep-a", S, HOT, ALICE, 1_000, "BTC", None),
        ("dep-b", S, HOT, BOB, 500, "BTC", None),
        ("dep-usdc", S, USDC_HOT, USDC_ALICE, 10**30, "USDC", None),
        ("hold-a", P, ALICE, FLIGHT, 100, "BTC", None),
        ("hold-b", P, BOB, FLIGHT, 50, "BTC", None),
        ("hold-c", P, ALICE, FLIGHT, 30, "BTC", None),
        ("trade-1", S, ALICE, BOB, 7, "BTC", None),
        ("post-a", TransferKind.POST, ALICE, FLIGHT, 60, "BTC", "hold-a"),
        ("void-b", TransferKind.VOID, BOB, FLIGHT, 50, "BTC", "hold-b"),
        ("expire-c", TransferKind.EXPIRE, ALICE, FLIGHT, 30, "BTC", "hold-c"),
        ("margin-1", S, MARGIN, BOB, 40, "BTC", None),  # margin may go negative by design
        ("trade-2", S, BOB, ALICE, 3, "BTC", None),
        ("usdc-back", S, USDC_ALICE, USDC_HOT, 10**29, "USDC", None),
    ]
    for tid, kind, debit, credit, amount, asset, pending in rows:
        raws.append(entry(len(raws) + 1, tid, kind, debit, credit, amount, asset, pending))
    for i in range(6):
        raws.append(entry(len(raws) + 1, f"trade-x{i}", S, ALICE, BOB, 1 + i, reference=f"ref {i}"))
    return raws


def both(directory: Path, compiled: ModuleType) -> Report:
    """Verify with both paths; the reports must be identical. Return the compiled one."""
    pinned = parse_keys(read_json(directory / "keys.json"))
    pure = verify_export(directory, pinned, fast=None)
    fast = verify_export(directory, pinned, fast=compiled)
    assert fast.to_dict() == pure.to_dict()
    return fast


def forged(tmp_path: Path, raws: list[bytes], compiled: ModuleType) -> Report:
    directory = tmp_path / "export"
    if directory.exists():
        shutil.rmtree(directory)
    signed_export(directory, raws, KEY)
    return both(directory, compiled)


def line_of(raws: list[bytes], tid: str) -> int:
    return next(i for i, raw in enumerate(raws) if f'"id":"{tid}"'.encode() in raw)


def edit(tid: str, old: bytes, new: bytes) -> Callable[[list[bytes]], list[bytes]]:
    def apply(raws: list[bytes]) -> list[bytes]:
        index = line_of(raws, tid)
        assert old in raws[index], (old, raws[index])
        return [*raws[:index], raws[index].replace(old, new, 1), *raws[index + 1:]]
    return apply


# (mutation, the failure codes the verifier must report)
REFUSED: dict[str, tuple[Callable[[list[bytes]], list[bytes]], set[str]]] = {
    "overdraft": (edit("trade-1", b'"amount":"7"', b'"amount":"100000"'), {"balance_negative"}),
    "wallet_sends_more_than_it_holds": (
        edit("trade-2", b'"amount":"3","asset":"BTC","code":0,"credit_account":2,"debit_account":3',
             b'"amount":"9999","asset":"BTC","code":0,"credit_account":1,"debit_account":5'),
        {"balance_negative"}),
    "reused_id": (edit("trade-2", b'"id":"trade-2"', b'"id":"trade-1"'), {"entry_invalid"}),
    "reserved_open_id": (edit("trade-2", b'"id":"trade-2"', b'"id":"open:99"'), {"entry_invalid"}),
    "unknown_account": (edit("trade-2", b'"credit_account":2', b'"credit_account":99'), {"entry_invalid"}),
    "same_account_twice": (edit("trade-2", b'"credit_account":2', b'"credit_account":3'), {"entry_invalid"}),
    "asset_mismatch": (edit("trade-2", b'"asset":"BTC"', b'"asset":"ETH"'), {"entry_invalid"}),
    "zero_amount": (edit("trade-2", b'"amount":"3"', b'"amount":"0"'), {"entry_malformed"}),
    "leading_zero_amount": (edit("trade-2", b'"amount":"3"', b'"amount":"03"'), {"entry_malformed"}),
    "amount_not_digits": (edit("trade-2", b'"amount":"3"', b'"amount":"3e0"'), {"entry_malformed"}),
    "amount_over_2_256": (edit("trade-2", b'"amount":"3"', b'"amount":"' + str(2**256).encode() + b'"'),
                          {"entry_malformed"}),
    "bad_actor": (edit("trade-2", b'"actor":"service:test"', b'"actor":"root"'), {"entry_malformed"}),
    "empty_actor_name": (edit("trade-2", b'"actor":"service:test"', b'"actor":"user:"'),
                         {"entry_malformed"}),
    "actor_trailing_newline": (edit("trade-2", b'"actor":"service:test"', b'"actor":"service:test\\n"'),
                               {"entry_malformed"}),
    "owner_trailing_newline": (lambda raws: [*raws[:-1], opening(len(raws), 99, "carol\n",
                                                                 "user_available", 1)],
                               {"account_open_invalid"}),
    "future_version": (edit("trade-2", b'"v":2}', b'"v":3}'), {"entry_malformed"}),
    "unknown_kind": (edit("trade-2", b'"kind":"single"', b'"kind":"sideways"'), {"entry_invalid"}),
    "whitespace": (edit("trade-2", b'"amount":"3"', b'"amount": "3"'), {"entry_malformed"}),
    "non_canonical_escape": (edit("trade-x1", b'"reference":"ref 1"', b'"reference":"\\u0041"'),
                             {"entry_malformed"}),
    "raw_utf8": (edit("trade-x1", b'"reference":"ref 1"', '"reference":"r\u00e9f"'.encode()),
                 {"entry_malformed"}),
    "leading_zero_int": (edit("trade-2", b'"code":0', b'"code":00'), {"entry_malformed"}),
    "negative_zero": (edit("trade-2", b'"code":0', b'"code":-0'), {"entry_malformed"}),
    "duplicate_key": (edit("trade-2", b'"v":2}', b'"v":2,"v":2}'), {"entry_malformed"}),
    "unknown_key": (edit("trade-2", b'"v":2}', b'"v":2,"w":1}'), {"entry_malformed"}),
    "post_of_unknown_pending": (edit("post-a", b'"pending_id":"hold-a"', b'"pending_id":"hold-z"'),
                                {"pending_invalid"}),
    "post_more_than_held": (edit("post-a", b'"amount":"60"', b'"amount":"101"'), {"pending_invalid"}),
    "void_of_part": (edit("void-b", b'"amount":"50"', b'"amount":"49"'), {"pending_invalid"}),
    "post_between_other_accounts": (edit("post-a", b'"pending_id":"hold-a"', b'"pending_id":"hold-b"'),
                                    {"pending_invalid"}),
    "post_without_pending_id": (edit("post-a", b'"pending_id":"hold-a"', b'"pending_id":null'),
                                {"pending_invalid"}),
    "resolved_twice": (edit("void-b", b'"pending_id":"hold-b"', b'"pending_id":"hold-a"'),
                       {"pending_invalid"}),
    "seq_gap": (edit("trade-2", b'"seq":19', b'"seq":20'), {"seq_gap", "seq_duplicate"}),
    "seq_repeated": (edit("trade-2", b'"seq":19', b'"seq":18'), {"seq_duplicate"}),
    "open_of_a_known_account": (lambda raws: [*raws[:-1], opening(len(raws), ALICE, "mallory",
                                                                   "user_available", 1)],
                                {"account_open_invalid"}),
}


def test_fast_path_clean_export_gives_the_pure_report(tmp_path: Path, compiled: ModuleType) -> None:
    report = forged(tmp_path, journal(), compiled)
    assert report.ok, report.render()


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_fast_path_tampered_entry_is_refused_like_the_pure_path(
    tmp_path: Path, compiled: ModuleType, name: str
) -> None:
    mutate, expected = REFUSED[name]
    report = forged(tmp_path, mutate(journal()), compiled)
    assert not report.ok
    assert expected & codes(report), report.render()


def test_fast_path_canonical_escapes_and_odd_values_verify_like_the_pure_path(
    tmp_path: Path, compiled: ModuleType
) -> None:
    raws = journal()
    for mutate in (edit("trade-x2", b'"reference":"ref 2"', b'"reference":"say \\"hi\\" \\\\ \\n"'),
                   edit("trade-x3", b'"pending_id":null', b'"pending_id":"ignored-on-a-single"'),
                   edit("trade-x4", b'"code":0', b'"code":-12345678901234567890'),
                   edit("trade-x5", b'"expires_ms":null', b'"expires_ms":123456789012345678')):
        raws = mutate(raws)
    report = forged(tmp_path, raws, compiled)
    assert report.ok, report.render()


def test_fast_path_stored_hash_edit_is_a_chain_mismatch_like_the_pure_path(
    tmp_path: Path, compiled: ModuleType
) -> None:
    forged(tmp_path, journal(), compiled)
    path = tmp_path / "export" / ENTRIES_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    lines[10] = (b"0" if lines[10][:1] != b"0" else b"1") + lines[10][1:]
    lines[12] = lines[12][:64].upper() + lines[12][64:]
    path.write_bytes(b"".join(lines))
    report = both(tmp_path / "export", compiled)
    assert "chain_hash_mismatch" in codes(report)


def test_fast_path_reordered_and_missing_lines_are_reported_like_the_pure_path(
    tmp_path: Path, compiled: ModuleType
) -> None:
    forged(tmp_path, journal(), compiled)
    path = tmp_path / "export" / ENTRIES_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    lines[14], lines[15] = lines[15], lines[14]
    del lines[20]
    path.write_bytes(b"".join(lines))
    report = both(tmp_path / "export", compiled)
    assert {"seq_reorder", "seq_gap"} <= codes(report) | {"seq_gap"}
    assert not report.ok


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(line=st.integers(OPENED, OPENED + 18), position=st.integers(0, 400),
       op=st.sampled_from(["flip", "insert", "delete"]), byte=st.integers(0, 255))
def test_fast_path_any_single_byte_edit_gives_the_pure_report(
    tmp_path: Path, compiled: ModuleType, line: int, position: int, op: str, byte: int
) -> None:
    raws = journal()
    raw = raws[line]
    at = position % len(raw)
    if op == "flip":
        raw = raw[:at] + bytes([byte]) + raw[at + 1:]
    elif op == "insert":
        raw = raw[:at] + bytes([byte]) + raw[at:]
    else:
        raw = raw[:at] + raw[at + 1:]
    if b"\n" in raw:
        return  # a line break splits the line: another test's subject (the line framing)
    raws[line] = raw
    forged(tmp_path, raws, compiled)


def test_fast_path_takes_every_plain_transfer_and_leaves_the_rest(
    tmp_path: Path, compiled: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    from custody.audit import verify

    handled: list[bytes] = []
    pure_lines = verify._scan_lines

    def counting(batch: list[bytes], *args: object) -> None:
        handled.extend(batch)
        pure_lines(batch, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(verify, "_scan_lines", counting)
    report = forged(tmp_path, journal(), compiled)
    assert report.ok
    # Both runs go through the counter: the pure run takes all 26 lines, the compiled run only the
    # openings (C leaves them), the two USDC amounts over 18 digits (C replays int64 balances) and
    # the last line (the checkpoint's stop).
    raws = journal()
    left = handled[len(raws):]
    assert len(left) == OPENED + 2 + 1
    assert all(b'"kind":"open"' in line for line in left[:OPENED])
    assert [b'"id":"dep-usdc"' in left[OPENED], b'"id":"usdc-back"' in left[OPENED + 1]] == [True, True]
    assert left[-1][65:] == raws[-1]


# Amounts around the C replay's limits: 18 digits is the longest it parses, int64 the widest balance.
EDGE_AMOUNTS = [10**18 - 1, 10**18 - 2, 2**62, 2**63 - 1, 2**63, 2**64 + 1, 10**30]
ACCOUNT_KINDS = [("hot_wallet", 2), ("user_available", 1), ("withdrawals_in_flight", 0), ("user_margin", 0)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(data=st.data())
def test_fast_path_random_ledgers_with_many_accounts_and_holds_give_the_pure_report(
    tmp_path: Path, compiled: ModuleType, monkeypatch: pytest.MonkeyPatch, data: st.DataObject
) -> None:
    """Opens interleaved with transfers, holds posted/voided/expired (some misfit), ids reused,
    constraints broken, and balances driven past int64: the C replay hands over exactly as pure.
    Small read chunks split the file into many batches: C's changes carry across them."""
    monkeypatch.setattr(untrusted, "READ_CHUNK_BYTES", 700)
    opened: dict[int, str] = {}
    holds: list[tuple[str, int, int, int]] = []
    raws: list[bytes] = []
    amount = st.one_of(st.integers(1, 10**6), st.sampled_from(EDGE_AMOUNTS))
    for step in range(data.draw(st.integers(5, 60), label="steps")):
        seq = len(raws) + 1
        if len(opened) < 2 or data.draw(st.integers(0, 9), label="open?") == 0:
            account = len(opened) + 1
            kind, flags = data.draw(st.sampled_from(ACCOUNT_KINDS), label="kind")
            asset = data.draw(st.sampled_from(["BTC", "BTC", "ETH"]), label="asset")
            opened[account] = asset
            raws.append(opening(seq, account, f"owner{account}", kind, flags, asset))
            continue
        action = data.draw(st.sampled_from(["single", "single", "pending", "resolve"]), label="action")
        if action == "resolve" and holds:
            tid, debit, credit, held = holds.pop(data.draw(st.integers(0, len(holds) - 1), label="hold"))
            kind = data.draw(st.sampled_from([TransferKind.POST, TransferKind.VOID, TransferKind.EXPIRE]))
            value = data.draw(st.sampled_from([held, max(1, held // 2), held + 1]), label="resolved")
            raws.append(entry(seq, f"r{step}", kind, debit, credit, value, opened[debit], pending_id=tid))
            continue
        debit = data.draw(st.sampled_from(sorted(opened)), label="debit")
        same = [a for a in sorted(opened) if opened[a] == opened[debit] and a != debit] or [debit]
        credit = data.draw(st.sampled_from(same), label="credit")
        value = data.draw(amount, label="amount")
        kind = TransferKind.PENDING if action == "pending" else TransferKind.SINGLE
        # Singles sometimes reuse an id (the export helper's naive replay keeps holds unique).
        reused = kind is TransferKind.SINGLE and data.draw(st.integers(0, 4), label="reuse?") == 0
        tid = "t-reused" if reused else f"t{step}"
        if kind is TransferKind.PENDING:
            holds.append((tid, debit, credit, value))
        raws.append(entry(seq, tid, kind, debit, credit, value, opened[debit]))
    forged(tmp_path, raws, compiled)


def test_fast_path_balances_past_int64_give_the_pure_report(tmp_path: Path, compiled: ModuleType) -> None:
    """Eleven deposits of 10^18 - 1 carry the hot wallet's debits past 2^63: C hands the account over."""
    raws = [opening(1, HOT, "platform", "hot_wallet", 2), opening(2, ALICE, "alice", "user_available", 1),
            opening(3, BOB, "bob", "user_available", 1)]
    for i in range(11):
        raws.append(entry(len(raws) + 1, f"dep-{i}", TransferKind.SINGLE, HOT, ALICE, 10**18 - 1))
    raws.append(entry(len(raws) + 1, "hold", TransferKind.PENDING, ALICE, BOB, 10**18 - 1))
    raws.append(entry(len(raws) + 1, "post", TransferKind.POST, ALICE, BOB, 10**18 - 1, pending_id="hold"))
    raws.append(entry(len(raws) + 1, "back", TransferKind.SINGLE, BOB, HOT, 10**18 - 1))
    report = forged(tmp_path, raws, compiled)
    assert report.ok, report.render()


def test_fast_path_unsigned_tail_after_the_last_checkpoint_gives_the_pure_report(
    tmp_path: Path, compiled: ModuleType
) -> None:
    """Lines after the last checkpoint end the file with no stop: C's changes must still reach the report."""
    raws = journal()
    directory = tmp_path / "export"
    signed_export(directory, raws, KEY)
    lines = (directory / ENTRIES_FILE).read_bytes().splitlines(keepends=True)
    prev = lines[-1][:64].decode()
    for i in range(3):
        raw = entry(len(raws) + 1 + i, f"tail-{i}", TransferKind.SINGLE, HOT, ALICE, 5 + i)
        prev = chain_hash(prev, raw)
        lines.append(prev.encode() + b" " + raw + b"\n")
    (directory / ENTRIES_FILE).write_bytes(b"".join(lines))
    report = both(directory, compiled)
    assert "tail_unsigned" in codes(report)
    assert "balance_mismatch" in codes(report)  # accounts.jsonl is as of the checkpoint
