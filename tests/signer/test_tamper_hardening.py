"""Issue 13's attacks: each is refused with its own code and nothing is signed.

A compromised platform (it holds the platform key and re-signs whatever it
likes) edits the PSBT or the bundle; approvals are the approvers' own. The
two-bundle fee attack runs end to end on the regtest chain in
tests/custody/bitcoin/test_fee_attack.py; the CLI-level "no output file,
signing log unchanged" check for every attack is in test_cli_hardening.py.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest
from embit.psbt import PSBT
from embit.script import address_to_scriptpubkey

from policies.approval import ApprovalSubject
from signer.anchors import TrustAnchors
from signer.bundle import BitcoinTransaction, Bundle, BundleBody
from signer.results import SignerCode as C
from signer.results import SignerError
from signer.signing import sign_bundle

from .helpers import BTC_DESTINATION, EMPTY_HISTORY, NOW_MS, World, descriptor_of, seed

WORLD = World()
ANCHORS = WORLD.anchors()


def refuse(bundle: Bundle, anchors: TrustAnchors = ANCHORS) -> set[C]:
    outcome = sign_bundle(bundle, anchors, seed(0), NOW_MS, EMPTY_HISTORY)
    assert outcome.signed is None
    return set(outcome.verification.codes)


def edited(edit: Callable[[Any], None], **intent: object) -> Bundle:
    """A properly approved, platform-signed bundle whose PSBT the platform edited."""
    psbt = PSBT.from_string(WORLD.btc_psbt())
    edit(psbt)
    return WORLD.sign(WORLD.btc_body(psbt=str(psbt.to_string()), **intent))


def _change_output(psbt: Any, branch: int, index: int) -> None:
    """Point the change output at our own descriptor's `branch/index`, with matching key origins."""
    other = PSBT.from_string(WORLD.btc_psbt(change_index=index))
    if branch != 1:
        derived = descriptor_of(WORLD.descriptor).derive(index, branch_index=branch)
        from custody.chains.bitcoin.psbt import _add_origins

        scope = other.outputs[1]
        scope.bip32_derivations.clear()
        scope.witness_script = derived.witness_script()
        _add_origins(scope, descriptor_of(WORLD.descriptor), branch, index)
        scope.script_pubkey = derived.script_pubkey()
    psbt.outputs[1] = other.outputs[1]


# -- inputs are proven, not claimed -----------------------------------------------------------


def test_lowered_witness_utxo_amount_refused_input_utxo_mismatch() -> None:
    def lower(psbt: Any) -> None:
        psbt.inputs[1].witness_utxo.value -= 20_000  # Makes a 21,000 sat fee look like 1,000.

    assert refuse(edited(lower, fee_cap_minor=5_000)) == {C.INPUT_UTXO_MISMATCH}


def test_lowered_amount_without_previous_transaction_refused_input_amount_missing() -> None:
    def lower(psbt: Any) -> None:
        psbt.inputs[1].witness_utxo.value -= 20_000
        psbt.inputs[1].non_witness_utxo = None

    assert refuse(edited(lower)) == {C.INPUT_AMOUNT_MISSING}


def test_previous_transaction_of_another_coin_refused_input_utxo_mismatch() -> None:
    def swap(psbt: Any) -> None:
        psbt.inputs[1].non_witness_utxo = psbt.inputs[0].non_witness_utxo

    assert refuse(edited(swap)) == {C.INPUT_UTXO_MISMATCH}


def test_witness_utxo_script_differing_from_previous_transaction_refused() -> None:
    def script(psbt: Any) -> None:
        psbt.inputs[0].witness_utxo.script_pubkey = address_to_scriptpubkey(BTC_DESTINATION)

    assert C.INPUT_UTXO_MISMATCH in refuse(edited(script))


def test_fee_shown_comes_from_proven_amounts_not_claims() -> None:
    def lower(psbt: Any) -> None:
        psbt.inputs[1].witness_utxo = None  # Nothing claimed: the previous transaction proves 50,000.

    outcome = sign_bundle(edited(lower), ANCHORS, seed(0), NOW_MS, EMPTY_HISTORY)
    assert outcome.signed is not None
    assert outcome.verification.check is not None and outcome.verification.check.fee_minor == 1_000


