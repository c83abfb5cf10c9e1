"""The tamper suite: every altered bundle is refused with the right reason, and nothing is signed.

Two kinds of attacker: one who alters the bundle in transit (the platform
signature no longer verifies), and a compromised platform that re-signs
whatever it likes (then the approvals, the transaction checks, or the
signer's own anchors must catch it).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import pytest

from policies.results import ResultCode
from signer.bundle import BitcoinTransaction, Bundle
from signer.results import SignerCode as C
from signer.results import SignerError
from signer.signing import sign_bundle
from signer.signing_log import History, SignedRecord

from .helpers import (
    BTC_ATTACKER,
    EMPTY_HISTORY,
    ETH_ATTACKER,
    HOUR_MS,
    NOW_MS,
    World,
    other_descriptor,
    seed,
)

WORLD = World()
ANCHORS = WORLD.anchors()


def refuse(bundle: Bundle, now_ms: int = NOW_MS, history: History = EMPTY_HISTORY) -> set[C]:
    """Try to sign; assert nothing was signed; return the refusal codes."""
    outcome = sign_bundle(bundle, ANCHORS, seed(0), now_ms, history)
    assert outcome.signed is None
    assert not outcome.verification.ok
    return set(outcome.verification.codes)


def causes(bundle: Bundle) -> set[ResultCode]:
    outcome = sign_bundle(bundle, ANCHORS, seed(0), NOW_MS, EMPTY_HISTORY)
    return {r.cause for r in outcome.verification.refusals if r.cause is not None}


def in_transit(bundle: Bundle, edit: Callable[[dict[str, object]], None]) -> Bundle:
    """Edit the bundle's JSON without the platform key: the signature stays the old one."""
    document = bundle.to_json()
    edit(document)
    return Bundle.from_json(json.loads(json.dumps(document)))


def test_untampered_bundles_sign() -> None:
    for bundle in (WORLD.btc_bundle(), WORLD.eth_bundle(), WORLD.sign(WORLD.usdc_body())):
        outcome = sign_bundle(bundle, ANCHORS, seed(0), NOW_MS, EMPTY_HISTORY)
        assert outcome.verification.refusals == ()
        assert outcome.signed is not None


# -- destination -----------------------------------------------------------------------------


def test_tamper_destination_in_transit_refused_platform_signature() -> None:
    def edit(doc: dict[str, object]) -> None:
        doc["body"]["intent"]["destination"] = BTC_ATTACKER  # type: ignore[index]

    assert C.PLATFORM_SIGNATURE_INVALID in refuse(in_transit(WORLD.btc_bundle(), edit))


def test_tamper_destination_by_platform_refused_approvals_do_not_cover_it() -> None:
    body = WORLD.btc_body()
    forged = dataclasses.replace(
        body,
        intent=dataclasses.replace(body.intent, destination=BTC_ATTACKER),
        transaction=BitcoinTransaction(WORLD.btc_psbt(destination=BTC_ATTACKER)),
    )
    bundle = WORLD.sign(forged)
    assert refuse(bundle) == {C.APPROVAL_REJECTED, C.APPROVALS_INSUFFICIENT}
    assert causes(bundle) == {ResultCode.APPROVAL_DIGEST_MISMATCH, ResultCode.APPROVALS_INSUFFICIENT}


def test_tamper_destination_in_psbt_only_refused_destination_mismatch() -> None:
    body = WORLD.btc_body(psbt=WORLD.btc_psbt(destination=BTC_ATTACKER))
    assert refuse(WORLD.sign(body)) == {C.DESTINATION_MISMATCH, C.OUTPUT_NOT_OURS}


def test_tamper_destination_in_ethereum_tx_refused_destination_mismatch() -> None:
    body = WORLD.eth_body(WORLD.eth_tx(to=ETH_ATTACKER))
    assert refuse(WORLD.sign(body)) == {C.DESTINATION_MISMATCH}


def test_tamper_token_recipient_in_calldata_refused_destination_mismatch() -> None:
    from signer.ethereum import encode_erc20_transfer

    body = WORLD.usdc_body(calldata=encode_erc20_transfer(ETH_ATTACKER, 2_500_000))
    assert refuse(WORLD.sign(body)) == {C.DESTINATION_MISMATCH}


# -- amount ----------------------------------------------------------------------------------


def test_tamper_amount_in_psbt_refused_amount_mismatch() -> None:
    body = WORLD.btc_body(psbt=WORLD.btc_psbt(amount_sat=45_000))
    assert refuse(WORLD.sign(body)) == {C.AMOUNT_MISMATCH}


def test_tamper_amount_in_intent_by_platform_refused_approvals() -> None:
    body = WORLD.btc_body(psbt=WORLD.btc_psbt(amount_sat=45_000))
    forged = dataclasses.replace(body, intent=dataclasses.replace(body.intent, amount_minor=45_000))
    assert refuse(WORLD.sign(forged)) == {C.APPROVAL_REJECTED, C.APPROVALS_INSUFFICIENT}


