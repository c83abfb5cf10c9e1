"""From the command line: demo data is checkpointed, exported and verified offline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from custody.audit.cli import main as audit_main
from strongroom.cli import main


@pytest.fixture
def env(sqlite_url: str, tmp_path: Path) -> dict[str, str]:
    return {"STRONGROOM_DATABASE_URL": sqlite_url, "STRONGROOM_DATA_DIR": str(tmp_path / "d"),
            "STRONGROOM_KEYSTORE_PASSPHRASE": "demo passphrase for the audit test"}


def test_demo_data_is_checkpointed_exported_and_verified(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["demo"], env=env).exit_code == 0
    made = runner.invoke(main, ["ledger", "checkpoint"], env=env)
    assert made.exit_code == 0, made.output
    head = json.loads(made.output)["checkpoint"]["last_seq"]
    again = runner.invoke(main, ["ledger", "checkpoint"], env=env)
    assert again.exit_code == 1 and json.loads(again.stderr)["error"] == "no_new_entries"
    assert json.loads(runner.invoke(main, ["ledger", "checkpoint", "--if-due", "5"], env=env).output) == {
        "status": "not_due"}
    exported = runner.invoke(main, ["ledger", "export", str(tmp_path / "export")], env=env)
    assert exported.exit_code == 0, exported.output
    assert f"exported {head} entries" in exported.output
    assert audit_main(["verify", str(tmp_path / "export"),
                       "--keys", str(tmp_path / "export" / "keys.json")]) == 0
    out = capsys.readouterr().out
    assert "result: VERIFIED" in out
    assert f"newest checkpoint: #1 covers seq 1..{head}, hash {json.loads(made.output)['hash']}" in out
    proof = audit_main(["prove-inclusion", str(tmp_path / "export"), "--seq", "3"])
    assert proof == 0
    (tmp_path / "proof.json").write_text(capsys.readouterr().out)
    assert audit_main(["verify-proof", str(tmp_path / "proof.json"),
                       "--keys", str(tmp_path / "export" / "keys.json")]) == 0


def test_export_refuses_a_non_empty_directory(env: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner()
    runner.invoke(main, ["demo"], env=env)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    result = runner.invoke(main, ["ledger", "export", str(tmp_path / "busy")], env=env)
    assert result.exit_code == 1 and json.loads(result.stderr)["error"] == "export_dir_not_empty"


def test_reserves_report_and_proof_commands(env: dict[str, str], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    runner = CliRunner()
    runner.invoke(main, ["demo"], env=env)
    report = runner.invoke(main, ["reserves", "report"], env=env)
    assert report.exit_code == 0, report.output
    assert "reserves snapshot 1 at ledger seq " in report.output
    out = tmp_path / "alice.json"
    made = runner.invoke(main, ["reserves", "proof", "--snapshot", "1", "--owner", "alice",
                                "--asset", "BTC", "--out", str(out)], env=env)
    assert made.exit_code == 0, made.output
    assert audit_main(["verify-liability", str(out)]) == 2  # strict: no pinned keys
    assert audit_main(["verify-liability", str(out), "--allow-unpinned-keys"]) == 0
    assert "alice holds 150000000 BTC" in capsys.readouterr().out


def test_offline_verifier_imports_neither_the_database_nor_flask() -> None:
    code = ("import sys, custody.audit.cli, custody.audit.verify, custody.audit.liabilities; "
            "bad = [m for m in ('sqlalchemy', 'flask', 'alembic', 'psycopg') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_audit_keys_prints_the_document_and_the_fingerprint_the_auditor_recomputes(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["audit", "keys", "--out", str(tmp_path / "keys.json")], env=env)
    assert result.exit_code == 0, result.output
    document, fingerprint_line = result.output.rsplit("fingerprint: ", 1)
    assert json.loads(document) == json.loads((tmp_path / "keys.json").read_text())
    assert json.loads(document)["keys"][0]["name"] == "ledger-checkpoint"
    assert audit_main(["keys-fingerprint", str(tmp_path / "keys.json")]) == 0
    assert capsys.readouterr().out.split()[0] == fingerprint_line.strip()


@pytest.mark.parametrize("snapshot", ["0", "-1", str(2**31), str(10**30)])
def test_reserves_commands_with_snapshot_id_out_of_range_refused_as_usage_error(
    env: dict[str, str], tmp_path: Path, snapshot: str
) -> None:
    runner = CliRunner()
    for args in (["reserves", "report", "--snapshot", snapshot],
                 ["reserves", "proof", "--snapshot", snapshot, "--owner", "alice", "--asset", "BTC",
                  "--out", str(tmp_path / "p.json")]):
        result = runner.invoke(main, args, env=env)
        assert result.exit_code == 2, result.output  # click's usage error, before any database access
        assert "--snapshot" in result.output and "Traceback" not in result.output
