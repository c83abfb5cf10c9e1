"""`strongroom-signer` end to end: init, inspect, verify, sign, log, qr, and the online check."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest

from custody.bundles.signed import check_signed
from signer.cli import CliEnvironment, main
from signer.network import Interface
from signer.signed import SignedBundle
from signer.signing_log import SigningLog

from .helpers import BTC_ATTACKER, HOUR_MS, NOW_MS, PASSPHRASE, World, mnemonic

WORLD = World()
OFFLINE = [Interface("lo", True, True)]
ONLINE = [Interface("lo", True, True), Interface("eth0", True, False)]


@dataclasses.dataclass
class Run:
    status: int
    out: str
    err: str


def run(
    home: Path,
    *argv: str,
    interfaces: list[Interface] = OFFLINE,
    now_ms: int = NOW_MS,
    answers: tuple[str, ...] = (),
) -> Run:
    out, err = io.StringIO(), io.StringIO()
    replies = iter(answers)
    env = CliEnvironment(
        stdout=out,
        stderr=err,
        now_ms=lambda: now_ms,
        interfaces=lambda: interfaces,
        read_secret=lambda prompt: next(replies),
        read_line=lambda prompt: next(replies),
        min_init_scrypt_log2_n=10,
    )
    status = main(["--home", str(home), *argv], env)
    return Run(status, out.getvalue(), err.getvalue())


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return WORLD.write_home(tmp_path / "signer")


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _sign(home: Path, bundle: Path, out: Path, *extra: str, **kwargs: object) -> Run:
    return run(
        home,
        "sign",
        str(bundle),
        "--out",
        str(out),
        "--passphrase-file",
        str(home / "passphrase.txt"),
        *extra,
        **kwargs,
    )  # type: ignore[arg-type]


def test_init_shows_mnemonic_once_and_restore_reproduces_keys(tmp_path: Path) -> None:
    created = run(tmp_path / "a", "init", "--scrypt-log2-n", "10", answers=(PASSPHRASE, PASSPHRASE))
    assert created.status == 0, created.err
    words = created.out.splitlines()[2].split()
    assert len(words) == 24
    restored = run(
        tmp_path / "b",
        "init",
        "--restore",
        "--scrypt-log2-n",
        "10",
        answers=(" ".join(words), PASSPHRASE, PASSPHRASE),
    )
    assert restored.status == 0, restored.err
    assert " ".join(words) not in restored.out
    keys = lambda r: [line for line in r.out.splitlines() if "cosigner key" in line or "ethereum" in line]  # noqa: E731
    assert keys(created) == keys(restored)
    again = run(tmp_path / "a", "init", "--scrypt-log2-n", "10", answers=(PASSPHRASE, PASSPHRASE))
    assert again.status == 1 and "7074" in again.err


def test_init_refuses_mismatched_passphrases(tmp_path: Path) -> None:
    result = run(tmp_path / "a", "init", "--scrypt-log2-n", "10", answers=(PASSPHRASE, PASSPHRASE + "x"))
    assert result.status == 1 and "passphrase_wrong" in result.err
    assert not (tmp_path / "a" / "keystore.json").exists()


def test_keys_prints_the_cosigner_key_in_the_wallet_descriptor(home: Path) -> None:
    result = run(home, "keys", "--network", "regtest", "--passphrase-file", str(home / "passphrase.txt"))
    assert result.status == 0, result.err
    key = result.out.split("cosigner key: ")[1].split()[0]
    assert key in WORLD.descriptor


def test_inspect_and_verify_show_intent_and_pass(home: Path, tmp_path: Path) -> None:
    bundle = _write(tmp_path, "b.json", WORLD.btc_bundle().to_bytes())
    inspected = run(home, "inspect", str(bundle))
    assert inspected.status == 0, inspected.out
    assert "SEND      0.0004 BTC (40,000 minor units)" in inspected.out
    assert "FEE       0.00001 BTC (1,000 sat), 3.39 sat/vB" in inspected.out
    assert "CHANGE    0.00069 BTC (69,000 sat) back to btc-cold, branch 1 (change), index 9" in inspected.out
    assert "fee: 1000 sat (cap 5000 sat)" in inspected.out
    assert "VERIFIED" in inspected.out
    assert run(home, "verify", str(bundle)).status == 0


def test_sign_offline_with_yes_writes_signed_bundle_and_logs(home: Path, tmp_path: Path) -> None:
    bundle = WORLD.btc_bundle()
    path, out = _write(tmp_path, "b.json", bundle.to_bytes()), tmp_path / "signed.json"
    result = _sign(home, path, out, "--yes")
    assert result.status == 0, result.out + result.err
    signed = SignedBundle.from_bytes(out.read_bytes())
    check_signed(bundle, signed)
    [entry] = SigningLog(home / "signing-log.jsonl").entries()
    assert entry.details["bundle_sha256"] == bundle.digest
    log = run(home, "log")
    assert "SIGNED bundle_id=bnd-wd-1" in log.out and "chain intact" in log.out
    # The same bundle again: replay refused, nothing new written or logged.
    again = _sign(home, path, tmp_path / "again.json", "--yes")
    assert again.status == 1 and "already_signed" in again.out
    assert not (tmp_path / "again.json").exists()
    assert len(SigningLog(home / "signing-log.jsonl").entries()) == 1


def test_sign_asks_for_confirmation_and_stops_without_it(home: Path, tmp_path: Path) -> None:
    path, out = _write(tmp_path, "b.json", WORLD.eth_bundle().to_bytes()), tmp_path / "signed.json"
    declined = _sign(home, path, out, answers=("no",))
    assert declined.status == 1 and "not confirmed" in declined.err
    assert not out.exists()
    confirmed = _sign(home, path, out, answers=("sign",))
    assert confirmed.status == 0, confirmed.err


def test_sign_refused_when_a_network_interface_is_up(home: Path, tmp_path: Path) -> None:
    path, out = _write(tmp_path, "b.json", WORLD.eth_bundle().to_bytes()), tmp_path / "signed.json"
    result = _sign(home, path, out, "--yes", interfaces=ONLINE)
    assert result.status == 1 and "7080" in result.err and "eth0" in result.err
    assert not out.exists()
    assert SigningLog(home / "signing-log.jsonl").entries() == []


def test_sign_online_override_is_logged_loudly(home: Path, tmp_path: Path) -> None:
    path, out = _write(tmp_path, "b.json", WORLD.eth_bundle().to_bytes()), tmp_path / "signed.json"
    result = _sign(home, path, out, "--yes", "--i-know-this-machine-is-online", interfaces=ONLINE)
    assert result.status == 0, result.err
    assert "SIGNING ON A MACHINE THAT MAY BE ONLINE (eth0)" in result.err
    events = [e.event for e in SigningLog(home / "signing-log.jsonl").entries()]
    assert events == ["online_override", "signed"]


def _tampered_files(tmp_path: Path) -> dict[str, bytes]:
    body = WORLD.btc_body()
    good = WORLD.btc_bundle().to_bytes()
    document = json.loads(good)
    document["body"]["intent"]["destination"] = BTC_ATTACKER
    dropped = WORLD.sign(dataclasses.replace(body, approvals=body.approvals[:1])).to_bytes()
    document_v2 = json.loads(good)
    document_v2["version"] = 3
    return {
        "in-transit": json.dumps(document, sort_keys=True, separators=(",", ":")).encode(),
        "fee": WORLD.sign(WORLD.btc_body(psbt=WORLD.btc_psbt(fee_sat=9_000))).to_bytes(),
        "dropped-approval": dropped,
        "version": json.dumps(document_v2, sort_keys=True, separators=(",", ":")).encode(),
        "trailing": good + b"\n",
    }


def test_sign_tampered_bundles_refused_and_nothing_signed(home: Path, tmp_path: Path) -> None:
    expected = {
        "in-transit": "7011",
        "fee": "7043",
        "dropped-approval": "7030",
        "version": "7002",
        "trailing": "7003",
    }
    for name, data in _tampered_files(tmp_path).items():
        out = tmp_path / f"{name}.signed"
        result = _sign(home, _write(tmp_path, name, data), out, "--yes")
        assert result.status == 1, name
        assert expected[name] in result.out + result.err, (name, result.out, result.err)
        assert not out.exists()
    assert SigningLog(home / "signing-log.jsonl").entries() == []


def test_sign_expired_bundle_refused(home: Path, tmp_path: Path) -> None:
    path, out = _write(tmp_path, "b.json", WORLD.eth_bundle().to_bytes()), tmp_path / "signed.json"
    result = _sign(home, path, out, "--yes", now_ms=NOW_MS + 2 * HOUR_MS)
    assert result.status == 1 and "bundle_expired" in result.out
    assert not out.exists()


def test_qr_split_and_join_round_trip_through_the_cli(home: Path, tmp_path: Path) -> None:
    data = WORLD.btc_bundle().to_bytes()
    path = _write(tmp_path, "b.json", data)
    split = run(
        home,
        "qr",
        "split",
        str(path),
        "--out-dir",
        str(tmp_path / "frames"),
        "--png",
        "--chunk-bytes",
        "1200",
    )
    assert split.status == 0, split.err
    texts = sorted((tmp_path / "frames").glob("frame-*.txt"))
    assert len(texts) == len(list((tmp_path / "frames").glob("frame-*.png"))) >= 3
    joined = run(home, "qr", "join", *map(str, reversed(texts)), "--out", str(tmp_path / "joined.json"))
    assert joined.status == 0, joined.err
    assert (tmp_path / "joined.json").read_bytes() == data
    missing = run(home, "qr", "join", *map(str, texts[1:]), "--out", str(tmp_path / "x.json"))
    assert missing.status == 1 and "qr_frame_missing" in missing.err


def test_corrupted_log_blocks_signing(home: Path, tmp_path: Path) -> None:
    path = _write(tmp_path, "b.json", WORLD.btc_bundle().to_bytes())
    assert _sign(home, path, tmp_path / "s1.json", "--yes").status == 0
    log_path = home / "signing-log.jsonl"
    log_path.write_bytes(log_path.read_bytes().replace(b"40000 BTC", b"4 BTC"))
    other = _write(tmp_path, "e.json", WORLD.eth_bundle().to_bytes())
    result = _sign(home, other, tmp_path / "s2.json", "--yes")
    assert result.status == 1 and "log_corrupt" in result.err
    assert run(home, "log").status == 1


def test_mnemonic_helper_is_valid() -> None:
    assert len(mnemonic(3).split()) == 24
