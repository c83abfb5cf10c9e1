"""The ``strongroom`` CLI against a real database."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
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


@pytest.fixture
def admins(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Two admins with confirmed authenticators; return each one's next TOTP code."""
    from policies.mfa import TOTP_STEP_S, totp_code
    from policies.roles import Role
    from strongroom.commands.access import services

    env["STRONGROOM_KEYSTORE_PASSPHRASE"] = "cli test keystore passphrase"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert CliRunner().invoke(main, ["demo"], env=env).exit_code == 0
    svc = services()
    codes = {}
    for name in ("boss1", "boss2"):
        svc.users.create_user(name, frozenset({Role.ADMIN}), actor="test")
        secret = svc.mfa.enrol(name).secret_base32
        # Confirm with the previous step's code, so the current step is still unused. The
        # clock is read right here: user creation can take seconds on a loaded machine.
        now_ms = time.time_ns() // 1_000_000
        assert svc.mfa.confirm(name, totp_code(secret, now_ms - TOTP_STEP_S * 1000)) is None
        codes[name] = totp_code(secret, now_ms)
    return codes


def _propose(env: dict[str, str], *args: str) -> str:
    proposed = CliRunner().invoke(main, ["ledger", "transfer", *args], env=env)
    assert proposed.exit_code == 0, (proposed.output, proposed.stderr)
    proposal = json.loads(proposed.output)["proposal"]
    assert (proposal["state"], proposal["proposer"]) == ("proposed", "boss1")
    return str(proposal["id"])


def test_ledger_transfer_is_a_proposal_until_a_second_admin_approves_with_mfa(
    env: dict[str, str], admins: dict[str, str]
) -> None:
    runner = CliRunner()
    proposal = _propose(env, "--id", "cli-1", "--debit", "8", "--credit", "9", "--amount", "100",
                        "--by", "boss1")
    balance = json.loads(runner.invoke(main, ["ledger", "balance", "9"], env=env).output)
    assert balance["credits_posted"] == str(75_000_000)
    alone = runner.invoke(main, ["ledger", "approve", proposal, "--by", "boss1", "--mfa", admins["boss1"]],
                          env=env)
    assert alone.exit_code == 1 and json.loads(alone.stderr)["error"] == "approval_self"
    wrong = runner.invoke(main, ["ledger", "approve", proposal, "--by", "boss2", "--mfa", "000000"], env=env)
    assert wrong.exit_code == 1 and json.loads(wrong.stderr)["error"] == "mfa_invalid"
    ok = runner.invoke(main, ["ledger", "approve", proposal, "--by", "boss2", "--mfa", admins["boss2"]],
                       env=env)
    assert ok.exit_code == 0, (ok.output, ok.stderr)
    assert json.loads(ok.output)["proposal"]["state"] == "executed"
    balance = json.loads(runner.invoke(main, ["ledger", "balance", "9"], env=env).output)
    assert balance["credits_posted"] == str(75_000_000 + 100)
    history = runner.invoke(main, ["ledger", "history", "9"], env=env).output.splitlines()
    assert json.loads(history[-1])["actor"] == "user:boss1"


def test_ledger_transfer_refusals_print_code_and_exit_nonzero(
    env: dict[str, str], admins: dict[str, str]
) -> None:
    runner = CliRunner()
    refused = runner.invoke(main, ["ledger", "transfer", "--id", "cli-2", "--debit", "8", "--credit", "9",
                                   "--amount", str(10**20), "--by", "boss1"], env=env)
    assert refused.exit_code == 1
    assert json.loads(refused.stderr)["error"] == "insufficient_funds"
    assert runner.invoke(main, ["ledger", "proposals"], env=env).output == ""
    bad = runner.invoke(main, ["ledger", "transfer", "--id", "cli-3", "--debit", "8",
                               "--credit", "9", "--amount", "1.5", "--by", "boss1"], env=env)
    assert bad.exit_code == 2
    assert "must be an integer" in bad.output
    trader = runner.invoke(main, ["ledger", "transfer", "--id", "cli-4", "--debit", "8", "--credit", "9",
                                  "--amount", "1", "--by", "alice"], env=env)
    assert trader.exit_code == 1 and json.loads(trader.stderr)["error"] == "permission_denied"


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


def test_every_lazily_imported_command_resolves_and_is_listed() -> None:
    from strongroom.cli import LAZY_COMMANDS, LAZY_LEDGER_COMMANDS, ledger

    context = click.Context(main)
    for name in LAZY_COMMANDS:
        assert main.get_command(context, name) is not None, name
    for name in LAZY_LEDGER_COMMANDS:
        assert ledger.get_command(click.Context(ledger), name) is not None, name
    listed = CliRunner().invoke(main, ["--help"]).output
    assert all(f"  {name} " in listed for name in [*LAZY_COMMANDS, "serve", "ledger"])


def test_help_and_api_commands_do_not_import_web3_sqlalchemy_or_alembic() -> None:
    import subprocess
    import sys

    probe = ("import sys; from click.testing import CliRunner; from strongroom.cli import main; "
             "CliRunner().invoke(main, ['--help']); CliRunner().invoke(main, ['api', '--help']); "
             "print(sorted(m for m in ('web3', 'sqlalchemy', 'alembic', 'flask') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert out.stdout.strip() == "[]", out.stdout
