"""The access CLI: bootstrap an admin, register approver keys, approve from a personal keystore."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from custody.db import make_engine, make_session_factory
from custody.keystore import LocalKeystore
from custody.ledger.entry import AccountKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger
from custody.withdrawals.service import WithdrawalInput
from strongroom.cli import main
from strongroom.commands.access import services


@pytest.fixture
def env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {
        "STRONGROOM_DATA_DIR": str(tmp_path / "data"),
        "STRONGROOM_DATABASE_URL": database_url,
        "STRONGROOM_KEYSTORE_PASSPHRASE": "server keystore passphrase",
        "STRONGROOM_APPROVER_PASSPHRASE": "approver passphrase, test only",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def test_users_create_prints_the_secret_once_and_never_stores_it(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["users", "create", "--username", "boss", "--role", "admin"], env=env)
    assert result.exit_code == 0, result.output
    secret = next(
        line.split()[-1] for line in result.output.splitlines() if "secret" in line and "srs_" in line
    )
    listed = CliRunner().invoke(main, ["users", "list"], env=env)
    assert json.loads(listed.output)["roles"] == ["admin"] and secret not in listed.output
    again = CliRunner().invoke(main, ["users", "create", "--username", "boss", "--role", "admin"], env=env)
    assert again.exit_code == 1 and json.loads(again.stderr)["error"] == "user_exists"


def test_approvers_register_keys_and_approve_from_their_keystore(env: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner()
    runner.invoke(
        main, ["users", "create", "--username", "alice", "--role", "trader", "--kyc-tier", "2"], env=env
    )
    for name in ("t1", "t2"):
        assert (
            runner.invoke(
                main, ["users", "create", "--username", name, "--role", "treasury"], env=env
            ).exit_code
            == 0
        )
        registered = runner.invoke(
            main,
            ["approver", "register-key", "--username", name, "--keystore", str(tmp_path / f"{name}.srks")],
            env=env,
        )
        assert registered.exit_code == 0, registered.output
    withdrawal_id = _pending_withdrawal(env["STRONGROOM_DATABASE_URL"])
    listed = runner.invoke(main, ["approvals", "list", "--username", "t1"], env=env)
    assert json.loads(listed.output)["id"] == withdrawal_id
    shown = runner.invoke(main, ["approvals", "show", withdrawal_id], env=env)
    assert "large-hot-approvals: matched" in "\n".join(json.loads(shown.output)["decision"]["explanation"])
    as_text = runner.invoke(main, ["approvals", "show", withdrawal_id, "--text"], env=env)
    assert "large-hot-approvals: matched" in as_text.output and "you sign:" in as_text.output
    states = []
    for name in ("t1", "t2"):
        approved = runner.invoke(
            main,
            [
                "approvals",
                "approve",
                withdrawal_id,
                "--username",
                name,
                "--keystore",
                str(tmp_path / f"{name}.srks"),
            ],
            env=env,
        )
        assert approved.exit_code == 0, approved.output
        states.append(json.loads(approved.output)["state"])
    assert states == ["pending_approval", "approved"]
    # The private key never left the approver's keystore file.
    assert LocalKeystore(tmp_path / "t1.srks", env["STRONGROOM_APPROVER_PASSPHRASE"]).key_info("approver")
    forged = runner.invoke(
        main,
        ["approvals", "approve", withdrawal_id, "--username", "t1", "--keystore", str(tmp_path / "t2.srks")],
        env=env,
    )
    assert forged.exit_code == 1


def _pending_withdrawal(database_url: str) -> str:
    svc = services()
    ledger = Ledger(make_session_factory(make_engine(database_url)))
    hot = ledger.ensure_account("platform", "BTC", AccountKind.HOT_WALLET)
    account = ledger.ensure_account("alice", "BTC", AccountKind.USER_AVAILABLE)
    ledger.transfer(TransferRequest(id="dep", debit_account=hot.id, credit_account=account.id, amount=10**8))
    svc.withdrawals.add_whitelist("alice", "BTC", "bc1qalice")
    svc.withdrawals._clock = lambda: 2**42  # A day later (the real clock would wait 24 h).
    view = svc.withdrawals.create(
        svc.users.get_user("alice"), WithdrawalInput("BTC", 30_000_000, "bc1qalice"), "wd_cli"
    )
    assert view.state == "pending_approval", view.decision()["explanation"]
    return view.id