def test_same_input_twice_refused_input_duplicate() -> None:
    def duplicate(psbt: Any) -> None:
        psbt.inputs[1] = PSBT.from_string(WORLD.btc_psbt()).inputs[0]

    # Input 1 now spends input 0's coin again (same prevout, same proven amount).
    codes = refuse(edited(duplicate))
    assert C.INPUT_DUPLICATE in codes
    assert codes <= {C.INPUT_DUPLICATE, C.OUTPUTS_EXCEED_INPUTS, C.FEE_OVER_CAP}


def test_outputs_above_proven_inputs_refused_outputs_exceed_inputs() -> None:
    def inflate(psbt: Any) -> None:
        psbt.outputs[1].value += 5_000

    assert refuse(edited(inflate)) == {C.OUTPUTS_EXCEED_INPUTS}


def test_dust_destination_output_refused_output_dust() -> None:
    bundle = WORLD.sign(WORLD.btc_body(psbt=WORLD.btc_psbt(amount_sat=200), amount_minor=200))
    assert refuse(bundle) == {C.OUTPUT_DUST}


def test_transaction_above_standard_weight_refused_tx_too_large() -> None:
    from embit.transaction import Transaction, TransactionInput, TransactionOutput

    from custody.chains.bitcoin.psbt import Utxo, build_psbt

    script = descriptor_of(WORLD.descriptor).derive(3, branch_index=0).script_pubkey()
    utxos = []
    for n in range(960):  # About 420 WU per 2-of-3 input: 960 inputs weigh over 400,000 WU.
        tx = Transaction(
            vin=[TransactionInput(bytes([n % 256]) * 32, n)], vout=[TransactionOutput(1_000, script)]
        )
        utxos.append(Utxo(tx.txid().hex(), 0, 1_000, 0, 3, bytes(tx.serialize())))
    psbt = build_psbt(WORLD.descriptor, "regtest", utxos, BTC_DESTINATION, 900_000, 20_000, 9)
    body = WORLD.btc_body(psbt=psbt, amount_minor=900_000, fee_cap_minor=50_000)
    assert refuse(WORLD.sign(body)) == {C.TX_TOO_LARGE}


# -- change is provably ours and sane ----------------------------------------------------------


def test_change_at_index_2147483647_refused_change_index_out_of_window() -> None:
    assert refuse(edited(lambda psbt: _change_output(psbt, 1, 2**31 - 1))) == {C.CHANGE_INDEX_OUT_OF_WINDOW}


def test_change_on_receive_branch_refused_change_not_change_branch() -> None:
    assert refuse(edited(lambda psbt: _change_output(psbt, 0, 5))) == {C.CHANGE_NOT_CHANGE_BRANCH}


def test_change_within_window_signs() -> None:
    outcome = sign_bundle(
        edited(lambda psbt: _change_output(psbt, 1, 10_000)), ANCHORS, seed(0), NOW_MS, EMPTY_HISTORY
    )
    assert outcome.signed is not None, outcome.verification.refusals


def test_change_window_is_the_anchors_own() -> None:
    data = WORLD.anchors_json()
    data["wallets"][0]["change_index_max"] = 8  # type: ignore[index]
    anchors = TrustAnchors.from_bytes(json.dumps(data).encode())
    assert refuse(WORLD.btc_bundle(), anchors) == {C.CHANGE_INDEX_OUT_OF_WINDOW}  # Change is at 1/9.


# -- nLockTime and nSequence match the stated intent --------------------------------------------


def test_locktime_499999999_refused_locktime_mismatch() -> None:
    def lock(psbt: Any) -> None:
        psbt.locktime = 499_999_999

    assert refuse(edited(lock)) == {C.LOCKTIME_MISMATCH}


def test_sequence_differing_from_stated_intent_refused_sequence_mismatch() -> None:
    def relative_lock(psbt: Any) -> None:
        psbt.inputs[0].sequence = 144  # A BIP 68 relative lock of 144 blocks.

    assert refuse(edited(relative_lock)) == {C.SEQUENCE_MISMATCH}


