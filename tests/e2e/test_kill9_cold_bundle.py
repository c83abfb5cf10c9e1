"""Kill -9 the platform between a signed cold bundle's import and its broadcast: `strongroom bundle
import` (a real process, tests/e2e/kill9_serve_worker.py) dies after it recorded the signature,
right after the node accepted the transaction, or after it recorded the broadcast. Importing the
same answer again and the next `strongroom bundle tick` finish the transfer: paid exactly once,
the withdrawal completed, and the simulator's invariants hold (strongroom/simulation/invariants.py).

The setup (an approved cold withdrawal on anvil, exported, signed by the offline signer's CLI) is
tests/e2e/test_cold_transfer.py's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from custody.chains.ethereum.devchain import AnvilChain
from custody.keystore import LocalKeystore
from custody.wallets.wallet import Temperature
from signer import cli as signer_cli
from signer.network import Interface
from strongroom.cli import main
from strongroom.simulation import invariants

from ..custody.bundles.helpers import DAY_MS, HOUR_MS, make_cold_harness, make_world
from ..custody.wallets.conftest import anvil, anvil_url  # noqa: F401 (fixtures)
from ..custody.wallets.helpers import CONFIRMATIONS, ETH
from ..signer.helpers import ETH_DESTINATION
from .kill9_platform import ROOT, WORKER, named_checks

RUN_TIMEOUT_S = 300.0  # bounds a hang; an import takes seconds
POINTS = ["after:bundle.signed", "after:chain.broadcast", "after:bundle.broadcast"]


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    from ..conftest import fresh_database_url

    yield from fresh_database_url(request, "sqlite", tmp_path)


def _strongroom(args: list[str]) -> Any:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, (args, result.output)
    return json.loads(result.stdout)


def _import(path: Path, kill_point: str | None) -> subprocess.CompletedProcess[str]:
    path_env = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path_env}
    env.pop("KILL9_POINT", None)
    if kill_point:
        env["KILL9_POINT"] = kill_point
    return subprocess.run([sys.executable, str(WORKER), "bundle", "import", str(path)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)


class View:
    """What the invariants read of a World, over the test app and the cold harness."""

    def __init__(self, app: Flask, runtime: Any) -> None:
        self.svc = self
        self.app, self.runtime = app, runtime
        self.ledger = app.extensions["strongroom.ledger"]
        self.traders: list[str] = []
        self.btc = None
        self.check_cache: dict[str, Any] = {}


@pytest.mark.parametrize("point", POINTS)
def test_kill9_platform_between_bundle_import_and_broadcast_pays_exactly_once(
    app: Flask, client: FlaskClient, clock: Any, keystore: LocalKeystore, database_url: str,
    anvil: AnvilChain, anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
    point: str,
) -> None:
    clock.now_ms = time.time_ns() // 1_000_000 - DAY_MS - 3 * HOUR_MS  # the CLIs use the wall clock
    harness = make_cold_harness(anvil, database_url, keystore, clock)
    world = make_world(app, client, clock, keystore, harness, "anvil")
    withdrawal_id = world.cold_withdrawal(ETH, approval_ttl_ms=12 * HOUR_MS)
    cold_before = world.cold_balance()
    for key, value in {
        "STRONGROOM_DATABASE_URL": database_url, "STRONGROOM_DATA_DIR": str(tmp_path / "platform-data"),
        "STRONGROOM_KEYSTORE_PASSPHRASE": "platform passphrase, a test", "STRONGROOM_ETH_RPC_URL": anvil_url,
        "STRONGROOM_ETH_USDC_ADDRESS": harness.runtime.adapter.token_address("USDC"),
        "STRONGROOM_ETH_CONFIRMATIONS": str(CONFIRMATIONS["ETH"]), "STRONGROOM_ETH_NETWORK": "anvil",
        "STRONGROOM_ETH_COLD_ADDRESS": harness.runtime.wallets.primary_address(
            harness.runtime.wallets.one("ethereum", Temperature.COLD).id).address,
    }.items():
        monkeypatch.setenv(key, value)
    platform_key = _strongroom(["bundle", "key"])
    home = world.write_signer_home(tmp_path / "signer", platform_key)
    exported = _strongroom(["bundle", "export", withdrawal_id, str(tmp_path / "bundle.json")])
    assert exported["state"] == "exported"
    signer_env = signer_cli.CliEnvironment(interfaces=lambda: [Interface("lo", True, True)])
    assert signer_cli.main(["--home", str(home), "sign", str(tmp_path / "bundle.json"), "--out",
                            str(tmp_path / "signed.json"), "--yes", "--passphrase-file",
                            str(home / "passphrase.txt")], signer_env) == 0

    killed = _import(tmp_path / "signed.json", point)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    again = _import(tmp_path / "signed.json", None)  # the operator imports the answer again
    assert again.returncode == 0, again.stdout + again.stderr
    for _ in range(CONFIRMATIONS["ETH"] + 3):  # the server's cold-bundle job, as a command
        if world.withdrawal_state(withdrawal_id) == "completed":
            break
        _strongroom(["bundle", "tick"])
        anvil.mine(1)
    assert world.withdrawal_state(withdrawal_id) == "completed"
    assert harness.runtime.adapter.balance(ETH_DESTINATION, "ETH") == ETH  # paid exactly once
    assert world.cold_balance() < cold_before - ETH  # the amount and one fee
    harness.runtime.watcher.tick()
    harness.assert_ledger_balanced()
    harness.assert_reconciled()
    checks = named_checks("ledger_zero_sum", "constrained_accounts_non_negative", "holds_match_withdrawals",
                          "no_double_send")
    assert invariants.check(View(app, harness.runtime), checks) == []  # type: ignore[arg-type]