def test_tamper_amount_in_ethereum_value_refused_amount_mismatch() -> None:
    body = WORLD.eth_body(WORLD.eth_tx(value_wei=6 * 10**18))
    assert refuse(WORLD.sign(body)) == {C.AMOUNT_MISMATCH}


# -- fee -------------------------------------------------------------------------------------


def test_tamper_fee_above_cap_refused_fee_over_cap() -> None:
    body = WORLD.btc_body(psbt=WORLD.btc_psbt(fee_sat=9_000))
    assert refuse(WORLD.sign(body)) == {C.FEE_OVER_CAP}


def test_tamper_ethereum_max_fee_above_cap_refused_fee_over_cap() -> None:
    body = WORLD.eth_body(WORLD.eth_tx(max_fee_per_gas_wei=3 * 10**9))
    assert refuse(WORLD.sign(body)) == {C.FEE_OVER_CAP}


def test_tamper_fee_cap_above_signer_limit_refused_limit_exceeded() -> None:
    body = WORLD.btc_body(fee_cap_minor=200_000)
    assert refuse(WORLD.sign(body)) == {C.LIMIT_EXCEEDED}


# -- chain id --------------------------------------------------------------------------------


def test_tamper_chain_id_refused_chain_id_mismatch() -> None:
    body = WORLD.eth_body(WORLD.eth_tx(chain_id=1))
    assert refuse(WORLD.sign(body)) == {C.CHAIN_ID_MISMATCH}


def test_tamper_network_refused_network_mismatch() -> None:
    body = dataclasses.replace(WORLD.eth_body(), network="mainnet")
    # The approvals bound the network too, so they no longer count either.
    assert refuse(WORLD.sign(body)) == {C.NETWORK_MISMATCH, C.APPROVAL_REJECTED, C.APPROVALS_INSUFFICIENT}


def test_tamper_network_with_approvals_for_it_refused_network_mismatch() -> None:
    body = WORLD.approve(dataclasses.replace(WORLD.eth_body(), network="mainnet"), ("bob", "carol"))
    assert refuse(WORLD.sign(body)) == {C.NETWORK_MISMATCH}


# -- outputs ---------------------------------------------------------------------------------


def test_tamper_output_script_refused_output_not_ours() -> None:
    from embit.psbt import PSBT
    from embit.script import address_to_scriptpubkey

    psbt = PSBT.from_string(WORLD.btc_psbt())
    psbt.outputs[1].script_pubkey = address_to_scriptpubkey(BTC_ATTACKER)  # Change now pays the attacker.
    body = WORLD.btc_body(psbt=psbt.to_string())
    assert refuse(WORLD.sign(body)) == {C.OUTPUT_NOT_OURS}


def test_tamper_change_address_not_ours_refused_output_not_ours() -> None:
    from embit.psbt import PSBT

    theirs = PSBT.from_string(WORLD.btc_psbt(descriptor=other_descriptor()))
    psbt = PSBT.from_string(WORLD.btc_psbt())
    psbt.outputs[1] = theirs.outputs[1]  # Change to a stranger's 2-of-3, with their key origins.
    body = WORLD.btc_body(psbt=psbt.to_string())
    assert refuse(WORLD.sign(body)) == {C.OUTPUT_NOT_OURS}


def test_tamper_input_from_another_wallet_refused_input_not_ours() -> None:
    from embit.psbt import PSBT

    theirs = PSBT.from_string(WORLD.btc_psbt(descriptor=other_descriptor()))
    psbt = PSBT.from_string(WORLD.btc_psbt())
    psbt.inputs[1] = theirs.inputs[1]
    body = WORLD.btc_body(psbt=psbt.to_string())
    assert refuse(WORLD.sign(body)) == {C.INPUT_NOT_OURS}


def test_tamper_sighash_none_refused_sighash_unsupported() -> None:
    from embit.psbt import PSBT
    from embit.transaction import SIGHASH

    psbt = PSBT.from_string(WORLD.btc_psbt())
    psbt.inputs[0].sighash_type = SIGHASH.NONE  # Would let anyone rewrite the outputs later.
    body = WORLD.btc_body(psbt=psbt.to_string())
    assert refuse(WORLD.sign(body)) == {C.SIGHASH_UNSUPPORTED}


def test_tamper_missing_input_amount_refused() -> None:
    from embit.psbt import PSBT

    psbt = PSBT.from_string(WORLD.btc_psbt())
    psbt.inputs[0].witness_utxo = None
    psbt.inputs[0].non_witness_utxo = None
    body = WORLD.btc_body(psbt=psbt.to_string())
    assert refuse(WORLD.sign(body)) == {C.INPUT_AMOUNT_MISSING}