def test_final_sequence_intent_with_rbf_inputs_refused_sequence_mismatch() -> None:
    body = WORLD.btc_body()
    tx = body.transaction
    assert isinstance(tx, BitcoinTransaction)
    final = dataclasses.replace(body, transaction=BitcoinTransaction(tx.psbt_base64, 0, "final"))
    assert refuse(WORLD.sign(final)) == {C.SEQUENCE_MISMATCH}


def test_nonzero_stated_locktime_is_not_a_valid_bundle() -> None:
    with pytest.raises(SignerError) as error:
        BitcoinTransaction(WORLD.btc_psbt(), 499_999_999)
    assert error.value.code is C.BUNDLE_MALFORMED


# -- the approval digest binds everything the approvers decide on --------------------------------


def _anchors_with_easy_rule() -> TrustAnchors:
    data = WORLD.anchors_json()
    data["quorums"].append(  # type: ignore[attr-defined]
        {"policy_id": "default", "rule": "small-amounts", "count": 1, "group": "treasury"}
    )
    return TrustAnchors.from_bytes(json.dumps(data).encode())


def _with_rule(body: BundleBody, rule: str) -> BundleBody:
    return dataclasses.replace(body, policy=dataclasses.replace(body.policy, rule=rule))


def test_bundle_claiming_easier_rule_with_old_approvals_refused_approvals_rejected() -> None:
    forged = WORLD.sign(_with_rule(WORLD.btc_body(), "small-amounts"))
    codes = refuse(forged, _anchors_with_easy_rule())
    assert {C.APPROVAL_REJECTED, C.POLICY_RULE_BELOW_FLOOR} <= codes
    assert "rule_id was 'cold-transfer'" in _rejection(forged, _anchors_with_easy_rule())


def test_bundle_claiming_easier_rule_even_if_approved_under_it_refused_below_floor() -> None:
    body = WORLD.approve(_with_rule(WORLD.btc_body(), "small-amounts"), ("bob",))
    assert refuse(WORLD.sign(body), _anchors_with_easy_rule()) == {C.POLICY_RULE_BELOW_FLOOR}


def test_raised_fee_cap_not_approved_refused_approvals_rejected() -> None:
    # Gas limit x1000 and the cap raised to match, still under the anchors' ceiling of 10^17 wei.
    body = WORLD.eth_body()
    tx = dataclasses.replace(body.transaction, gas_limit=21_000_000)
    forged = dataclasses.replace(
        body, transaction=tx, intent=dataclasses.replace(body.intent, fee_cap_minor=tx.max_fee_wei)
    )
    assert tx.max_fee_wei < 10**17
    assert refuse(WORLD.sign(forged)) == {C.APPROVAL_REJECTED, C.APPROVALS_INSUFFICIENT}
    assert "fee_cap_minor was 42000000000000" in _rejection(WORLD.sign(forged))


def _rejection(bundle: Bundle, anchors: TrustAnchors = ANCHORS) -> str:
    """Return the first approval rejection's message; its cause must be the digest mismatch (5030)."""
    from policies.results import ResultCode

    outcome = sign_bundle(bundle, anchors, seed(0), NOW_MS, EMPTY_HISTORY)
    [first, *_] = [r for r in outcome.verification.refusals if r.code is C.APPROVAL_REJECTED]
    assert first.cause is ResultCode.APPROVAL_DIGEST_MISMATCH
    return first.message


def test_testnet_approval_does_not_count_for_mainnet() -> None:
    body = WORLD.btc_body()
    subject = body.subject()
    assert dataclasses.replace(subject, network="test") != subject
    testnet = WORLD.approve(dataclasses.replace(body, network="test"), ("bob", "carol"))
    mainnet_digest = body.approvals[0].digest
    assert testnet.approvals[0].digest != mainnet_digest
    forged = dataclasses.replace(body, approvals=testnet.approvals)
    assert refuse(WORLD.sign(forged)) == {C.APPROVAL_REJECTED, C.APPROVALS_INSUFFICIENT}
    assert "network was 'test', this subject has 'regtest'" in _rejection(WORLD.sign(forged))


