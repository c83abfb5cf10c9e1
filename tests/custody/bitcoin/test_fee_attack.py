"""The two-bundle segwit fee attack (CVE-2020-14199 class), end to end on the embedded regtest chain.

Two approved requests pay the same destination the same amount. A
compromised platform builds ONE transaction spending two cold coins and
exports it twice, as two bundles, each lying about the *other* input's
witness_utxo amount. Each bundle alone shows a fee under its cap; a segwit
signature commits to its own input's amount only, so the valid signatures of
the two bundles combine into a transaction paying four times the cap.

The control below shows the chain would accept that combination; the signer
refuses every one of the four signing attempts (2 bundles x 2 cosigners), so
there is nothing to combine and nothing reaches the chain.
"""

from __future__ import annotations

import dataclasses

import pytest
from embit.descriptor import Descriptor
from embit.finalizer import finalize_psbt
from embit.psbt import PSBT

from custody.chains.bitcoin.network import address_of, network
from custody.chains.bitcoin.psbt import Utxo, build_psbt
from custody.chains.bitcoin.regtest import RegtestChain
from signer.bitcoin import root_key
from signer.bundle import BitcoinTransaction, Bundle, RequestRef
from signer.results import SignerCode
from signer.signing import sign_bundle

from ...signer.helpers import BTC_DESTINATION, EMPTY_HISTORY, NOW_MS, World, seed

WORLD = World()
ANCHORS = WORLD.anchors()
AMOUNT_SAT = 40_000
FEE_CAP_SAT = 5_000
COINS_SAT = (60_000, 50_000)
# Real fee: 110,000 in - 40,000 - 50,000 change = 20,000 sat, four times the cap.
CHANGE_SAT = 50_000
REAL_FEE_SAT = sum(COINS_SAT) - AMOUNT_SAT - CHANGE_SAT


@dataclasses.dataclass
class Coins:
    chain: RegtestChain
    utxos: list[Utxo]
    addresses: list[str]


@pytest.fixture
def coins() -> Coins:
    """Two confirmed coins of the cold 2-of-3 wallet: 60,000 sat at 0/3 and 50,000 sat at 1/5."""
    chain = RegtestChain(coinbase_maturity=1)
    chain.mine(2)
    descriptor = Descriptor.from_string(WORLD.descriptor)
    utxos, addresses = [], []
    for amount, (branch, index) in zip(COINS_SAT, ((0, 3), (1, 5)), strict=True):
        script = descriptor.derive(index, branch_index=branch).script_pubkey()
        address = address_of(script, network("regtest"))
        assert address is not None
        addresses.append(address)
        txid = chain.faucet_send(address, amount)
        utxos.append(Utxo(txid, 0, amount, branch, index, bytes.fromhex(chain.getrawtransaction(txid))))
    chain.mine(1)
    return Coins(chain, utxos, addresses)


def _honest_psbt(coins: Coins) -> PSBT:
    fee = sum(COINS_SAT) - AMOUNT_SAT - CHANGE_SAT
    text = build_psbt(WORLD.descriptor, "regtest", coins.utxos, BTC_DESTINATION, AMOUNT_SAT, fee, 9)
    return PSBT.from_string(text)


def _lying(coins: Coins, lie_about: int, keep_previous_tx: bool) -> str:
    """The shared transaction, claiming input `lie_about` is worth 15,000 sat less than it is."""
    psbt = _honest_psbt(coins)
    psbt.inputs[lie_about].witness_utxo.value -= REAL_FEE_SAT - FEE_CAP_SAT
    if not keep_previous_tx:
        for inp in psbt.inputs:
            inp.non_witness_utxo = None
    return str(psbt.to_string())


def _bundles(coins: Coins, keep_previous_tx: bool) -> tuple[Bundle, Bundle]:
    """Two platform-signed, properly approved bundles for two requests, sharing one transaction."""
    bundles = []
    for request_id, lie_about in (("wd-a", 1), ("wd-b", 0)):
        body = WORLD.btc_body(
            psbt=_lying(coins, lie_about, keep_previous_tx),
            amount_minor=AMOUNT_SAT,
            fee_cap_minor=FEE_CAP_SAT,
        )
        body = dataclasses.replace(
            body,
            bundle_id=f"bnd-{request_id}",
            request=RequestRef(body.request.kind, request_id, body.request.initiator_id),
        )
        bundles.append(WORLD.sign(WORLD.approve(body, ("bob", "carol"))))
    return bundles[0], bundles[1]


