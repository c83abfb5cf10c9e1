"""docs/bundles.md's runbook works as written against `strongroom devnet`, with docs/signer.md's.

Every `<!-- runbook: NAME -->` block of docs/bundles.md runs, in order, in a
fresh `bash -e` after the `env` block, with only the devnet (started here, as
the operator's other terminal would) and the platform's CLI. What people do
by hand between the blocks is done here the same way: the treasury lead
writes the signer's anchors.json from `strongroom bundle anchors` and the
approvers' keys; each of two cosigners runs docs/signer.md's runbook blocks
as written (offline, in a network namespace) on a copy of the QR frames, and
their answer frames are carried back. The refill then settles on chain and
in the ledger, and reconciliation agrees.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from custody.db import make_engine, make_session_factory
from custody.ledger.service import Ledger
from strongroom.devnet.runner import start

from ..signer.helpers import PASSPHRASE, World, mnemonic
from ..signer.test_runbook import NETNS, _offline_shell_available

DOCS = Path(__file__).resolve().parents[2] / "docs"
BIN = Path(sys.executable).parent
REFILL_SAT = 10_000_000


def _blocks(doc: str) -> dict[str, str]:
    text = (DOCS / doc).read_text()
    return dict(re.findall(r"<!-- runbook: ([\w-]+) -->\n```bash\n(.*?)\n```", text, re.S))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(command: list[str], cwd: Path, env: dict[str, str], stdin: str = "") -> str:
    done = subprocess.run(command, cwd=cwd, env=env, input=stdin, capture_output=True, text=True,
                          timeout=600, check=False, start_new_session=True)
    assert done.returncode == 0, (command[-1][-400:], done.stdout[-3000:], done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def _anchors(platform: dict[str, object], approver_keys: list[dict[str, str]]) -> dict[str, object]:
    """Write the signer's anchors as the treasury lead does (docs/signer.md's format)."""
    wallets = [w for w in platform["wallets"] if w["chain"] == "bitcoin"]  # type: ignore[index, union-attr]
    return {
        "format": "strongroom-signer-anchors", "version": 1,
        "platform_keys": platform["platform_keys"],
        "approvers": [{"approver_id": k["username"], "groups": ["treasury"],
                       "keys": [{"key_id": k["key_id"], "scheme": "ed25519", "public_key": k["public_key"]}]}
                      for k in approver_keys],
        "quorums": [{"policy_id": "treasury-refill", "rule": "cold-refill", "count": 2, "group": "treasury"}],
        "wallets": wallets,
        "assets": [{"asset": "BTC", "chain": "bitcoin", "max_amount_minor": 10**8,
                    "max_fee_minor": 100_000, "warn_fee_minor": 90_000}],
    }


@pytest.mark.skipif(not _offline_shell_available(), reason="needs unshare (root) for an offline namespace")
def test_bundles_runbook_blocks_run_as_written_against_devnet(tmp_path: Path) -> None:
    platform_blocks, signer_blocks = _blocks("bundles.md"), _blocks("signer.md")
    assert list(platform_blocks) == ["env", "setup", "float", "refill", "import"]
    data, work = tmp_path / "data", tmp_path / "platform"
    work.mkdir()
    world = World()
    (work / "cold-descriptor.txt").write_text(world.descriptor + "\n")
    (work / "cold-address.txt").write_text(world.eth_address + "\n")
    (work / "approver-passphrase.txt").write_text("approver keystore passphrase\n")
    env = {"HOME": str(tmp_path / "operator"), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "STRONGROOM_DATA_DIR": str(data),
           "STRONGROOM_KEYSTORE_PASSPHRASE": "platform keystore passphrase"}
    net = start(data, eth_port=_free_port(), btc_port=_free_port())
    try:
        def platform(name: str) -> str:
            script = platform_blocks["env"] + "\n" + platform_blocks[name]
            return _run(["bash", "-e", "-c", script], work, env)

        setup = platform("setup")
        keys = [json.loads(line)["approver_key"] for line in setup.splitlines() if '"approver_key"' in line]
        assert [k["username"] for k in keys] == ["bob", "carol"]
        anchors = _anchors(json.loads((work / "platform-anchors.json").read_text()), keys)
        assert '"status": "ok"' in platform("float")
        platform("refill")
        frames = sorted((work / "frames").glob("frame-*.txt"))
        assert frames
        for number, seed in ((1, 0), (2, 1)):  # two of the three cosigners
            stick = tmp_path / f"stick-{number}"
            stick.mkdir()
            (stick / "anchors.json").write_text(json.dumps(anchors, indent=2))
            for frame in frames:
                shutil.copy(frame, stick / frame.name)
            signer_env = {**env, "HOME": str(tmp_path / f"cosigner-home-{number}")}
            typed = {"restore": f"{mnemonic(seed)}\n{PASSPHRASE}\n{PASSPHRASE}\n", "keys": f"{PASSPHRASE}\n",
                     "sign": f"sign\n{PASSPHRASE}\n"}
            for name, script in signer_blocks.items():
                text = script if name == "home" else signer_blocks["home"] + "\n" + script
                out = _run([*NETNS, text], stick, signer_env, typed.get(name, ""))
                if name == "sign":
                    assert "SIGNED bnd-refill:BTC:" in out, out
            shutil.copytree(stick / "answer-frames", work / f"cosigner-{number}")
        imported = platform("import")
        listed = imported[imported.rindex('"bundle_id"'):]  # the last document: `bundle list`
        assert '"state": "confirmed"' in listed, imported
        assert '"status": "ok"' in imported, imported  # reconciliation after the refill
    finally:
        net.close()
    ledger = Ledger(make_session_factory(make_engine(f"sqlite:///{data / 'strongroom.db'}")))
    hot = ledger.find_account("wallet.bitcoin-hot", "BTC", "hot_wallet")  # type: ignore[arg-type]
    cold = ledger.find_account("wallet.bitcoin-cold", "BTC", "cold_wallet")  # type: ignore[arg-type]
    assert hot is not None and cold is not None
    # 0.3 BTC swept to cold, 0.1 BTC of it refilled to hot (cold also paid the refill's fee).
    assert 30_000_000 - REFILL_SAT - 50_000 <= cold.balance.debit_balance_posted < 30_000_000 - REFILL_SAT
    assert hot.balance.debit_balance_posted > 50_000_000 - 30_000_000 + REFILL_SAT - 100_000
