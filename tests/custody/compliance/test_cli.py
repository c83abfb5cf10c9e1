"""The compliance CLI: load the fixture list, load it again (no new version), refuse a broken one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

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