def _combine_unchecked(first: str, second: str) -> bytes:
    """What the attacker does with signatures: input 0's from `first`, input 1's from `second`."""
    combined = PSBT.from_string(first)
    other = PSBT.from_string(second)
    combined.inputs[1].partial_sigs = other.inputs[1].partial_sigs
    final = finalize_psbt(combined)
    assert final is not None
    return bytes(final.serialize())


def test_fee_attack_control_unchecked_signatures_would_be_accepted_by_the_chain(coins: Coins) -> None:
    # Signing the lying PSBTs without the signer's checks (what a signer trusting witness_utxo did).
    signed = []
    for lie_about in (1, 0):
        psbt = PSBT.from_string(_lying(coins, lie_about, keep_previous_tx=False))
        for cosigner in (0, 1):
            psbt.sign_with(root_key(seed(cosigner), "regtest"))
        signed.append(str(psbt.to_string()))
    raw = _combine_unchecked(signed[0], signed[1])
    [result] = coins.chain.testmempoolaccept([raw.hex()])
    assert result["allowed"], result
    assert REAL_FEE_SAT == 4 * FEE_CAP_SAT


@pytest.mark.parametrize("keep_previous_tx", [False, True], ids=["stripped", "carried"])
def test_fee_attack_two_bundles_refused_by_every_cosigner_and_nothing_reaches_the_chain(
    coins: Coins, keep_previous_tx: bool
) -> None:
    expected = SignerCode.INPUT_UTXO_MISMATCH if keep_previous_tx else SignerCode.INPUT_AMOUNT_MISSING
    first, second = _bundles(coins, keep_previous_tx)
    for bundle in (first, second):
        for cosigner in (0, 1):
            outcome = sign_bundle(bundle, ANCHORS, seed(cosigner), NOW_MS, EMPTY_HISTORY)
            assert outcome.signed is None
            assert expected in outcome.verification.codes, outcome.verification.refusals
    assert coins.chain.mempool_txids() == []
    coins.chain.mine(1)
    for address, amount in zip(coins.addresses, COINS_SAT, strict=True):
        assert coins.chain.utxo_balance(address) == amount


def test_fee_attack_honest_bundle_signs_finalizes_and_is_accepted(coins: Coins) -> None:
    """Positive control on the same chain: the honest transaction's fee is 20,000 sat, shown as such."""
    psbt = _honest_psbt(coins)
    body = WORLD.btc_body(psbt=str(psbt.to_string()), amount_minor=AMOUNT_SAT, fee_cap_minor=REAL_FEE_SAT)
    bundle = WORLD.sign(WORLD.approve(body, ("bob", "carol")))
    signed = []
    for cosigner in (0, 2):
        outcome = sign_bundle(bundle, ANCHORS, seed(cosigner), NOW_MS, EMPTY_HISTORY)
        assert outcome.signed is not None, outcome.verification.refusals
        assert outcome.verification.check is not None
        assert outcome.verification.check.fee_minor == REAL_FEE_SAT
        signed.append(outcome.signed)
    from custody.bundles.signed import combine_bitcoin

    raw_hex, txid = combine_bitcoin(bundle, signed)
    assert coins.chain.sendrawtransaction(raw_hex) == txid


def test_fee_attack_bundle_transaction_is_the_lying_one(coins: Coins) -> None:
    """The bundles really carry the attack: their PSBTs claim a fee within the cap."""
    first, _ = _bundles(coins, keep_previous_tx=False)
    assert isinstance(first.body.transaction, BitcoinTransaction)
    psbt = PSBT.from_string(first.body.transaction.psbt_base64)
    claimed_in = sum(inp.witness_utxo.value for inp in psbt.inputs)
    assert claimed_in - sum(out.value for out in psbt.tx.vout) == FEE_CAP_SAT
