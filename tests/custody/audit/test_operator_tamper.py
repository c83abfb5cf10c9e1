"""An auditor who does not trust the operator: insiders with database access, forged files, lies
signed with the operator's own key, rollbacks and forks across audits, and hostile input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from custody.audit.checkpoint import AssetTotals
from custody.audit.cli import main as audit_main
from custody.audit.export import ACCOUNTS_FILE, KEYS_FILE, MANIFEST_FILE, parse_keys, read_json
from custody.audit.reserves import ReservesService
from custody.audit.service import AuditService
from custody.audit.snapshots import LIABILITIES_FILE, SNAPSHOTS_FILE, Snapshot, signing_message
from custody.audit.state import load_state
from custody.audit.verify import verify_export
from custody.keystore import LocalKeystore
from custody.ledger.entry import AccountKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger

from .helpers import (
    accounts,
    codes,
    finding,
    first_batch,
    open_raw,
    read_checkpoints,
    read_lines,
    rechain,
    second_batch,
    set_amount,
    signed_export,
    single_raw,
    write_checkpoints,
    write_entries,
)

BTC = 100_000_000


def _pinned(directory: Path) -> dict:
    return parse_keys(read_json(directory / KEYS_FILE))


def _engine(ledger: Ledger):  # type: ignore[no-untyped-def]
    return ledger._sessions.kw["bind"]


def _drop_terms_trigger(ledger: Ledger) -> None:
    engine = _engine(ledger)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("DROP TRIGGER ledger_accounts_terms_frozen ON ledger_accounts"))
        else:
            conn.execute(text("DROP TRIGGER ledger_accounts_terms_frozen"))


# -- the insider overdraft --------------------------------------------------------------------

def test_account_terms_cannot_be_updated_or_accounts_deleted_in_the_database(ledger: Ledger) -> None:
    alice = ledger.create_account("alice", "BTC", AccountKind.USER_AVAILABLE)
    for statement in (f"UPDATE ledger_accounts SET flags = 0 WHERE id = {alice.id}",
                      f"UPDATE ledger_accounts SET kind = 'external' WHERE id = {alice.id}",
                      f"UPDATE ledger_accounts SET owner = 'mallory' WHERE id = {alice.id}",
                      f"DELETE FROM ledger_accounts WHERE id = {alice.id}"):
        with pytest.raises(Exception, match="frozen"), _engine(ledger).begin() as conn:
            conn.execute(text(statement))
    assert ledger.get_account(alice.id).flags == 1


def test_ledger_refuses_to_apply_transfers_to_an_account_whose_flags_were_changed(ledger: Ledger) -> None:
    wallet = ledger.create_account("platform", "BTC", AccountKind.HOT_WALLET)
    alice = ledger.create_account("alice", "BTC", AccountKind.USER_AVAILABLE)
    _drop_terms_trigger(ledger)
    with _engine(ledger).begin() as conn:
        conn.execute(text(f"UPDATE ledger_accounts SET flags = 0 WHERE id = {alice.id}"))
    with pytest.raises(RuntimeError, match="tampered"):
        ledger.transfer(TransferRequest(id="t1", debit_account=alice.id, credit_account=wallet.id,
                                        amount=1))


def test_insider_overdraft_is_named_by_account_and_seq_after_checkpoint_and_export(
    ledger: Ledger, keystore: LocalKeystore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = AuditService(ledger._sessions, ledger, keystore)
    ids = accounts(ledger)
    first_batch(ledger, ids)
    alice = ids["alice-BTC"]
    # An insider with database access but no signing key: drop the trigger, make alice's account
    # an unconstrained kind (consistent flags, so the ledger's own check passes), overdraw it.
    _drop_terms_trigger(ledger)
    with _engine(ledger).begin() as conn:
        conn.execute(text(f"UPDATE ledger_accounts SET flags = 0, kind = 'external' WHERE id = {alice}"))
    overdraft = ledger.transfer(TransferRequest(id="insider", debit_account=alice,
                                                credit_account=ids["bob-BTC"], amount=1000 * BTC))
    audit.create_checkpoint()  # the normal checkpoint signs it
    audit.export(tmp_path / "export")
    keys = tmp_path / "keys.json"
    keys.write_bytes((tmp_path / "export" / KEYS_FILE).read_bytes())
    report = verify_export(tmp_path / "export", _pinned(tmp_path / "export"))
    negative = finding(report, "balance_negative")
    assert (negative["seq"], negative["account"]) == (overdraft.entry.seq, alice)  # type: ignore[union-attr]
    assert "alice, user_available" in str(negative["message"])
    assert finding(report, "account_terms_mismatch")["account"] == alice
    assert audit_main(["verify", str(tmp_path / "export"), "--keys", str(keys)]) == 1
    out = capsys.readouterr().out
    assert f"entry seq {overdraft.entry.seq}: account {alice} (alice, user_available, BTC)" in out  # type: ignore[union-attr]
    assert "result: FAILED" in out


def test_account_inserted_behind_the_ledgers_back_is_never_opened_in_the_journal(
    ledger: Ledger, keystore: LocalKeystore, tmp_path: Path
) -> None:
    audit = AuditService(ledger._sessions, ledger, keystore)
    ids = accounts(ledger)
    first_batch(ledger, ids)
    with _engine(ledger).begin() as conn:
        conn.execute(text("INSERT INTO ledger_accounts (owner, asset, kind, flags, created_ms, "
                          "debits_pending, debits_posted, credits_pending, credits_posted, last_seq) "
                          "VALUES ('mallory', 'BTC', 'user_available', 1, 1, 0, 0, 0, 0, 0)"))
        mallory = conn.execute(text("SELECT id FROM ledger_accounts WHERE owner = 'mallory'")).scalar_one()
    moved = ledger.transfer(TransferRequest(id="siphon", debit_account=ids["hot_wallet-BTC"],
                                            credit_account=mallory, amount=1))
    audit.create_checkpoint()
    audit.export(tmp_path / "export")
    report = verify_export(tmp_path / "export", _pinned(tmp_path / "export"))
    assert finding(report, "entry_invalid")["seq"] == moved.entry.seq  # type: ignore[union-attr]
    assert finding(report, "account_unknown")["account"] == mallory


def test_signed_open_entry_whose_flags_do_not_match_the_kind_fails(tmp_path: Path) -> None:
    raws = [open_raw(1, 1, "platform", "hot_wallet", 2), open_raw(2, 2, "alice", "user_available", 0),
            open_raw(3, 3, "bob", "user_available", 1), single_raw(4, 2, 3, 5)]
    keys = signed_export(tmp_path / "e", raws, Ed25519PrivateKey.generate())
    report = verify_export(tmp_path / "e", keys)
    flags = finding(report, "account_flags_invalid")
    assert (flags["seq"], flags["account"]) == (2, 2) and "requires flags 1" in str(flags["message"])
    assert finding(report, "balance_negative")["seq"] == 4  # replayed with the kind's constraint


def test_entry_on_an_account_never_opened_fails(tmp_path: Path) -> None:
    raws = [open_raw(1, 1, "platform", "external", 0), single_raw(2, 1, 9, 5)]
    report = verify_export(tmp_path / "e", signed_export(tmp_path / "e", raws, Ed25519PrivateKey.generate()))
    assert "has not been opened" in str(finding(report, "entry_invalid")["message"])


def test_accounts_file_that_lies_about_terms_fails(
    ledger: Ledger, keystore: LocalKeystore, tmp_path: Path
) -> None:
    audit = AuditService(ledger._sessions, ledger, keystore)
    first_batch(ledger, accounts(ledger))
    audit.create_checkpoint()
    audit.export(tmp_path / "export")
    path = tmp_path / "export" / ACCOUNTS_FILE
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[3]["flags"] = 0
    path.write_text("".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in records))
    report = verify_export(tmp_path / "export", _pinned(tmp_path / "export"))
    assert finding(report, "account_terms_mismatch")["account"] == records[3]["id"]


def test_margin_accounts_may_go_negative_and_are_reported_explicitly(
    ledger: Ledger, keystore: LocalKeystore, tmp_path: Path
) -> None:
    audit = AuditService(ledger._sessions, ledger, keystore)
    margin = ledger.create_account("trader", "USDC", AccountKind.USER_MARGIN)
    clearing = ledger.create_account("exchange.clearing", "USDC", AccountKind.USER_MARGIN)
    ledger.transfer(TransferRequest(id="loss", debit_account=margin.id, credit_account=clearing.id,
                                    amount=500))
    audit.create_checkpoint()
    audit.export(tmp_path / "export")
    report = verify_export(tmp_path / "export", _pinned(tmp_path / "export"))
    assert report.ok, report.render()
    assert report.summary["negative_margin_accounts"] == [
        {"account": margin.id, "owner": "trader", "asset": "USDC", "balance": "-500"}]
    assert (f"2 user_margin accounts carry no ledger constraint by design (exchange cross margin, "
            f"enforced by the clearing house); 1 negative at the head: account {margin.id} (trader) "
            "-500 USDC") in report.render()


def test_user_margin_account_with_a_constraint_flag_is_refused_by_the_ledger(ledger: Ledger) -> None:
    from custody.ledger.codes import LedgerCode, LedgerError

    with pytest.raises(LedgerError) as err:
        ledger.create_account("trader", "USDC", AccountKind.USER_MARGIN, flags=1)
    assert err.value.code is LedgerCode.INVALID_FLAGS


# -- spec violations signed with the operator's key --------------------------------------------

@pytest.mark.parametrize(("entry", "expected"), [
    (lambda: single_raw(4, 1, 2, 2**256), "0 < amount < 2^256"),
    (lambda: single_raw(4, 1, 2, 5, reference="caf\u00e9").replace(b"caf\\u00e9", "café".encode()),
     "canonical"),
    (lambda: single_raw(4, 1, 2, 5).replace(b'"v":2}', b'"v":2,"v":2}'), "canonical"),
    (lambda: single_raw(4, 1, 2, 5).replace(b'"actor":"service:test"', b'"actor":"root"'), "actor"),
    (lambda: single_raw(4, 1, 2, 5).replace(b'"amount":"5"', b'"amount":"05"'), "amount"),
])
def test_signed_entry_that_breaks_the_spec_is_malformed(tmp_path: Path, entry, expected: str) -> None:  # type: ignore[no-untyped-def]
    raws = [open_raw(1, 1, "platform", "external", 0), open_raw(2, 2, "alice", "user_available", 1),
            open_raw(3, 3, "bob", "user_available", 1), entry()]
    keys = signed_export(tmp_path / "e", raws, Ed25519PrivateKey.generate())
    malformed = finding(verify_export(tmp_path / "e", keys), "entry_malformed")
    assert malformed["line"] == 4 and expected in str(malformed["message"])


# -- unusable input: exit 2 with a message, never a traceback -----------------------------------

@pytest.fixture
def export_dir(ledger: Ledger, keystore: LocalKeystore, tmp_path: Path) -> Path:
    audit = AuditService(ledger._sessions, ledger, keystore)
    ids = accounts(ledger)
    first_batch(ledger, ids)
    audit.create_checkpoint()
    second_batch(ledger, ids)
    audit.create_checkpoint()
    ReservesService(ledger._sessions, audit).create_snapshot()
    audit.export(tmp_path / "export")
    (tmp_path / "keys.json").write_bytes((tmp_path / "export" / KEYS_FILE).read_bytes())
    return tmp_path / "export"


def _verify(export_dir: Path, *extra: str) -> int:
    return audit_main(["verify", str(export_dir), "--keys", str(export_dir.parent / "keys.json"),
                       *extra])


def _duplicate_first_key(raw: str) -> str:
    body = json.loads(raw)
    key = sorted(body)[0]
    return "{" + json.dumps(key) + ":" + json.dumps(body[key]) + "," + raw.strip()[1:]


@pytest.mark.parametrize("name", [MANIFEST_FILE, KEYS_FILE, ACCOUNTS_FILE])
def test_duplicate_keys_in_any_file_are_unusable_input(
    export_dir: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = export_dir / name
    lines = path.read_text().splitlines() if name.endswith(".jsonl") else [path.read_text()]
    lines[0] = _duplicate_first_key(lines[0])
    path.write_text("\n".join(lines) + "\n")
    assert _verify(export_dir) == 2
    assert "duplicate key" in capsys.readouterr().err


# A broken unsigned claim file is unusable input (2); a broken line of a file of signed records
# is a failed check of that record (1), reported with the rest.
@pytest.mark.parametrize(("name", "expected"), [
    (MANIFEST_FILE, 2), (KEYS_FILE, 2), (ACCOUNTS_FILE, 2), (LIABILITIES_FILE, 2),
    ("checkpoints.jsonl", 1), (SNAPSHOTS_FILE, 1), ("entries.jsonl", 1)])
def test_deeply_nested_json_in_any_file_is_refused_with_its_exit_code_never_a_crash(
    export_dir: Path, name: str, expected: int, capsys: pytest.CaptureFixture[str]
) -> None:
    (export_dir / name).write_bytes(b"[" * 8_000 + b"]" * 8_000 + b"\n")
    assert _verify(export_dir) == expected
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "result: VERIFIED" not in captured.out
    assert ("nested more than 16 levels" in captured.err) if expected == 2 else (
        "result: FAILED" in captured.out)


def test_a_one_gib_line_is_refused_without_reading_it_into_memory(
    export_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with open(export_dir / "entries.jsonl", "r+b") as handle:
        handle.truncate(1 << 30)  # sparse: a gibibyte of zero bytes and no newline
    assert _verify(export_dir) == 2
    assert "longer than 16384 bytes" in capsys.readouterr().err


def test_missing_file_and_bad_state_file_are_unusable_input(
    export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state.json"
    state.write_text('{"format": "strongroom.audit-state", "format": 1}')
    assert _verify(export_dir, "--state", str(state)) == 2
    (export_dir / SNAPSHOTS_FILE).unlink()
    assert _verify(export_dir) == 2
    assert "cannot read snapshots.jsonl" in capsys.readouterr().err


# -- escape codes cannot rewrite the verdict ----------------------------------------------------

ERASE = "\x1b[1A\x1b[2K\x1b[1A\x1b[2Kresult: VERIFIED\x1b[8m"


def test_escape_codes_in_a_checkpoint_asset_name_are_shown_escaped(
    export_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoints = read_checkpoints(export_dir)
    from dataclasses import replace

    totals = dict(checkpoints[0].totals)
    totals[ERASE] = AssetTotals(1, 1, 0)
    checkpoints[0] = replace(checkpoints[0], totals=totals)
    write_checkpoints(export_dir, checkpoints)
    assert _verify(export_dir) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[1A" in out
    assert out.rstrip().splitlines()[-1].startswith("result: FAILED")


def test_escape_codes_in_a_liability_proof_user_id_are_shown_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from .test_docs import examples

    proof = json.loads(examples("proof-of-reserves.md")["liability-proof"])
    proof["user_id"] = ERASE
    (tmp_path / "proof.json").write_text(json.dumps(proof))
    (tmp_path / "keys.json").write_text(examples("ledger-export.md")["keys.json"])
    assert audit_main(["verify-liability", str(tmp_path / "proof.json"), "--keys",
                       str(tmp_path / "keys.json")]) == 1
    out = capsys.readouterr().out
    assert not any(ord(c) < 0x20 and c != "\n" for c in out)
    assert out.startswith("FAILED")


# -- rollback and fork across audits ------------------------------------------------------------

def test_state_file_catches_a_later_truncation_that_drops_checkpoints(
    export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state.json"
    assert _verify(export_dir, "--state", str(state)) == 0
    remembered = json.loads(state.read_text())
    assert remembered["checkpoint"]["number"] == 2
    assert f"hash {remembered['checkpoint']['hash']}" in capsys.readouterr().out
    write_entries(export_dir, read_lines(export_dir)[:18])
    write_checkpoints(export_dir, read_checkpoints(export_dir)[:1])
    (export_dir / SNAPSHOTS_FILE).write_text("")
    (export_dir / LIABILITIES_FILE).write_text("")
    manifest = json.loads((export_dir / MANIFEST_FILE).read_text())
    manifest["counts"]["snapshots"] = 0
    (export_dir / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert _verify(export_dir, "--state", str(state)) == 1
    out = capsys.readouterr().out
    assert "the ledger was truncated or rolled back" in out and "snapshot 1" in out
    assert json.loads(state.read_text()) == remembered  # a failed audit does not move the state


def test_state_file_catches_a_fork_the_operator_signed_itself(
    export_dir: Path, tmp_path: Path, keystore: LocalKeystore
) -> None:
    from custody.audit.merkle import MerkleTree, leaf_hash

    state = tmp_path / "state.json"
    assert _verify(export_dir, "--state", str(state)) == 0
    # The operator rewrites entry 22 and re-signs checkpoint 2 with its real key: the export on
    # its own verifies (but for the now stale snapshot), yet it is not what was audited before.
    lines = rechain([*read_lines(export_dir)[:21], set_amount(read_lines(export_dir)[21], 1),
                     *read_lines(export_dir)[22:]])
    write_entries(export_dir, lines)
    tree = MerkleTree(leaf_hash(line[65:-1]) for line in lines)
    first, second = read_checkpoints(export_dir)
    from dataclasses import replace

    forged = replace(second, root=tree.root(second.last_seq).hex(), head_hash=lines[-1][:64].decode())
    forged = forged.with_signature(keystore.sign("ledger-checkpoint", forged.signing_message()).value)
    write_checkpoints(export_dir, [first, forged])
    report = verify_export(export_dir, _pinned(export_dir))
    assert "checkpoint_signature_invalid" not in codes(report)
    assert _verify(export_dir, "--state", str(state)) == 1
    assert "state_fork" in codes(verify_export(export_dir, _pinned(export_dir), state=load_state(state)))


# -- proof of reserves bound to the ledger -------------------------------------------------------

def test_snapshot_that_omits_a_user_fails_naming_the_account(
    export_dir: Path, keystore: LocalKeystore, capsys: pytest.CaptureFixture[str]
) -> None:
    from custody.audit.liabilities import SumNode, sum_node

    leaves = [json.loads(line) for line in (export_dir / LIABILITIES_FILE).read_text().splitlines()]
    kept = [leaf for leaf in leaves if leaf["asset"] != "BTC" or leaf["index"] != 0]
    omitted = next(leaf for leaf in leaves if leaf["asset"] == "BTC" and leaf["index"] == 0)
    btc = [leaf for leaf in kept if leaf["asset"] == "BTC"]
    for n, leaf in enumerate(btc):
        leaf["index"] = n
    nodes = [SumNode(bytes.fromhex(leaf["hash"]), int(leaf["sum"])) for leaf in btc]
    root = nodes[0] if len(nodes) == 1 else sum_node(nodes[0], nodes[1])
    snapshot = Snapshot.from_bytes((export_dir / SNAPSHOTS_FILE).read_bytes().strip())
    record = dict(snapshot.record)
    record["liabilities"] = {**record["liabilities"], "BTC": {  # type: ignore[dict-item]
        "root": root.hash.hex(), "total": str(root.total), "leaves": len(btc), "clamped_accounts": 0}}
    body = {k: v for k, v in record.items() if k != "signature"}
    record["signature"] = keystore.sign("ledger-checkpoint", signing_message(body)).value.hex()
    (export_dir / SNAPSHOTS_FILE).write_bytes(json.dumps(record, sort_keys=True, separators=(",", ":"))
                                              .encode() + b"\n")
    (export_dir / LIABILITIES_FILE).write_text("".join(
        json.dumps(leaf, sort_keys=True, separators=(",", ":")) + "\n" for leaf in kept))
    report = verify_export(export_dir, _pinned(export_dir))
    omitted_finding = finding(report, "snapshot_user_omitted")
    assert omitted_finding["account"] == omitted["accounts"][0]
    assert "snapshot_signature_invalid" not in codes(report)


def test_liability_proof_from_a_different_snapshot_than_the_pinned_one_fails(
    ledger: Ledger, keystore: LocalKeystore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = AuditService(ledger._sessions, ledger, keystore)
    first_batch(ledger, accounts(ledger))
    reserves = ReservesService(ledger._sessions, audit)
    published = reserves.create_snapshot()
    private = reserves.create_snapshot()  # a second tree, served to alice alone
    proof = tmp_path / "proof.json"
    proof.write_text(json.dumps(reserves.liability_proof(int(private["id"]), "alice", "BTC")))  # type: ignore[call-overload]
    keys = tmp_path / "keys.json"
    audit.export(tmp_path / "export")
    keys.write_bytes((tmp_path / "export" / KEYS_FILE).read_bytes())
    assert audit_main(["verify-liability", str(proof), "--keys", str(keys)]) == 0
    pinned = Snapshot.from_dict(published).hash()
    assert audit_main(["verify-liability", str(proof), "--keys", str(keys),
                       "--snapshot-hash", pinned]) == 1
    assert "this user is being shown a different snapshot" in capsys.readouterr().out
    assert audit_main(["verify-liability", str(proof), "--keys", str(keys),
                       "--checkpoint", "ab" * 32]) == 1
    assert "bound to checkpoint" in capsys.readouterr().out
    published_root = published["liabilities"]["BTC"]["root"]  # type: ignore[index]
    assert audit_main(["verify-liability", str(proof), "--keys", str(keys), "--root", published_root]) == 1
    assert "this user is being shown a different tree" in capsys.readouterr().out
