"""The ``strongroom`` CLI against a real database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from strongroom.cli import main


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {"STRONGROOM_DATABASE_URL": database_url, "STRONGROOM_DATA_DIR": str(tmp_path / "d")}


def test_demo_seeds_once_and_is_idempotent(env: dict[str, str]) -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["demo"], env=env)
    assert first.exit_code == 0, first.output
    assert "demo data ready (10 new transfers)" in first.output
    again = runner.invoke(main, ["demo"], env=env)
    assert "demo data ready (0 new transfers)" in again.output


def test_ledger_transfer_and_balance_commands(env: dict[str, str]) -> None:
    runner = CliRunner()
    runner.invoke(main, ["demo"], env=env)
    ok = runner.invoke(main, ["ledger", "transfer", "--id", "cli-1", "--debit", "8",
                              "--credit", "9", "--amount", "100"], env=env)
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["status"] == "created"
    balance = json.loads(runner.invoke(main, ["ledger", "balance", "9"], env=env).output)
    assert balance["credits_posted"] == str(75_000_000 + 100)


def test_ledger_transfer_refusal_prints_code_and_exits_nonzero(env: dict[str, str]) -> None:
    runner = CliRunner()
    runner.invoke(main, ["demo"], env=env)
    refused = runner.invoke(main, ["ledger", "transfer", "--id", "cli-2", "--debit", "8",
                                   "--credit", "9", "--amount", str(10**20)], env=env)
    assert refused.exit_code == 1
    assert json.loads(refused.stderr)["error"] == "insufficient_funds"
    bad = runner.invoke(main, ["ledger", "transfer", "--id", "cli-3", "--debit", "8",
                               "--credit", "9", "--amount", "1.5"], env=env)
    assert bad.exit_code == 2
    assert "must be an integer" in bad.output


def test_balance_of_unknown_account_is_a_clear_error(env: dict[str, str]) -> None:
    runner = CliRunner()
    runner.invoke(main, ["migrate"], env=env)
    result = runner.invoke(main, ["ledger", "balance", "4242"], env=env)
    assert result.exit_code == 1
    assert json.loads(result.stderr)["error"] == "unknown_account"


@pytest.mark.parametrize("args", [
    ["ledger", "balance", str(2**64)],
    ["ledger", "history", str(2**63)],
    ["ledger", "history", "1", "--cursor", str(2**70)],
])
def test_ledger_ids_beyond_the_database_range_are_usage_errors(env: dict[str, str], args: list[str]) -> None:
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "is not in the range" in result.output
