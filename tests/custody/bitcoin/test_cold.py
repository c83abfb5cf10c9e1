"""Sweep to the 2-of-3 cold multisig, then an approved refill signed by two offline signers."""

from __future__ import annotations

import base64
import dataclasses

import pytest
from embit.psbt import PSBT

from custody.chains.bitcoin.bundle import (
    RefillRequest,
    export_refill_bundle,
    import_signed_bundles,
    record_id,
    refill_body,
)
from custody.chains.bitcoin.models import UtxoStatus
from custody.chains.bitcoin.utxo import UtxoSet
from custody.wallets.codes import WalletCode, WalletError
from custody.wallets.wallet import Temperature
from custody.wallets.withdrawal_executor import TxStatus
from policies.approval import sign_approval
from signer.builder import ed25519_signer
from signer.signed import SignedBundle
from signer.signing import sign_bundle
from signer.signing_log import History

from ...signer.helpers import approver_key, seed
from .helpers import WORLD, BtcHarness


def _sweep_to_cold(btc: BtcHarness) -> None:
    btc.fund_hot([900_000])
    btc.runtime.treasury.set_limits("BTC", 100_000, 200_000, 300_000)
    sweep = btc.runtime.treasury.rebalance("BTC")
    assert sweep is not None and sweep.purpose == "sweep"
    btc.settle(5)
    assert btc.runtime.executor.get(sweep.id).status is TxStatus.CONFIRMED
    assert btc.wallet_balance(Temperature.COLD) == sweep.amount_minor


def _bundle(btc: BtcHarness, amount: int):  # type: ignore[no-untyped-def]
    now = btc.clock()  # type: ignore[operator]
    request = RefillRequest("r1", "dave", amount, btc.hot_address(), fee_rate_sat_vb=2, fee_cap_sat=5_000)
    body = refill_body(btc.runtime.cold, request, [], now)
    approvals = [
        sign_approval(
            approver_key(name),
            approver_id=name,
            key_id=f"{name}-key",
            subject=body.subject(),
            signed_at_ms=now - 1_000,
            expires_at_ms=now + 3_600_000,
        )
        for name in ("bob", "carol")
    ]
    body = refill_body(btc.runtime.cold, request, approvals, now)
    return export_refill_bundle(
        btc.runtime.sessions, body, "platform-1", ed25519_signer(WORLD.platform_key), btc.clock
    )  # type: ignore[arg-type]


def _sign(btc: BtcHarness, bundle, signer: int) -> SignedBundle:  # type: ignore[no-untyped-def]
    outcome = sign_bundle(bundle, WORLD.anchors(), seed(signer), btc.clock(), History())  # type: ignore[operator]
    assert outcome.signed is not None, outcome.verification.refusals
    return outcome.signed


def test_cold_refill_rejects_a_tampered_signature_then_broadcasts_two_valid_ones(btc: BtcHarness) -> None:
    _sweep_to_cold(btc)
    cold_before, hot_before = btc.wallet_balance(Temperature.COLD), btc.wallet_balance(Temperature.HOT)
    bundle = _bundle(btc, 250_000)
    first, third = _sign(btc, bundle, 0), _sign(btc, bundle, 2)
    # One signer's PSBT is altered after signing: its signature no longer matches the sighash.
    psbt = PSBT.from_string(first.psbt_base64)
    [(pub, sig)] = psbt.inputs[0].partial_sigs.items()
    psbt.inputs[0].partial_sigs[pub] = sig[:10] + bytes([sig[10] ^ 1]) + sig[11:]
    tampered = dataclasses.replace(first, psbt_base64=psbt.to_string())
    with pytest.raises(WalletError) as error:
        import_signed_bundles(
            btc.runtime.sessions, btc.runtime.cold, btc.runtime.executor, "r1", [tampered, third]
        )
    assert error.value.code is WalletCode.SIGNED_BUNDLE_REJECTED
    assert btc.chain.mempool_txids() == []
    with btc.runtime.sessions() as session:
        assert all(c.status == UtxoStatus.LOCKED for c in UtxoSet.locked_by(session, record_id("r1")))
    # The two genuine signatures combine, finalise, match the approval and are broadcast.
    view = import_signed_bundles(
        btc.runtime.sessions, btc.runtime.cold, btc.runtime.executor, "r1", [first, third]
    )
    assert view.status is TxStatus.BROADCAST and btc.chain.mempool_txids() == [view.txid]
    btc.settle(5)
    view = btc.runtime.executor.get(record_id("r1"))
    assert view.status is TxStatus.CONFIRMED
    assert view.fee_paid_minor == btc.runtime.cold.get("r1").fee_sat
    assert btc.wallet_balance(Temperature.HOT) == hot_before + 250_000
    assert btc.wallet_balance(Temperature.COLD) == cold_before - 250_000 - view.fee_paid_minor
    btc.assert_ledger_balanced()
    btc.assert_reconciled()


def test_cold_refill_with_one_signature_is_refused(btc: BtcHarness) -> None:
    _sweep_to_cold(btc)
    bundle = _bundle(btc, 100_000)
    with pytest.raises(WalletError) as error:
        import_signed_bundles(
            btc.runtime.sessions, btc.runtime.cold, btc.runtime.executor, "r1", [_sign(btc, bundle, 1)]
        )
    assert error.value.code is WalletCode.SIGNED_BUNDLE_REJECTED
    assert btc.chain.mempool_txids() == []
    assert base64.b64decode(btc.runtime.cold.get("r1").psbt)  # the unsigned PSBT stays on record
