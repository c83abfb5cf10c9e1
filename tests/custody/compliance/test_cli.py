"""The compliance CLI: load the fixture list, load it again (no new version), refuse a broken one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from custody.compliance.codes import ComplianceCode, ComplianceError
from strongroom.cli import main

from .conftest import FIXTURE_DIR, add_sdn_row, list_copy


@pytest.fixture
def env(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {"STRONGROOM_DATA_DIR": str(tmp_path / "data"), "STRONGROOM_DATABASE_URL": sqlite_url,
              "STRONGROOM_KEYSTORE_PASSPHRASE": "server keystore passphrase"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def test_compliance_load_sdn_versions_once_and_refuses_broken_list(
        env: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["compliance", "load-sdn", str(FIXTURE_DIR), "--actor", "mlro"], env=env)
    assert first.exit_code == 0, first.output
    assert (json.loads(first.output)["version"], json.loads(first.output)["created"]) == (1, True)
    again = runner.invoke(main, ["compliance", "load-sdn", str(FIXTURE_DIR)], env=env)
    assert json.loads(again.output)["created"] is False
    broken = list_copy(tmp_path)
    add_sdn_row(broken, "oops")
    refused = runner.invoke(main, ["compliance", "load-sdn", str(broken)], env=env)
    assert refused.exit_code == 1 and json.loads(refused.stderr)["error"] == "sanctions_list_invalid"
    listed = json.loads(runner.invoke(main, ["compliance", "lists"], env=env).output)
    assert [v["version"] for v in listed["versions"]] == [1]
    assert json.loads(runner.invoke(main, ["compliance", "rescreen"], env=env).output) == {"new_alerts": []}
    assert json.loads(runner.invoke(main, ["compliance", "monitor"], env=env).output) == {"new_alerts": []}


def _officer_with_mfa(env: dict[str, str]) -> str:
    """Create officer mlro (compliance role, confirmed authenticator), trader dana with a record; return
    mlro's TOTP secret."""
    import time

    from policies.mfa import TOTP_STEP_S, totp_code
    from policies.roles import Role
    from strongroom.commands.access import services

    svc = services()
    svc.users.create_user("mlro", frozenset({Role.COMPLIANCE}), actor="test")
    svc.users.create_user("dana", frozenset({Role.TRADER}), actor="test")
    enrolment = svc.mfa.enrol("mlro")
    # Confirm with the previous step's code, so the command's current code is not a replay.
    previous = int(time.time() * 1000) - TOTP_STEP_S * 1000
    assert svc.mfa.confirm("mlro", totp_code(enrolment.secret_base32, previous)) is None
    svc.personal_data.store("dana", PII_RECORD, actor="dana")
    return enrolment.secret_base32


PII_RECORD = {"given_names": "Zelphine", "family_name": "Quorra", "date_of_birth": "1987-03-14",
              "nationality": "DE", "document_type": "passport", "document_number": "XQ7719024K",
              "street": "Kastanienallee 77", "city": "Wuppertal", "postcode": "42103", "country": "DE"}


def test_compliance_cli_erase_personal_data_refuses_trader_bad_mfa_unknown_user_then_erases(
        env: dict[str, str]) -> None:
    import time

    from policies.mfa import TOTP_STEP_S, totp_code
    from strongroom.commands.access import services

    secret = _officer_with_mfa(env)
    runner = CliRunner()

    def erase(username: str, officer: str, code: str) -> Any:
        return runner.invoke(main, ["compliance", "erase-personal-data", username, "--officer", officer,
                                    "--mfa", code, "--reason", "erasure request"], env=env)

    refused = erase("dana", "dana", "000000")
    assert refused.exit_code == 1 and json.loads(refused.stderr)["error"] == "permission_denied"
    refused = erase("dana", "mlro", "not-a-code")
    assert refused.exit_code == 1 and json.loads(refused.stderr)["error"].startswith("mfa_")
    assert services().personal_data.read("mlro", "dana", "still there")["record"]["family_name"] == "Quorra"
    now_ms = int(time.time() * 1000)
    done = erase("dana", "mlro", totp_code(secret, now_ms))
    assert done.exit_code == 0, done.output
    assert json.loads(done.output) == {"erased": {"username": "dana"}}
    with pytest.raises(ComplianceError) as gone:
        services().personal_data.read("mlro", "dana", "after erasure")
    assert gone.value.code is ComplianceCode.PERSONAL_DATA_NOT_FOUND
    # The next step's code (inside the one-step window; the current one is spent): nothing to erase.
    refused = erase("dana", "mlro", totp_code(secret, now_ms + TOTP_STEP_S * 1000))
    assert refused.exit_code == 1 and json.loads(refused.stderr)["error"] == "personal_data_not_found"


def test_compliance_cli_rewrap_personal_data_needs_an_officer_and_logs_the_run(env: dict[str, str]) -> None:
    import time

    from policies.mfa import totp_code
    from strongroom.commands.access import services

    secret = _officer_with_mfa(env)
    runner = CliRunner()
    refused = runner.invoke(main, ["compliance", "rewrap-personal-data", "--officer", "dana",
                                   "--mfa", "000000", "--reason", "rotation"], env=env)
    assert refused.exit_code == 1 and json.loads(refused.stderr)["error"] == "permission_denied"
    done = runner.invoke(main, ["compliance", "rewrap-personal-data", "--officer", "mlro", "--mfa",
                                totp_code(secret, int(time.time() * 1000)), "--reason", "after rotation"],
                         env=env)
    assert done.exit_code == 0, done.output
    assert json.loads(done.output) == {"rewrapped": 0}  # nothing under an older KEK version
    assert services().personal_data.read("mlro", "dana", "still opens")["record"]["family_name"] == "Quorra"
