"""Property: any edit to a PSBT is either refused, or what gets signed is exactly the approved intent.

Random edits (hypothesis) to inputs, outputs, amounts, scripts, previous
transactions, witness_utxo claims, locktime, sequence and sighash are
applied by a compromised platform to an approved bundle's PSBT. Whenever
the signer signs anyway, the signed transaction must: spend only the
wallet's real coins, each once; pay the destination exactly the approved
amount in exactly one output; send everything else to our change branch
inside the window; pay a fee (computed from the *real* coin amounts) within
the approved cap; carry nLockTime 0 and the stated nSequence; and every
signature must be SIGHASH_ALL over the real amounts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from embit import ec
from embit.descriptor import Descriptor
from embit.psbt import PSBT, OutputScope
from embit.script import address_to_scriptpubkey
from embit.transaction import SIGHASH, TransactionOutput
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signer.bundle import SEQUENCE_VALUES
from signer.display import describe, report_json
from signer.signing import sign_bundle

from .helpers import BTC_ATTACKER, BTC_DESTINATION, EMPTY_HISTORY, NOW_MS, World, other_descriptor, seed

WORLD = World()
ANCHORS = WORLD.anchors()
AMOUNT_SAT = 40_000
FEE_CAP_SAT = 5_000
COINS = {(u.txid_hex, u.vout): u.amount_sat for u in WORLD.utxos()}
DESCRIPTOR = Descriptor.from_string(WORLD.descriptor)
BASE = WORLD.btc_psbt()
# Scripts an edit may point an output at: change inside and outside the window, receive, strangers.
TARGETS = {
    "destination": address_to_scriptpubkey(BTC_DESTINATION),
    "attacker": address_to_scriptpubkey(BTC_ATTACKER),
    "stranger-multisig": Descriptor.from_string(other_descriptor()).derive(9, branch_index=1).script_pubkey(),
}
CHANGE_SCOPES = {
    name: PSBT.from_string(WORLD.btc_psbt(change_index=i)).outputs[1]
    for name, i in (("change-10", 10), ("change-9", 9), ("change-far", 2**31 - 1))
}
ALLOWED_CHANGE = {DESCRIPTOR.derive(i, branch_index=1).script_pubkey().data for i in (9, 10)}
Edit = Callable[[Any], None]


def _input(i: int) -> st.SearchStrategy[Edit]:
    def amount(delta: int) -> Edit:
        def edit(p: Any) -> None:
            if p.inputs[i % len(p.inputs)].witness_utxo is not None:
                p.inputs[i % len(p.inputs)].witness_utxo.value = max(
                    0, p.inputs[i % len(p.inputs)].witness_utxo.value + delta
                )

        return edit

    def field(name: str, value: object) -> Edit:
        def edit(p: Any) -> None:
            setattr(p.inputs[i % len(p.inputs)], name, value)

        return edit

    def duplicate(p: Any) -> None:
        p.inputs.append(PSBT.from_string(BASE).inputs[i % 2])

    def drop(p: Any) -> None:
        if len(p.inputs) > 1:
            del p.inputs[i % len(p.inputs)]

    def swap_previous(p: Any) -> None:
        p.inputs[i % len(p.inputs)].non_witness_utxo = (
            PSBT.from_string(BASE).inputs[(i + 1) % 2].non_witness_utxo
        )

    return st.one_of(
        st.integers(-60_000, 60_000).map(amount),
        st.sampled_from([None]).map(lambda v: field("non_witness_utxo", v)),
        st.sampled_from([None]).map(lambda v: field("witness_utxo", v)),
        st.integers(0, 3).map(lambda v: field("vout", v)),
        st.sampled_from([0, 1, 144, 0xFFFFFFFE, 0xFFFFFFFF, 0xFFFFFFFD]).map(lambda v: field("sequence", v)),
        st.sampled_from([SIGHASH.ALL, SIGHASH.NONE, SIGHASH.SINGLE, 0x81, 0x83]).map(
            lambda v: field("sighash_type", v)
        ),
        st.just(duplicate),
        st.just(drop),
        st.just(swap_previous),
    )


def _output(j: int) -> st.SearchStrategy[Edit]:
    def value(delta: int) -> Edit:
        def edit(p: Any) -> None:
            out = p.outputs[j % len(p.outputs)]
            out.value = max(0, out.value + delta)

        return edit

    def script(name: str) -> Edit:
        def edit(p: Any) -> None:
            p.outputs[j % len(p.outputs)].script_pubkey = TARGETS[name]

        return edit

    def change_scope(name: str) -> Edit:
        def edit(p: Any) -> None:
            value = p.outputs[j % len(p.outputs)].value
            scope = PSBT.from_string(
                WORLD.btc_psbt(change_index={"change-10": 10, "change-9": 9, "change-far": 2**31 - 1}[name])
            ).outputs[1]
            scope.value = value
            p.outputs[j % len(p.outputs)] = scope

        return edit

    def add(value_sat: int, name: str) -> Edit:
        def edit(p: Any) -> None:
            p.outputs.append(OutputScope(vout=TransactionOutput(value_sat, TARGETS[name])))

        return edit

    def drop(p: Any) -> None:
        if len(p.outputs) > 1:
            del p.outputs[j % len(p.outputs)]

    return st.one_of(
        st.integers(-70_000, 70_000).map(value),
        st.sampled_from(sorted(TARGETS)).map(script),
        st.sampled_from(sorted(CHANGE_SCOPES)).map(change_scope),
        st.builds(add, st.integers(0, 20_000), st.sampled_from(sorted(TARGETS))),
        st.just(drop),
    )


def _global() -> st.SearchStrategy[Edit]:
    def locktime(v: int) -> Edit:
        def edit(p: Any) -> None:
            p.locktime = v

        return edit

    def version(v: int) -> Edit:
        def edit(p: Any) -> None:
            p.tx_version = v

        return edit

    return st.one_of(
        st.sampled_from([0, 1, 144, 499_999_999, 500_000_000, 2**32 - 1]).map(locktime),
        st.sampled_from([1, 2, 3]).map(version),
    )


EDITS = st.lists(
    st.one_of(st.integers(0, 3).flatmap(_input), st.integers(0, 3).flatmap(_output), _global()),
    min_size=1,
    max_size=4,
)


def _check_signed_is_intent(psbt_base64: str) -> None:
    psbt = PSBT.from_string(psbt_base64)
    tx = psbt.tx
    spent = [(vin.txid.hex(), vin.vout) for vin in tx.vin]
    assert len(set(spent)) == len(spent), "a coin is spent twice"
    assert all(op in COINS for op in spent), "a coin that is not the wallet's"
    assert tx.locktime == 0
    assert all(vin.sequence == SEQUENCE_VALUES["rbf"] for vin in tx.vin)
    paid = [out for out in tx.vout if out.script_pubkey == TARGETS["destination"]]
    assert len(paid) == 1 and paid[0].value == AMOUNT_SAT
    for out in tx.vout:
        if out.script_pubkey != TARGETS["destination"]:
            assert out.script_pubkey.data in ALLOWED_CHANGE, "an output that is not change inside the window"
    fee = sum(COINS[op] for op in spent) - sum(out.value for out in tx.vout)
    assert 0 <= fee <= FEE_CAP_SAT
    for i, inp in enumerate(psbt.inputs):
        inp.witness_utxo = inp.non_witness_utxo.vout[inp.vout]  # The real amount and script.
        assert inp.witness_utxo.value == COINS[spent[i]]
        assert inp.partial_sigs
        for pub, sig in inp.partial_sigs.items():
            assert sig[-1] == SIGHASH.ALL
            assert pub.verify(ec.Signature.parse(sig[:-1]), psbt.sighash(i))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EDITS)
def test_psbt_random_edit_refused_or_signed_exactly_as_approved(edits: list[Edit]) -> None:
    psbt = PSBT.from_string(BASE)
    for edit in edits:
        edit(psbt)
    try:
        text = str(psbt.to_string())
        body = WORLD.btc_body(psbt=text, amount_minor=AMOUNT_SAT, fee_cap_minor=FEE_CAP_SAT)
    except Exception:  # An edit that does not even serialise or build a bundle signs nothing.
        return
    outcome = sign_bundle(WORLD.sign(body), ANCHORS, seed(0), NOW_MS, EMPTY_HISTORY)
    # What the operator reads never fails, whatever the platform sent.
    assert describe(outcome.verification, NOW_MS) and report_json(outcome.verification, NOW_MS)
    if outcome.signed is None:
        assert not outcome.verification.ok
        return
    assert outcome.signed.psbt_base64 is not None
    _check_signed_is_intent(outcome.signed.psbt_base64)


def test_psbt_property_unedited_bundle_signs_and_satisfies_the_checks() -> None:
    body = WORLD.btc_body(psbt=BASE, amount_minor=AMOUNT_SAT, fee_cap_minor=FEE_CAP_SAT)
    outcome = sign_bundle(WORLD.sign(body), ANCHORS, seed(0), NOW_MS, EMPTY_HISTORY)
    assert outcome.signed is not None and outcome.signed.psbt_base64 is not None
    _check_signed_is_intent(outcome.signed.psbt_base64)


def test_psbt_property_edits_do_reach_the_signer() -> None:
    """The strategy is not vacuous: a harmless edit (dropping witness_utxo) still signs."""
    psbt = PSBT.from_string(BASE)
    psbt.inputs[0].witness_utxo = None
    body = WORLD.btc_body(psbt=str(psbt.to_string()), amount_minor=AMOUNT_SAT, fee_cap_minor=FEE_CAP_SAT)
    assert sign_bundle(WORLD.sign(body), ANCHORS, seed(0), NOW_MS, EMPTY_HISTORY).signed is not None