# -- approvals -------------------------------------------------------------------------------


def test_tamper_approval_signature_refused_signature_invalid() -> None:
    body = WORLD.btc_body()
    first = body.approvals[0]
    broken = dataclasses.replace(first, signature=bytes([first.signature[0] ^ 1]) + first.signature[1:])
    bundle = WORLD.sign(dataclasses.replace(body, approvals=(broken, body.approvals[1])))
    assert refuse(bundle) == {C.APPROVAL_REJECTED, C.APPROVALS_INSUFFICIENT}
    assert ResultCode.APPROVAL_SIGNATURE_INVALID in causes(bundle)


def test_tamper_drop_one_approval_refused_insufficient() -> None:
    body = WORLD.btc_body()
    bundle = WORLD.sign(dataclasses.replace(body, approvals=body.approvals[:1]))
    assert refuse(bundle) == {C.APPROVALS_INSUFFICIENT}


def test_tamper_duplicate_approver_refused_duplicate() -> None:
    body = WORLD.btc_body()
    bundle = WORLD.sign(dataclasses.replace(body, approvals=(body.approvals[0], body.approvals[0])))
    assert refuse(bundle) == {C.APPROVAL_REJECTED, C.APPROVALS_INSUFFICIENT}
    assert ResultCode.APPROVER_DUPLICATE in causes(bundle)


def test_tamper_initiator_self_approval_refused() -> None:
    body = WORLD.approve(WORLD.btc_body(), ("bob", "dave"))
    bundle = WORLD.sign(body)
    assert refuse(bundle) == {C.APPROVAL_REJECTED, C.APPROVALS_INSUFFICIENT}
    assert ResultCode.APPROVAL_SELF in causes(bundle)


def test_tamper_unknown_policy_rule_refused() -> None:
    body = WORLD.btc_body()
    forged = dataclasses.replace(body, policy=dataclasses.replace(body.policy, rule="one-approver"))
    assert refuse(WORLD.sign(forged)) == {C.POLICY_RULE_UNKNOWN}


def test_tamper_untrusted_platform_key_refused() -> None:
    from .helpers import approver_key

    bundle = World(platform_key=approver_key("mallory")).btc_bundle()
    assert refuse(bundle) == {C.PLATFORM_SIGNATURE_INVALID}


# -- time and replay -------------------------------------------------------------------------


def test_expired_bundle_refused_expired() -> None:
    assert C.BUNDLE_EXPIRED in refuse(WORLD.btc_bundle(), now_ms=NOW_MS + HOUR_MS)


def _signed_history(bundle: Bundle) -> History:
    record = SignedRecord(0, bundle.body.bundle_id, bundle.digest, bundle.body.request.key, "ab" * 32)
    return History({record.bundle_id: record}, {record.request: record})


def test_replayed_bundle_refused_already_signed() -> None:
    bundle = WORLD.btc_bundle()
    assert refuse(bundle, history=_signed_history(bundle)) == {C.ALREADY_SIGNED}


def test_same_bundle_id_with_different_content_refused_loudly() -> None:
    bundle = WORLD.btc_bundle()
    other = WORLD.sign(WORLD.btc_body(psbt=WORLD.btc_psbt(fee_sat=2_000)))
    outcome = sign_bundle(other, ANCHORS, seed(0), NOW_MS, _signed_history(bundle))
    assert outcome.signed is None
    assert outcome.verification.codes == {C.BUNDLE_ID_REUSED}
    assert "DIFFERENT CONTENT" in outcome.verification.refusals[0].message


def test_second_bundle_for_the_same_withdrawal_refused() -> None:
    bundle = WORLD.btc_bundle()
    again = WORLD.sign(dataclasses.replace(WORLD.btc_body(), bundle_id="bnd-wd-1-retry"))
    assert refuse(again, history=_signed_history(bundle)) == {C.REQUEST_ALREADY_SIGNED}


# -- bytes -----------------------------------------------------------------------------------


def test_unknown_bundle_version_refused() -> None:
    document = WORLD.btc_bundle().to_json()
    document["version"] = 3
    data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(SignerError) as error:
        Bundle.from_bytes(data)
    assert error.value.code is C.BUNDLE_VERSION_UNSUPPORTED


def test_trailing_bytes_refused() -> None:
    with pytest.raises(SignerError) as error:
        Bundle.from_bytes(WORLD.btc_bundle().to_bytes() + b" ")
    assert error.value.code is C.BUNDLE_TRAILING_BYTES
    with pytest.raises(SignerError) as error:
        Bundle.from_bytes(WORLD.btc_bundle().to_bytes() + b"{}")
    assert error.value.code is C.BUNDLE_TRAILING_BYTES
