"""`strongroom-signer` against issue 13's attacks and walk-through defects.

Every attack bundle is refused by `sign --yes` with its own code: exit 1,
no output file, and the signing log byte for byte unchanged. End of input at
a prompt is "no", never a traceback; warnings need explicit acceptance;
`inspect --json` carries what the operator reads.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from embit.psbt import PSBT

from policies.approval import SubjectKind
from signer.bundle import Bundle, RequestRef
from signer.cli import CliEnvironment, main
from signer.results import SignerCode as C

from .helpers import NOW_MS, PASSPHRASE, World
from .test_tamper_hardening import _anchors_with_easy_rule, _change_output, _with_rule

WORLD = World()


@dataclasses.dataclass
class Run:
    status: int
    out: str
    err: str


def run(home: Path, *argv: str, read_line: Callable[[str], str] | None = None) -> Run:
    out, err = io.StringIO(), io.StringIO()

    def no_input(prompt: str) -> str:
        raise EOFError

    env = CliEnvironment(
        stdout=out,
        stderr=err,
        now_ms=lambda: NOW_MS,
        interfaces=lambda: [],
        read_secret=lambda prompt: PASSPHRASE,
        read_line=read_line or no_input,
    )
    status = main(["--home", str(home), *argv], env)
    return Run(status, out.getvalue(), err.getvalue())


def _edited(edit: Callable[[Any], None], **intent: object) -> Bundle:
    psbt = PSBT.from_string(WORLD.btc_psbt())
    edit(psbt)
    return WORLD.sign(WORLD.btc_body(psbt=str(psbt.to_string()), **intent))


def _lower(psbt: Any) -> None:
    psbt.inputs[1].witness_utxo.value -= 20_000


def _strip(psbt: Any) -> None:
    _lower(psbt)
    for inp in psbt.inputs:
        inp.non_witness_utxo = None


def _duplicate(psbt: Any) -> None:
    psbt.inputs[1] = PSBT.from_string(WORLD.btc_psbt()).inputs[0]


def _locktime(psbt: Any) -> None:
    psbt.locktime = 499_999_999


def _sequence(psbt: Any) -> None:
    psbt.inputs[0].sequence = 144


def _inflate(psbt: Any) -> None:
    psbt.outputs[1].value += 5_000


def _raised_fee_cap() -> Bundle:
    body = WORLD.eth_body()
    tx = dataclasses.replace(body.transaction, gas_limit=21_000_000)
    return WORLD.sign(
        dataclasses.replace(
            body, transaction=tx, intent=dataclasses.replace(body.intent, fee_cap_minor=tx.max_fee_wei)
        )
    )


def _testnet_approvals() -> Bundle:
    body = WORLD.btc_body()
    testnet = WORLD.approve(dataclasses.replace(body, network="test"), ("bob", "carol"))
    return WORLD.sign(dataclasses.replace(body, approvals=testnet.approvals))


ATTACKS: dict[str, tuple[Callable[[], Bundle], C]] = {
    "lowered-witness-utxo": (lambda: _edited(_lower), C.INPUT_UTXO_MISMATCH),
    "no-previous-transaction": (lambda: _edited(_strip), C.INPUT_AMOUNT_MISSING),
    "change-index-2147483647": (
        lambda: _edited(lambda p: _change_output(p, 1, 2**31 - 1)),
        C.CHANGE_INDEX_OUT_OF_WINDOW,
    ),
    "change-receive-branch": (lambda: _edited(lambda p: _change_output(p, 0, 5)), C.CHANGE_NOT_CHANGE_BRANCH),
    "locktime-499999999": (lambda: _edited(_locktime), C.LOCKTIME_MISMATCH),
    "sequence-relative-lock": (lambda: _edited(_sequence), C.SEQUENCE_MISMATCH),
    "same-input-twice": (lambda: _edited(_duplicate), C.INPUT_DUPLICATE),
    "outputs-above-inputs": (lambda: _edited(_inflate), C.OUTPUTS_EXCEED_INPUTS),
    "dust-output": (
        lambda: WORLD.sign(WORLD.btc_body(psbt=WORLD.btc_psbt(amount_sat=200), amount_minor=200)),
        C.OUTPUT_DUST,
    ),
    "raised-fee-cap-not-approved": (_raised_fee_cap, C.APPROVAL_REJECTED),
    "testnet-approvals-on-regtest": (_testnet_approvals, C.APPROVAL_REJECTED),
    "easier-rule-approved-under-it": (
        lambda: WORLD.sign(WORLD.approve(_with_rule(WORLD.btc_body(), "small-amounts"), ("bob",))),
        C.POLICY_RULE_BELOW_FLOOR,
    ),
}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = WORLD.write_home(tmp_path / "signer")
    anchors = json.loads((home / "anchors.json").read_text())
    anchors["quorums"] = json.loads(json.dumps(_anchors_quorums()))
    (home / "anchors.json").write_text(json.dumps(anchors))
    # One earlier signature, so "unchanged" means the same bytes, not just "still empty".
    earlier = WORLD.approve(
        dataclasses.replace(
            WORLD.eth_body(WORLD.eth_tx(nonce=7)),
            bundle_id="bnd-0",
            request=RequestRef(SubjectKind.WITHDRAWAL, "wd-0", "dave"),
        ),
        ("bob", "carol"),
    )
    signed = _sign(home, tmp_path, "earlier", WORLD.sign(earlier), "--yes")
    assert signed.status == 0, signed.out + signed.err
    return home


def _anchors_quorums() -> list[dict[str, object]]:
    assert _anchors_with_easy_rule() is not None
    return [
        {"policy_id": "default", "rule": "cold-transfer", "count": 2, "group": "treasury"},
        {"policy_id": "default", "rule": "small-amounts", "count": 1, "group": "treasury"},
    ]


def _sign(home: Path, tmp_path: Path, name: str, bundle: Bundle, *extra: str, **kwargs: Any) -> Run:
    path = tmp_path / f"{name}.bundle"
    path.write_bytes(bundle.to_bytes())
    return run(
        home,
        "sign",
        str(path),
        "--out",
        str(tmp_path / f"{name}.signed"),
        "--passphrase-file",
        str(home / "passphrase.txt"),
        *extra,
        **kwargs,
    )


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_cli_sign_attack_refused_with_its_code_no_output_log_unchanged(
    home: Path, tmp_path: Path, attack: str
) -> None:
    build, code = ATTACKS[attack]
    log_before = (home / "signing-log.jsonl").read_bytes()
    result = _sign(home, tmp_path, attack, build(), "--yes", "--accept-warnings")
    assert result.status == 1
    assert f"REFUSED {int(code)} {code.error}" in result.out, result.out
    assert "NOTHING WAS SIGNED" in result.err
    assert not (tmp_path / f"{attack}.signed").exists()
    assert (home / "signing-log.jsonl").read_bytes() == log_before


def test_cli_end_of_input_at_the_sign_prompt_is_no_not_a_traceback(home: Path, tmp_path: Path) -> None:
    log_before = (home / "signing-log.jsonl").read_bytes()
    result = _sign(home, tmp_path, "eof", WORLD.btc_bundle())
    assert result.status == 1
    assert "Traceback" not in result.out + result.err
    assert f"{int(C.NOT_CONFIRMED)} not_confirmed" in result.err
    assert not (tmp_path / "eof.signed").exists()
    assert (home / "signing-log.jsonl").read_bytes() == log_before


def _high_fee_bundle() -> Bundle:
    tx = WORLD.eth_tx(max_fee_per_gas_wei=3 * 10**12, nonce=1)
    return WORLD.sign(
        dataclasses.replace(WORLD.eth_body(tx, fee_cap_minor=tx.max_fee_wei), bundle_id="bnd-hf")
    )


def test_cli_high_fee_warning_refuses_yes_without_accept_warnings(home: Path, tmp_path: Path) -> None:
    result = _sign(home, tmp_path, "hf", _high_fee_bundle(), "--yes")
    assert result.status == 1
    assert "WARNING HIGH FEE" in result.out
    assert f"{int(C.WARNING_NOT_ACCEPTED)} warning_not_accepted" in result.err
    assert not (tmp_path / "hf.signed").exists()


def test_cli_high_fee_warning_declined_interactively_signs_nothing(home: Path, tmp_path: Path) -> None:
    answers = iter(["no"])
    result = _sign(home, tmp_path, "hf", _high_fee_bundle(), read_line=lambda prompt: next(answers))
    assert result.status == 1 and "warning_not_accepted" in result.err
    assert not (tmp_path / "hf.signed").exists()


def test_cli_high_fee_warning_accepted_interactively_signs(home: Path, tmp_path: Path) -> None:
    prompts: list[str] = []
    answers = iter(["accept", "sign"])

    def answer(prompt: str) -> str:
        prompts.append(prompt)
        return next(answers)

    result = _sign(home, tmp_path, "hf", _high_fee_bundle(), read_line=answer)
    assert result.status == 0, result.out + result.err
    assert "accept" in prompts[0] and "sign" in prompts[1]
    assert (tmp_path / "hf.signed").exists()


def test_cli_high_fee_warning_accepted_with_flag_signs(home: Path, tmp_path: Path) -> None:
    result = _sign(home, tmp_path, "hf", _high_fee_bundle(), "--yes", "--accept-warnings")
    assert result.status == 0, result.out + result.err


def test_cli_inspect_json_carries_what_the_operator_reads(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "btc.bundle"
    path.write_bytes(WORLD.btc_bundle().to_bytes())
    result = run(home, "inspect", str(path), "--json")
    assert result.status == 0, result.out
    report = json.loads(result.out)
    assert report["ok"] is True and report["refusals"] == [] and report["warnings"] == []
    assert report["intent"]["amount_minor"] == "40000"
    assert report["transaction"]["fee_sat"] == "1000"
    assert report["transaction"]["change"] == [{"amount_sat": "69000", "branch": 1, "index": 9}]
    assert report["transaction"]["locktime"] == 0 and report["transaction"]["sequence"] == "rbf"
    assert report["expires_at"] == "2023-11-14T23:13:20Z"
    assert [a["approver_id"] for a in report["approvals"]] == ["bob", "carol"]
    assert report["approvals"][0]["key_id"] == "bob-key"


def test_cli_inspect_json_lists_refusals_with_codes(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.bundle"
    path.write_bytes(_edited(_locktime).to_bytes())
    result = run(home, "inspect", str(path), "--json")
    assert result.status == 1
    report = json.loads(result.out)
    assert [r["code"] for r in report["refusals"]] == [int(C.LOCKTIME_MISMATCH)]


def test_cli_inspect_shows_whole_units_fee_rate_change_and_timing(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "usdc.bundle"
    path.write_bytes(WORLD.sign(WORLD.usdc_body(amount=2_500_000_000)).to_bytes())
    out = run(home, "inspect", str(path)).out
    assert "SEND      2,500 USDC (2,500,000,000 minor units)" in out
    assert "max fee 2 gwei (tip 1 gwei)" in out
    assert "EXPIRES   2023-11-14T23:13:20Z (1 h 0 min left)" in out
    assert "APPROVED  by bob (key bob-key) at 2023-11-14T22:12:50Z" in out
