"""Signing for real: 2-of-3 PSBT partial signatures that combine and finalize; EIP-1559 signatures."""

from __future__ import annotations

import dataclasses

import pytest
from embit import ec
from embit.psbt import PSBT
from embit.transaction import Transaction
from eth_account import Account

from custody.bundles.signed import check_signed, combine_bitcoin
from signer.ethereum import decode_erc20_transfer, encode_erc20_transfer
from signer.results import SignerCode, SignerError
from signer.signed import SignedBundle
from signer.signing import sign_bundle

from .helpers import EMPTY_HISTORY, ETH_DESTINATION, NOW_MS, World, seed

WORLD = World()
ANCHORS = WORLD.anchors()


def _sign(bundle: object, signer_seed: int) -> SignedBundle:
    outcome = sign_bundle(bundle, ANCHORS, seed(signer_seed), NOW_MS, EMPTY_HISTORY)  # type: ignore[arg-type]
    assert outcome.verification.ok, outcome.verification.refusals
    assert outcome.signed is not None
    return outcome.signed


def test_bitcoin_partial_signatures_verify_against_sighash() -> None:
    bundle = WORLD.btc_bundle()
    signed = _sign(bundle, 0)
    psbt = PSBT.from_string(signed.psbt_base64)
    assert signed.signer_id == cosigner_fingerprint(0)
    for i, inp in enumerate(psbt.inputs):
        assert len(inp.partial_sigs) == 1
        [(pub, sig)] = inp.partial_sigs.items()
        assert sig[-1] == 1  # SIGHASH_ALL
        assert pub.verify(ec.Signature.parse(sig[:-1]), psbt.sighash(i))
    check_signed(bundle, SignedBundle.from_bytes(signed.to_bytes()))


def cosigner_fingerprint(n: int) -> str:
    from signer.bitcoin import root_key

    return str(root_key(seed(n), "regtest").my_fingerprint.hex())


def test_bitcoin_two_of_three_signers_combine_and_finalize() -> None:
    bundle = WORLD.btc_bundle()
    first, third = _sign(bundle, 0), _sign(bundle, 2)
    raw_hex, txid = combine_bitcoin(bundle, [first, third])
    tx = Transaction.parse(bytes.fromhex(raw_hex))
    assert tx.txid().hex() == txid
    unsigned = PSBT.from_string(bundle.body.transaction.psbt_base64).tx  # type: ignore[union-attr]
    assert [(o.value, o.script_pubkey) for o in tx.vout] == [
        (o.value, o.script_pubkey) for o in unsigned.vout
    ]
    for vin in tx.vin:
        # P2WSH 2-of-3: empty dummy, two signatures, the witness script.
        assert len(vin.witness.items) == 4


def test_bitcoin_one_signature_does_not_finalize() -> None:
    bundle = WORLD.btc_bundle()
    with pytest.raises(SignerError) as error:
        combine_bitcoin(bundle, [_sign(bundle, 1)])
    assert error.value.code is SignerCode.SIGNED_MISMATCH


def test_bitcoin_signer_whose_key_is_not_in_the_wallet_signs_nothing() -> None:
    outcome = sign_bundle(WORLD.btc_bundle(), ANCHORS, seed(5), NOW_MS, EMPTY_HISTORY)
    assert outcome.signed is None
    assert outcome.verification.codes == {SignerCode.KEY_NOT_IN_WALLET}


def test_signed_result_for_another_bundle_is_refused_on_import() -> None:
    bundle = WORLD.btc_bundle()
    other = WORLD.sign(dataclasses.replace(WORLD.btc_body(), bundle_id="bnd-other"))
    with pytest.raises(SignerError) as error:
        check_signed(other, _sign(bundle, 0))
    assert error.value.code is SignerCode.SIGNED_MISMATCH


def test_ethereum_signed_transaction_recovers_to_the_cold_wallet() -> None:
    bundle = WORLD.eth_bundle()
    signed = _sign(bundle, 0)
    assert signed.raw_transaction is not None
    assert Account.recover_transaction(signed.raw_transaction) == WORLD.eth_address
    assert signed.raw_transaction[0] == 2  # EIP-1559 typed transaction.
    check_signed(bundle, SignedBundle.from_bytes(signed.to_bytes()))


def test_ethereum_token_transfer_signs_transfer_calldata() -> None:
    bundle = WORLD.sign(WORLD.usdc_body(amount=2_500_000))
    signed = _sign(bundle, 0)
    check_signed(bundle, signed)
    assert Account.recover_transaction(signed.raw_transaction) == WORLD.eth_address  # type: ignore[arg-type]


def test_ethereum_signer_with_another_seed_refuses_key_not_in_wallet() -> None:
    outcome = sign_bundle(WORLD.eth_bundle(), ANCHORS, seed(1), NOW_MS, EMPTY_HISTORY)
    assert outcome.signed is None
    assert outcome.verification.codes == {SignerCode.KEY_NOT_IN_WALLET}


def test_erc20_calldata_round_trips_and_rejects_extra_bytes() -> None:
    data = encode_erc20_transfer(ETH_DESTINATION, 10**30)
    assert decode_erc20_transfer(data) == (ETH_DESTINATION, 10**30)
    assert decode_erc20_transfer(data + b"\x00") is None
    assert decode_erc20_transfer(b"\x09\x5e\xa7\xb3" + data[4:]) is None  # approve(), not transfer()
    assert decode_erc20_transfer(data[:4] + b"\x01" + data[5:]) is None  # dirty address padding
