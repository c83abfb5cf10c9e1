"""Issue 10, done means (Ethereum): a cold transfer goes from request, through approvals, to an
offline signature and a broadcast.

On anvil everything runs through the real command lines: `strongroom bundle key`
gives the signer its platform anchor, `strongroom bundle export` writes the bundle
and its QR frames, `strongroom-signer` (a separate process with its own home)
joins the frames, signs and splits the answer into frames, `strongroom bundle
import` checks and broadcasts it, and `strongroom bundle tick` settles it. A
signed answer tampered with on the way back is refused and nothing is broadcast.
On the embedded chain the platform side runs in process and the signer's CLI
signs the bundle file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from custody.chains.ethereum.devchain import AnvilChain, EmbeddedChain
from custody.keystore import LocalKeystore
from custody.wallets.wallet import Temperature
from signer import cli as signer_cli
from signer.bundle import Bundle, EthereumTransaction
from signer.network import Interface
from strongroom.cli import main

from ..custody.bundles.helpers import DAY_MS, HOUR_MS, ColdWorld, make_cold_harness, make_world
from ..custody.wallets.conftest import anvil, anvil_url  # noqa: F401 (fixtures)
from ..custody.wallets.helpers import CONFIRMATIONS, ETH
from ..signer.helpers import ETH_ATTACKER, ETH_DESTINATION, ETH_PATH, seed

# The console script installed next to this interpreter, run as its own process.
SIGNER = [str(Path(sys.executable).with_name("strongroom-signer"))]


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    from ..conftest import fresh_database_url

    yield from fresh_database_url(request, "sqlite", tmp_path)


def _strongroom(args: list[str]) -> dict[str, Any]:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, (args, result.output, result.stderr if result.stderr_bytes else "")
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def _signer(home: Path, *args: str) -> str:
    done = subprocess.run(
        [*SIGNER, "--home", str(home), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def _platform_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, world: ColdWorld, url: str
) -> None:
    monkeypatch.setenv("STRONGROOM_DATABASE_URL", database_url)
    monkeypatch.setenv("STRONGROOM_DATA_DIR", str(tmp_path / "platform-data"))
    monkeypatch.setenv("STRONGROOM_KEYSTORE_PASSPHRASE", "platform passphrase, a test")
    monkeypatch.setenv("STRONGROOM_ETH_RPC_URL", url)
    monkeypatch.setenv("STRONGROOM_ETH_USDC_ADDRESS", world.harness.runtime.adapter.token_address("USDC"))
    monkeypatch.setenv("STRONGROOM_ETH_CONFIRMATIONS", str(CONFIRMATIONS["ETH"]))
    monkeypatch.setenv("STRONGROOM_ETH_NETWORK", "anvil")


def _tampered_answer(signed_path: Path, exported: bytes) -> bytes:
    """The signed answer with its transaction re-signed by the cold key to pay the attacker."""
    from eth_account import Account

    from signer.canonical import canonical_bytes
    from signer.ethereum import ethereum_private_key
    from signer.wire import transaction_dict

    tx = Bundle.from_bytes(exported).body.transaction
    assert isinstance(tx, EthereumTransaction)
    fields = transaction_dict(tx)
    fields["to"] = ETH_ATTACKER
    raw = bytes(Account.sign_transaction(fields, ethereum_private_key(seed(0), ETH_PATH)).raw_transaction)
    document = json.loads(signed_path.read_bytes())
    document["result"]["raw_transaction"] = raw.hex()
    return canonical_bytes(document)


def test_cold_withdrawal_round_trip_through_the_command_lines_on_anvil(
    app: Flask,
    client: FlaskClient,
    clock: Any,
    keystore: LocalKeystore,
    database_url: str,
    anvil: AnvilChain,  # noqa: F811
    anvil_url: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The command lines use the wall clock: run the platform's fake clock a little behind it.
    clock.now_ms = time.time_ns() // 1_000_000 - DAY_MS - 3 * HOUR_MS
    harness = make_cold_harness(anvil, database_url, keystore, clock)
    world = make_world(app, client, clock, keystore, harness, "anvil")
    withdrawal_id = world.cold_withdrawal(ETH, approval_ttl_ms=12 * HOUR_MS)
    cold_before = world.cold_balance()
    _platform_env(monkeypatch, tmp_path, database_url, world, anvil_url)

    # The cold address is registered from the environment, as the runbook says (idempotent here).
    monkeypatch.setenv(
        "STRONGROOM_ETH_COLD_ADDRESS",
        world.harness.runtime.wallets.primary_address(
            world.harness.runtime.wallets.one("ethereum", Temperature.COLD).id
        ).address,
    )

    # The signer machine is set up once, with the platform key and wallet the platform prints.
    platform_key = _strongroom(["bundle", "key"])
    printed = _strongroom(["bundle", "anchors"])
    assert printed["platform_keys"] == [platform_key]
    [cold] = printed["wallets"]
    assert (cold["chain"], cold["network"], cold["name"]) == ("ethereum", "anvil", "ethereum-cold")
    home = world.write_signer_home(tmp_path / "signer", platform_key)
    anchors = json.loads((home / "anchors.json").read_text())
    assert next(w for w in anchors["wallets"] if w["chain"] == "ethereum")["address"] == cold["address"]

    # Platform -> signer, as QR frames.
    exported = _strongroom(
        [
            "bundle",
            "export",
            withdrawal_id,
            str(tmp_path / "bundle.json"),
            "--qr-dir",
            str(tmp_path / "out-frames"),
        ]
    )
    assert exported["state"] == "exported" and world.withdrawal_state(withdrawal_id) == "awaiting_signature"
    frames = sorted(str(p) for p in (tmp_path / "out-frames").glob("frame-*.txt"))
    _signer(home, "qr", "join", *frames, "--out", str(tmp_path / "carried.json"))
    assert (tmp_path / "carried.json").read_bytes() == (tmp_path / "bundle.json").read_bytes()
    assert "VERIFIED" in _signer(home, "inspect", str(tmp_path / "carried.json"))
    _signer(
        home,
        "sign",
        str(tmp_path / "carried.json"),
        "--out",
        str(tmp_path / "signed.json"),
        "--yes",
        "--i-know-this-machine-is-online",
        "--passphrase-file",
        str(home / "passphrase.txt"),
    )

    # Tampered on the way back: refused, nothing broadcast, the withdrawal still waits.
    (tmp_path / "tampered.json").write_bytes(
        _tampered_answer(tmp_path / "signed.json", (tmp_path / "bundle.json").read_bytes())
    )
    head = anvil.web3.eth.block_number
    refused = CliRunner().invoke(main, ["bundle", "import", str(tmp_path / "tampered.json")])
    assert refused.exit_code == 1 and json.loads(refused.stderr)["error"] == "signed_refused", refused.output
    assert anvil.web3.eth.block_number == head and harness.runtime.adapter.balance(ETH_ATTACKER, "ETH") == 0
    assert world.withdrawal_state(withdrawal_id) == "awaiting_signature"

    # Signer -> platform, as QR frames.
    _signer(home, "qr", "split", str(tmp_path / "signed.json"), "--out-dir", str(tmp_path / "in-frames"))
    answer_frames = sorted(str(p) for p in (tmp_path / "in-frames").glob("frame-*.txt"))
    imported = _strongroom(["bundle", "import", *answer_frames])
    assert imported["state"] == "broadcast" and imported["txid"]
    assert world.withdrawal_state(withdrawal_id) == "broadcasting"

    anvil.mine(CONFIRMATIONS["ETH"])
    settled = _strongroom(["bundle", "tick"])
    assert settled[0]["state"] == "confirmed", settled  # type: ignore[index]
    assert world.withdrawal_state(withdrawal_id) == "completed"
    assert harness.runtime.adapter.balance(ETH_DESTINATION, "ETH") == ETH
    fee = int(settled[0]["fee_paid"])  # type: ignore[index]
    assert world.cold_balance() == cold_before - ETH - fee
    harness.runtime.watcher.tick()
    harness.assert_ledger_balanced()
    harness.assert_reconciled()
    assert "SIGNED bundle_id=bnd-" in _signer(home, "log")


def test_cold_withdrawal_signed_by_the_signer_cli_and_broadcast_on_the_embedded_chain(
    app: Flask,
    client: FlaskClient,
    clock: Any,
    keystore: LocalKeystore,
    database_url: str,
    tmp_path: Path,
) -> None:
    harness = make_cold_harness(EmbeddedChain(), database_url, keystore, clock)
    world = make_world(app, client, clock, keystore, harness, "embedded")
    withdrawal_id = world.cold_withdrawal(ETH)
    home = world.write_signer_home(tmp_path / "signer")
    (tmp_path / "bundle.json").write_bytes(world.transfers.export("withdrawal", withdrawal_id).data)

    env = signer_cli.CliEnvironment(
        now_ms=lambda: clock.now_ms, interfaces=lambda: [Interface("lo", True, True)]
    )
    status = signer_cli.main(
        [
            "--home",
            str(home),
            "sign",
            str(tmp_path / "bundle.json"),
            "--out",
            str(tmp_path / "signed.json"),
            "--yes",
            "--passphrase-file",
            str(home / "passphrase.txt"),
        ],
        env,
    )
    assert status == 0
    assert world.transfers.import_signed((tmp_path / "signed.json").read_bytes()).state == "broadcast"
    world.settle()
    assert world.withdrawal_state(withdrawal_id) == "completed"
    assert harness.runtime.adapter.balance(ETH_DESTINATION, "ETH") == ETH
    harness.assert_ledger_balanced()
    harness.assert_reconciled()
