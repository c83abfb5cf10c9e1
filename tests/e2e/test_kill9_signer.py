"""Kill -9 the offline signer at every step of `strongroom-signer sign` (import -> verify -> sign ->
log -> write the answer): a partial answer is never left under the answer's name nor accepted by
the platform, running the same command again (or with ``--resume`` once the log holds the
signature) produces a valid answer byte for byte equal to the one logged, and the signing log and
its replay protection survive every kill.

The signer is tests/e2e/kill9_signer_worker.py (the real CLI, killed at the named step).
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from custody.bundles.signed import check_signed
from signer.bundle import Bundle
from signer.results import SignerError
from signer.signed import SignedBundle
from signer.signing_log import EVENT_SIGNED, SigningLog

from ..signer.helpers import NOW_MS, World

WORKER = Path(__file__).with_name("kill9_signer_worker.py")
WORLD = World()
STEPS = ("imported", "verified", "signed", "logged", "answer_torn", "answered")
RUN_TIMEOUT_S = 120.0  # bounds a hang; a run takes about a second


def sign(home: Path, bundle: Path, out: Path, point: str = "none",
         *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(WORKER), point, str(NOW_MS), "--", "--home", str(home), "sign", str(bundle),
         "--out", str(out), "--passphrase-file", str(home / "passphrase.txt"), "--yes", *extra],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)


def bundles() -> dict[str, Bundle]:
    return {"bitcoin": WORLD.btc_bundle(), "ethereum": WORLD.eth_bundle()}


def signed_entries(home: Path) -> list[dict[str, str]]:
    return [e.details for e in SigningLog(home / "signing-log.jsonl").entries() if e.event == EVENT_SIGNED]


def assert_answer_valid(bundle: Bundle, out: Path, home: Path) -> None:
    data = out.read_bytes()
    check_signed(bundle, SignedBundle.from_bytes(data))  # what the platform's import checks
    [entry] = signed_entries(home)  # signed once, whatever was killed
    assert entry["output_sha256"] == hashlib.sha256(data).hexdigest()


# Every step on Ethereum; on Bitcoin (PSBT partial signatures) the steps after the log, where a
# re-issued answer must equal the logged one byte for byte.
CASES = [(step, "ethereum") for step in STEPS] + [("logged", "bitcoin"), ("answer_torn", "bitcoin")]


@pytest.mark.parametrize(("step", "chain"), CASES)
def test_kill9_signer_at_each_step_leaves_no_partial_answer_and_finishes_on_rerun(
        tmp_path: Path, step: str, chain: str) -> None:
    bundle = bundles()[chain]
    home = WORLD.write_home(tmp_path / "signer")
    path, out = tmp_path / "bundle.json", tmp_path / "answer.json"
    path.write_bytes(bundle.to_bytes())

    killed = sign(home, path, out, step)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    if out.exists():
        # Only a whole answer is ever visible under its name (written aside, then linked).
        assert step == "answered"
        assert_answer_valid(bundle, out, home)
        return
    logged = signed_entries(home)
    assert len(logged) == (1 if step in ("logged", "answer_torn") else 0)

    again = sign(home, path, out)
    if logged:
        # Replay protection holds: the bundle is signed in the log, a plain re-run refuses...
        assert again.returncode == 1 and "already_signed" in again.stdout, again.stdout + again.stderr
        assert not out.exists()
        # ...and --resume re-issues exactly the logged signature.
        again = sign(home, path, out, "none", "--resume")
    assert again.returncode == 0, again.stdout + again.stderr
    assert_answer_valid(bundle, out, home)
    assert not list(tmp_path.glob("*.partial*")), "a partial answer was left behind"


def test_kill9_torn_answer_is_refused_by_the_platform_import(tmp_path: Path) -> None:
    bundle = bundles()["ethereum"]
    home = WORLD.write_home(tmp_path / "signer")
    path, out = tmp_path / "bundle.json", tmp_path / "answer.json"
    path.write_bytes(bundle.to_bytes())
    assert sign(home, path, out).returncode == 0
    whole = out.read_bytes()
    for cut in (1, len(whole) // 2, len(whole) - 1):
        with pytest.raises(SignerError):
            check_signed(bundle, SignedBundle.from_bytes(whole[:cut]))


def test_kill9_resume_refuses_a_bundle_this_signer_never_signed(tmp_path: Path) -> None:
    bundle = bundles()["ethereum"]
    home = WORLD.write_home(tmp_path / "signer")
    path, out = tmp_path / "bundle.json", tmp_path / "answer.json"
    path.write_bytes(bundle.to_bytes())
    refused = sign(home, path, out, "none", "--resume")
    assert refused.returncode == 1 and "7067" in refused.stderr, refused.stdout + refused.stderr
    assert not out.exists() and signed_entries(home) == []


def test_kill9_answer_on_a_file_system_without_hard_links_is_written_and_never_overwritten(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import os

    from signer.cli import CliEnvironment, main
    from signer.network import Interface

    def no_links(src: object, dst: object) -> None:
        raise PermissionError(1, "Operation not permitted")  # what vfat answers

    monkeypatch.setattr(os, "link", no_links)
    bundle = bundles()["ethereum"]
    home = WORLD.write_home(tmp_path / "signer")
    path, out = tmp_path / "bundle.json", tmp_path / "answer.json"
    path.write_bytes(bundle.to_bytes())
    env = CliEnvironment(stdout=io.StringIO(), stderr=io.StringIO(), now_ms=lambda: NOW_MS,
                         interfaces=lambda: [Interface("lo", True, True)])
    argv = ["--home", str(home), "sign", str(path), "--out", str(out), "--passphrase-file",
            str(home / "passphrase.txt"), "--yes"]
    assert main(argv, env) == 0
    assert_answer_valid(bundle, out, home)
    assert not list(tmp_path.glob("*.partial*"))
    whole = out.read_bytes()
    # Logged but the answer lost, then something else appeared under its name: --resume keeps it.
    out.write_bytes(b"operator's other file")
    assert main([*argv, "--resume"], env) == 1
    assert out.read_bytes() == b"operator's other file"
    out.unlink()
    assert main([*argv, "--resume"], env) == 0
    assert out.read_bytes() == whole