def test_approval_not_binding_transfer_terms_refused_approval_outdated() -> None:
    body = WORLD.btc_body()
    bare = ApprovalSubject(
        body.request.kind,
        body.request.request_id,
        body.policy.policy_id,
        body.policy.policy_version,
        asset=body.intent.asset,
        amount_minor=body.intent.amount_minor,
        destination=body.intent.destination,
    )
    from policies.approval import sign_approval

    from .helpers import HOUR_MS, approver_key

    approvals = tuple(
        sign_approval(
            approver_key(name),
            approver_id=name,
            key_id=f"{name}-key",
            subject=bare,
            signed_at_ms=NOW_MS - 1,
            expires_at_ms=NOW_MS + HOUR_MS,
        )
        for name in ("bob", "carol")
    )
    codes = refuse(WORLD.sign(dataclasses.replace(body, approvals=approvals)))
    assert C.APPROVAL_OUTDATED in codes


def test_version_1_approval_in_a_bundle_refused_approval_outdated() -> None:
    from ..policies.test_approval_doc import VERSION_1_APPROVAL_HEX

    document = WORLD.btc_bundle().to_json()
    document["body"]["approvals"][0] = VERSION_1_APPROVAL_HEX  # type: ignore[index]
    with pytest.raises(SignerError) as error:
        Bundle.from_json(json.loads(json.dumps(document)))
    assert error.value.code is C.APPROVAL_OUTDATED
    assert "approve again" in error.value.refusal.message


def test_version_1_bundle_refused_with_a_clear_message() -> None:
    document = WORLD.btc_bundle().to_json()
    document["version"] = 1
    data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(SignerError) as error:
        Bundle.from_bytes(data)
    assert error.value.code is C.BUNDLE_VERSION_UNSUPPORTED
    assert "version 1 is no longer accepted" in error.value.refusal.message


# -- fees: an absolute ceiling, and a lower warning threshold ---------------------------------


def test_fee_cap_above_anchors_ceiling_refused_limit_exceeded() -> None:
    body = WORLD.eth_body(fee_cap_minor=10**17 + 1)
    assert C.LIMIT_EXCEEDED in refuse(WORLD.sign(body))


def test_fee_above_warning_threshold_is_a_warning_not_a_refusal() -> None:
    tx = WORLD.eth_tx(max_fee_per_gas_wei=3 * 10**12)  # 21,000 x 3,000 gwei = 6.3 x 10^16 wei.
    body = WORLD.sign(WORLD.eth_body(tx, fee_cap_minor=tx.max_fee_wei))
    outcome = sign_bundle(body, ANCHORS, seed(0), NOW_MS, EMPTY_HISTORY)
    assert outcome.verification.refusals == ()
    assert any("HIGH FEE" in line for line in outcome.verification.warnings)


def test_bitcoin_fee_below_relay_rate_is_a_warning() -> None:
    body = WORLD.btc_body(psbt=WORLD.btc_psbt(fee_sat=100))
    outcome = sign_bundle(WORLD.sign(body), ANCHORS, seed(0), NOW_MS, EMPTY_HISTORY)
    assert outcome.verification.refusals == ()
    assert [w.split(":")[0] for w in outcome.verification.warnings] == ["LOW FEE"]


def test_ethereum_padded_gas_limit_is_a_warning() -> None:
    tx = WORLD.eth_tx(gas_limit=63_000)
    outcome = sign_bundle(
        WORLD.sign(WORLD.eth_body(tx, fee_cap_minor=tx.max_fee_wei)), ANCHORS, seed(0), NOW_MS, EMPTY_HISTORY
    )
    assert outcome.verification.refusals == ()
    assert [w.split(":")[0] for w in outcome.verification.warnings] == ["HIGH GAS LIMIT"]


def test_bundle_about_to_expire_is_a_warning() -> None:
    from .helpers import HOUR_MS

    outcome = sign_bundle(WORLD.eth_bundle(), ANCHORS, seed(0), NOW_MS + HOUR_MS - 60_000, EMPTY_HISTORY)
    assert outcome.verification.refusals == ()
    assert [w.split(":")[0] for w in outcome.verification.warnings] == ["EXPIRES SOON"]


def test_usual_bundles_carry_no_warning() -> None:
    for bundle in (WORLD.btc_bundle(), WORLD.eth_bundle(), WORLD.sign(WORLD.usdc_body())):
        assert sign_bundle(bundle, ANCHORS, seed(0), NOW_MS, EMPTY_HISTORY).verification.warnings == ()
