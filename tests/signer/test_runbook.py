"""docs/signer.md's runbook works as written: every block runs, in order, in a fresh shell.

Each `<!-- runbook: NAME -->` bash block is run by bash exactly as printed
(after the `home` block, which every later block repeats, as an operator's
shell would have it), with the answers an operator types on stdin. The
commands run in a network namespace with only loopback and a fresh /sys, as
on the offline machine, so `sign` passes its online check for real. The
bundle is a fresh, properly approved Bitcoin bundle for the cold wallet the
restored key is a cosigner of.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from policies.approval import sign_approval
from signer import qr
from signer.bundle import Bundle

from .helpers import HOUR_MS, PASSPHRASE, World, approver_key, mnemonic

DOC = Path(__file__).resolve().parents[2] / "docs" / "signer.md"
BIN = Path(sys.executable).parent
NETNS = ["unshare", "--net", "--mount", "sh", "-c", 'mount -t sysfs sysfs /sys && exec bash -c "$0"']


def _blocks() -> dict[str, str]:
    text = DOC.read_text()
    return dict(re.findall(r"<!-- runbook: ([\w-]+) -->\n```bash\n(.*?)\n```", text, re.S))


def _offline_shell_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run([*NETNS, "ls /sys/class/net"], capture_output=True, text=True, check=False)
    return probe.returncode == 0 and probe.stdout.split() == ["lo"]


def _fresh_bundle(world: World) -> Bundle:
    now = time.time_ns() // 1_000_000
    body = dataclasses.replace(world.btc_body(), created_at_ms=now - 60_000, expires_at_ms=now + HOUR_MS)
    approvals = tuple(
        sign_approval(
            approver_key(name),
            approver_id=name,
            key_id=f"{name}-key",
            subject=body.subject(),
            signed_at_ms=now - 30_000,
            expires_at_ms=now + 2 * HOUR_MS,
        )
        for name in ("bob", "carol")
    )
    return world.sign(dataclasses.replace(body, approvals=approvals))


@pytest.mark.skipif(not _offline_shell_available(), reason="needs unshare (root) for an offline namespace")
def test_signer_runbook_blocks_run_as_written(tmp_path: Path) -> None:
    blocks = _blocks()
    assert list(blocks) == ["home", "restore", "keys", "anchors", "join", "inspect", "sign", "answer"]
    world = World()
    work = tmp_path / "stick"
    work.mkdir()
    (work / "anchors.json").write_text(json.dumps(world.anchors_json(), indent=2))
    bundle = _fresh_bundle(world)
    for number, frame in enumerate(qr.split(bundle.to_bytes()), start=1):
        (work / f"frame-{number:03d}.txt").write_text(frame + "\n")
    env = {
        "HOME": str(tmp_path / "operator"),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    typed = {
        "restore": f"{mnemonic(0)}\n{PASSPHRASE}\n{PASSPHRASE}\n",
        "keys": f"{PASSPHRASE}\n",
        "sign": f"sign\n{PASSPHRASE}\n",
    }
    outputs = {}
    for name, script in blocks.items():
        done = subprocess.run(
            [*NETNS, blocks["home"] + "\n" + script if name != "home" else script],
            cwd=work,
            env=env,
            input=typed.get(name, ""),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            start_new_session=True,  # No controlling terminal: the passphrase is read from stdin.
        )
        assert done.returncode == 0, (name, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, (name, done.stderr)
        outputs[name] = done.stdout
    assert "bitcoin regtest cosigner key: [" in outputs["keys"]
    assert outputs["keys"].split("cosigner key: ")[1].split()[0] in world.descriptor
    assert "SEND      0.0004 BTC" in outputs["inspect"] and "VERIFIED" in outputs["inspect"]
    assert (work / "bundle.json").read_bytes() == bundle.to_bytes()
    assert f"SIGNED {bundle.body.bundle_id}" in outputs["sign"]
    assert (work / "signed.json").exists() and list((work / "answer-frames").glob("frame-*.txt"))
    assert "1 entries, chain intact" in outputs["answer"]
