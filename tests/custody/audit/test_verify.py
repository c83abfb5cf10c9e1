"""The offline verifier: a clean export verifies; every kind of tampering is named and located."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody.audit.cli import main as audit_main
from custody.audit.export import ACCOUNTS_FILE, KEYS_FILE, parse_keys, read_json
from custody.audit.service import AuditService
from custody.audit.verify import ALLOW_UNPINNED_KEYS, verify_export
from custody.db import make_engine, make_session_factory
from custody.keystore import LocalKeystore
from custody.ledger.service import Ledger

from .helpers import (
    accounts,
    codes,
    evil_keys_document,
    finding,
    first_batch,
    read_checkpoints,
    read_lines,
    rechain,
    replace_keys,
    resign,
    second_batch,
    set_amount,
    write_checkpoints,
    write_entries,
)

# accounts() opens ten accounts (seq 1..10), first_batch writes seq 11..18, second_batch 19..25.
OPENED = 10


def build_export(ledger: Ledger, keystore: LocalKeystore, directory: Path) -> AuditService:
    """Two checkpoints (seq 1..18 and 19..25) and an export of all 25 entries."""
    audit = AuditService(ledger._sessions, ledger, keystore)
    ids = accounts(ledger)
    first_batch(ledger, ids)
    audit.create_checkpoint()
    second_batch(ledger, ids)
    audit.create_checkpoint()
    audit.export(directory)
    return audit


@pytest.fixture
def export_dir(sqlite_url: str, clock: object, keystore: LocalKeystore, tmp_path: Path) -> Path:
    engine = make_engine(sqlite_url)
    ledger = Ledger(make_session_factory(engine), clock=clock)  # type: ignore[arg-type]
    build_export(ledger, keystore, tmp_path / "export")
    engine.dispose()
    return tmp_path / "export"


def read_pinned(export_dir: Path) -> dict:
    """The genuine keys, as an auditor would have pinned them out of band."""
    return parse_keys(read_json(export_dir / KEYS_FILE))


@pytest.fixture
def pinned(export_dir: Path) -> dict[tuple[str, int], object]:
    """The genuine keys, as an auditor would have pinned them out of band."""
    return read_pinned(export_dir)


def test_export_on_every_database_verifies(ledger: Ledger, keystore: LocalKeystore, tmp_path: Path) -> None:
    build_export(ledger, keystore, tmp_path / "export")
    report = verify_export(tmp_path / "export", allow=frozenset({ALLOW_UNPINNED_KEYS}))
    assert report.ok, report.render()
    assert report.summary["entries"] == 25 and report.summary["checkpoints"] == 2
    assert [w.code for w in report.warnings] == ["keys_not_pinned"]


def test_export_without_pinned_keys_fails_by_default(export_dir: Path) -> None:
    report = verify_export(export_dir)
    assert codes(report) == {"keys_not_pinned"}
    assert "result: FAILED" in report.render()


def test_clean_export_with_pinned_keys_has_no_warnings(export_dir: Path, pinned: dict) -> None:
    report = verify_export(export_dir, pinned)
    assert report.ok and report.warnings == [], report.render()
    assert "result: VERIFIED" in report.render()


def test_flipped_byte_in_an_entry_names_its_seq_and_the_checkpoint(export_dir: Path, pinned: dict) -> None:
    lines = read_lines(export_dir)
    lines[OPENED + 4] = set_amount(lines[OPENED + 4], 51)  # seq 15 held 50; one digit changes
    write_entries(export_dir, lines)
    report = verify_export(export_dir, pinned)
    assert finding(report, "chain_hash_mismatch")["seq"] == 15
    assert finding(report, "checkpoint_root_mismatch")["checkpoint"] == 1
    assert "entry seq 15: chain hash mismatch" in report.render()


def test_deleted_entry_is_reported_as_a_gap(export_dir: Path, pinned: dict) -> None:
    lines = read_lines(export_dir)
    del lines[OPENED + 4]
    write_entries(export_dir, lines)
    report = verify_export(export_dir, pinned)
    gap = finding(report, "seq_gap")
    assert gap["seq"] == 15 and "gap: seq 15 missing" in str(gap["message"])
    assert "checkpoint_root_mismatch" in codes(report)


def test_two_swapped_entries_are_reported_as_a_reorder(export_dir: Path, pinned: dict) -> None:
    lines = read_lines(export_dir)
    lines[OPENED + 4], lines[OPENED + 5] = lines[OPENED + 5], lines[OPENED + 4]
    write_entries(export_dir, lines)
    report = verify_export(export_dir, pinned)
    reorder = finding(report, "seq_reorder")
    assert reorder["seq"] == 15 and "reorder: seq 15 appears at entries.jsonl line 16, after seq 16" in str(
        reorder["message"])
    assert "seq_gap" not in codes(report)


def test_forged_entry_with_recomputed_chain_fails_the_signed_root(export_dir: Path, pinned: dict) -> None:
    lines = read_lines(export_dir)
    lines[OPENED + 2] = set_amount(lines[OPENED + 2], 10**31)
    write_entries(export_dir, rechain(lines))
    report = verify_export(export_dir, pinned)
    assert "chain_hash_mismatch" not in codes(report)
    assert finding(report, "checkpoint_root_mismatch")["checkpoint"] == 1
    assert finding(report, "checkpoint_head_mismatch")["checkpoint"] == 1


def test_forged_entry_with_rewritten_checkpoints_fails_the_signature(
    export_dir: Path, pinned: dict
) -> None:
    from dataclasses import replace

    from custody.audit.merkle import MerkleTree, leaf_hash

    lines = rechain([*read_lines(export_dir)[:OPENED + 3],
                     set_amount(read_lines(export_dir)[OPENED + 3], 99),
                     *read_lines(export_dir)[OPENED + 4:]])
    write_entries(export_dir, lines)
    tree = MerkleTree(leaf_hash(line[65:-1]) for line in lines)
    forged = [replace(c, root=tree.root(c.tree_size).hex(), head_hash=lines[c.last_seq - 1][:64].decode())
              for c in read_checkpoints(export_dir)]
    write_checkpoints(export_dir, forged)
    report = verify_export(export_dir, pinned)
    assert "checkpoint_root_mismatch" not in codes(report)
    assert finding(report, "checkpoint_signature_invalid")["checkpoint"] == 1
    assert "checkpoint 1: signature does not verify with key ledger-checkpoint v1" in report.render()


def test_checkpoint_signed_with_a_different_key_fails(export_dir: Path, pinned: dict) -> None:
    evil = Ed25519PrivateKey.generate()
    checkpoints = read_checkpoints(export_dir)
    checkpoints[1] = resign(checkpoints[1], evil)
    write_checkpoints(export_dir, checkpoints)
    replace_keys(export_dir, evil_keys_document(evil))
    report = verify_export(export_dir, pinned)
    assert finding(report, "checkpoint_signature_invalid")["checkpoint"] == 2
    assert "key_mismatch" in codes(report)
    assert finding(report, "checkpoint_signature_invalid")["checkpoint"] == 2


def test_checkpoint_signed_by_an_unknown_key_is_named(export_dir: Path, pinned: dict) -> None:
    from dataclasses import replace

    evil = Ed25519PrivateKey.generate()
    checkpoints = read_checkpoints(export_dir)
    checkpoints[1] = resign(replace(checkpoints[1], key_name="evil"), evil)
    write_checkpoints(export_dir, checkpoints)
    report = verify_export(export_dir, pinned)
    unknown = finding(report, "checkpoint_unknown_key")
    assert unknown["checkpoint"] == 2 and "unknown key 'evil' v1" in str(unknown["message"])


def test_tail_truncated_after_a_checkpoint_is_detected(export_dir: Path, pinned: dict) -> None:
    write_entries(export_dir, read_lines(export_dir)[:18])
    report = verify_export(export_dir, pinned)
    beyond = finding(report, "checkpoint_beyond_export")
    assert beyond["checkpoint"] == 2
    assert "covers seq 19..25 but the export ends at seq 18" in str(beyond["message"])


def test_truncation_that_also_drops_the_checkpoint_needs_a_trusted_checkpoint(
    export_dir: Path, pinned: dict
) -> None:
    latest = read_checkpoints(export_dir)[1].hash()
    write_entries(export_dir, read_lines(export_dir)[:18])
    write_checkpoints(export_dir, read_checkpoints(export_dir)[:1])
    # Every signature still holds; only the (unsigned) exported balances betray the cut.
    assert codes(verify_export(export_dir, pinned)) == {"balance_mismatch"}
    report = verify_export(export_dir, pinned, trusted_checkpoints=[latest])
    assert "trusted_checkpoint_missing" in codes(report)


def test_altered_per_asset_total_is_detected(export_dir: Path, pinned: dict) -> None:
    from dataclasses import replace

    from custody.audit.checkpoint import AssetTotals

    checkpoints = read_checkpoints(export_dir)
    totals = dict(checkpoints[0].totals)
    btc = totals["BTC"]
    totals["BTC"] = AssetTotals(btc.entries, btc.posted + 1, btc.pending)
    checkpoints[0] = replace(checkpoints[0], totals=totals)
    write_checkpoints(export_dir, checkpoints)
    report = verify_export(export_dir, pinned)
    mismatch = finding(report, "checkpoint_totals_mismatch")
    assert mismatch["checkpoint"] == 1 and "BTC totals" in str(mismatch["message"])
    assert finding(report, "checkpoint_signature_invalid")["checkpoint"] == 1
    assert finding(report, "checkpoint_chain_broken")["checkpoint"] == 2


def test_overdraft_forged_into_the_journal_is_a_negative_balance(export_dir: Path, pinned: dict) -> None:
    lines = read_lines(export_dir)
    lines[OPENED + 5] = set_amount(lines[OPENED + 5], 5_000)  # seq 16: alice -> bob, alice has 1,000
    write_entries(export_dir, rechain(lines))
    report = verify_export(export_dir, pinned)
    negative = finding(report, "balance_negative")
    assert negative["seq"] == 16 and "breaks its constraint" in str(negative["message"])


def test_edited_account_balance_breaks_the_zero_sum(export_dir: Path, pinned: dict) -> None:
    path = export_dir / ACCOUNTS_FILE
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[0]["debits_posted"] = str(int(records[0]["debits_posted"]) + 1)
    path.write_text("".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in records))
    report = verify_export(export_dir, pinned)
    assert finding(report, "balance_mismatch")["account"] == records[0]["id"]


def test_export_without_checkpoints_fails_unless_explicitly_downgraded(
    sqlite_url: str, clock: object, keystore: LocalKeystore, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ledger = Ledger(make_session_factory(make_engine(sqlite_url)), clock=clock)  # type: ignore[arg-type]
    audit = AuditService(ledger._sessions, ledger, keystore)
    audit.signing_key_version()
    first_batch(ledger, accounts(ledger))
    audit.export(tmp_path / "export")
    keys = str(tmp_path / "export" / "keys.json")
    assert codes(verify_export(tmp_path / "export", read_pinned(tmp_path / "export"))) == {
        "no_checkpoints", "tail_unsigned"}
    assert audit_main(["verify", str(tmp_path / "export"), "--keys", keys]) == 1
    assert audit_main(["verify", str(tmp_path / "export"), "--keys", keys,
                       "--allow-no-checkpoints"]) == 0
    assert "warn  the export has 18 entries and no signed checkpoint" in capsys.readouterr().out


def test_unsigned_tail_fails_unless_explicitly_downgraded(
    sqlite_url: str, clock: object, keystore: LocalKeystore, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ledger = Ledger(make_session_factory(make_engine(sqlite_url)), clock=clock)  # type: ignore[arg-type]
    audit = AuditService(ledger._sessions, ledger, keystore)
    ids = accounts(ledger)
    first_batch(ledger, ids)
    audit.create_checkpoint()
    second_batch(ledger, ids)
    audit.export(tmp_path / "export")
    keys = str(tmp_path / "export" / "keys.json")
    report = verify_export(tmp_path / "export", read_pinned(tmp_path / "export"))
    assert finding(report, "tail_unsigned")["seq"] == 19
    assert audit_main(["verify", str(tmp_path / "export"), "--keys", keys]) == 1
    assert audit_main(["verify", "--strict", str(tmp_path / "export"), "--keys", keys]) == 1
    assert audit_main(["verify", str(tmp_path / "export"), "--keys", keys,
                       "--allow-unsigned-tail"]) == 0
    assert audit_main(["verify", str(tmp_path / "export")]) == 1  # and keys must be pinned


def test_cli_json_report_and_exit_status(export_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = export_dir.parent / "pinned.json"
    keys.write_bytes((export_dir / KEYS_FILE).read_bytes())
    assert audit_main(["verify", "--keys", str(keys), "--json", str(export_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    write_entries(export_dir, read_lines(export_dir)[:18])
    assert audit_main(["verify", "--keys", str(keys), "--json", str(export_dir)]) == 1
    body = json.loads(capsys.readouterr().out)
    assert body["ok"] is False and body["failures"][0]["code"]


def test_cli_refuses_a_directory_that_is_not_an_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert audit_main(["verify", str(tmp_path)]) == 2
    assert "not a ledger export" in capsys.readouterr().err
