"""Sweep to the 2-of-3 cold multisig, then cold spends through the bundle service signed by two cosigners."""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest
from embit.psbt import PSBT
from flask import Flask
from flask.testing import FlaskClient

from custody.bundles.bitcoin import spend_id
from custody.bundles.codes import BundleCode, BundleError
from custody.chains.bitcoin.models import UtxoStatus
from custody.chains.bitcoin.utxo import UtxoSet
from custody.wallets.wallet import Temperature
from policies.roles import Role
from signer.anchors import TrustAnchors
from signer.bundle import Bundle
from signer.signing_log import History

from ..access.helpers import make_user, withdrawal_subject
from .cold_world import BtcColdWorld, make_btc_cold_world
from .helpers import DESTINATION, BtcHarness

DAY_MS = 86_400_000


@pytest.fixture
def world(app: Flask, client: FlaskClient, btc: BtcHarness) -> BtcColdWorld:
    return make_btc_cold_world(app, client, btc)


def test_cold_refill_rejects_a_tampered_signature_then_broadcasts_two_valid_ones(world: BtcColdWorld) -> None:
    btc = world.btc
    world.sweep_to_cold()
    cold_before, hot_before = btc.wallet_balance(Temperature.COLD), btc.wallet_balance(Temperature.HOT)
    refill = world.approved_refill(250_000)
    exported = world.transfers.export("refill", refill.id)
    first, third = world.sign(exported.data, 0), world.sign(exported.data, 2)
    # One signer's PSBT is altered after signing: its signature no longer matches the sighash.
    assert first.psbt_base64 is not None
    psbt = PSBT.from_string(first.psbt_base64)
    [(pub, sig)] = psbt.inputs[0].partial_sigs.items()
    psbt.inputs[0].partial_sigs[pub] = sig[:10] + bytes([sig[10] ^ 1]) + sig[11:]
    tampered = dataclasses.replace(first, psbt_base64=psbt.to_string())
    with pytest.raises(BundleError) as error:
        world.transfers.import_signed(tampered.to_bytes())
    assert error.value.code is BundleCode.SIGNED_REFUSED
    assert btc.chain.mempool_txids() == []
    with btc.runtime.sessions() as session:
        locked = UtxoSet.locked_by(session, spend_id("refill", refill.id))
        assert locked and all(c.status == UtxoStatus.LOCKED for c in locked)
    # The two genuine signatures combine, finalise, match the approval and are broadcast.
    assert world.transfers.import_signed(third.to_bytes()).state == "exported"
    view = world.transfers.import_signed(first.to_bytes())
    assert view.state == "broadcast" and btc.chain.mempool_txids() == [view.txid]
    assert btc.runtime.treasury.refills()[0].status == "broadcasting"
    world.settle()
    view = world.transfers.get(view.bundle_id)
    assert view.state == "confirmed"
    assert view.fee_paid_minor == btc.runtime.cold.get(spend_id("refill", refill.id)).fee_sat
    assert btc.runtime.treasury.refills()[0].status == "completed"
    assert btc.wallet_balance(Temperature.HOT) == hot_before + 250_000
    assert btc.wallet_balance(Temperature.COLD) == cold_before - 250_000 - view.fee_paid_minor
    btc.assert_ledger_balanced()
    btc.assert_reconciled()


def test_cold_refill_with_one_signature_is_not_broadcast(world: BtcColdWorld) -> None:
    btc = world.btc
    world.sweep_to_cold()
    refill = world.approved_refill(100_000)
    exported = world.transfers.export("refill", refill.id)
    view = world.transfers.import_signed(world.sign(exported.data, 1).to_bytes())
    assert view.state == "exported" and view.txid is None
    world.settle(2)
    assert world.transfers.get(view.bundle_id).state == "exported"
    assert btc.chain.mempool_txids() == []
    assert btc.runtime.treasury.refills()[0].status == "awaiting_signature"
    spend = btc.runtime.cold.get(spend_id("refill", refill.id))
    assert base64.b64decode(spend.psbt)  # the unsigned PSBT stays on record
    btc.assert_ledger_balanced()
    btc.assert_reconciled()


def test_cold_refill_mid_flight_reconciles_between_mined_and_settled(world: BtcColdWorld) -> None:
    btc = world.btc
    world.sweep_to_cold()
    refill = world.approved_refill(150_000)
    exported = world.transfers.export("refill", refill.id)
    view = world.transfers.import_signed(world.sign(exported.data, 0).to_bytes())
    view = world.transfers.import_signed(world.sign(exported.data, 1).to_bytes())
    assert view.state == "broadcast"
    btc.assert_reconciled()  # in the mempool: nothing moved on chain or in the ledger
    btc.chain.mine(1)
    btc.runtime.tick()
    assert world.transfers.tick()[0].state == "broadcast"  # mined, 1 of 3 confirmations
    btc.assert_reconciled()  # on chain but not yet settled in the ledger: not a discrepancy
    world.settle()
    assert world.transfers.get(view.bundle_id).state == "confirmed"
    btc.assert_reconciled()


def test_cold_withdrawal_of_btc_goes_through_the_same_bundle_service(
    app: Flask, client: FlaskClient, world: BtcColdWorld
) -> None:
    btc = world.btc
    cold = world.sweep_to_cold()
    alice = make_user(app, client, btc.clock, "alice", {Role.TRADER})
    btc.deposit("alice", 300_000)
    assert btc.user_balance("alice", "BTC") == 300_000
    whitelisted = alice.post("/api/v1/whitelist", json={"asset": "BTC", "address": DESTINATION}, mfa=True)
    assert whitelisted.status_code == 201, whitelisted.json
    btc.clock.advance(DAY_MS + 1)  # type: ignore[attr-defined]
    created = alice.post(
        "/api/v1/withdrawals",
        json={"asset": "BTC", "amount": "120000", "destination": DESTINATION, "source_wallet": "cold"},
        mfa=True,
        idempotency_key="btc-cold-1",
    )
    assert created.status_code == 201, created.json
    withdrawal = created.json["withdrawal"]
    assert withdrawal["state"] == "pending_approval", withdrawal
    for approver in world.treasury[:2]:
        answer = approver.post(
            f"/api/v1/withdrawals/{withdrawal['id']}/approvals",
            json={"approval": approver.approve_subject(withdrawal_subject(withdrawal))},
            mfa=True,
        )
        assert answer.status_code == 200, answer.json
    assert answer.json["withdrawal"]["state"] == "approved"

    exported = world.transfers.export("withdrawal", withdrawal["id"])
    world.transfers.import_signed(world.sign(exported.data, 0).to_bytes())
    view = world.transfers.import_signed(world.sign(exported.data, 2).to_bytes())
    assert view.state == "broadcast"
    btc.assert_reconciled()
    world.settle()
    view = world.transfers.get(view.bundle_id)
    assert view.state == "confirmed" and view.fee_paid_minor
    state = alice.get(f"/api/v1/withdrawals/{withdrawal['id']}").json["withdrawal"]["state"]
    assert state == "completed"
    assert btc.chain.utxo_balance(DESTINATION) == 120_000
    assert btc.user_balance("alice", "BTC") == 300_000 - 120_000
    assert btc.wallet_balance(Temperature.COLD) == cold - 120_000 - view.fee_paid_minor
    btc.assert_ledger_balanced()
    btc.assert_reconciled()


def test_cold_refill_above_the_cold_coins_is_refused_and_locks_nothing(world: BtcColdWorld) -> None:
    btc = world.btc
    cold = world.sweep_to_cold()
    refill = world.approved_refill(cold + 1)
    with pytest.raises(BundleError) as error:
        world.transfers.export("refill", refill.id)
    assert error.value.code is BundleCode.COLD_BALANCE_SHORT
    with btc.runtime.sessions() as session:
        assert UtxoSet.locked_by(session, spend_id("refill", refill.id)) == []
    assert world.transfers.recent() == []
    assert btc.runtime.treasury.refills()[0].status == "awaiting_signer"
    btc.assert_ledger_balanced()


def test_bundle_tick_skips_bundles_of_a_chain_this_process_does_not_serve(world: BtcColdWorld) -> None:
    """A process without a Bitcoin node (say, Ethereum only) ticks its own bundles, not exit 4804."""
    from custody.bundles.chains import BundleChains
    from custody.bundles.service import ColdTransfers

    world.sweep_to_cold()
    refill = world.approved_refill(150_000)
    exported = world.transfers.export("refill", refill.id)
    world.transfers.import_signed(world.sign(exported.data, 0).to_bytes())
    view = world.transfers.import_signed(world.sign(exported.data, 1).to_bytes())
    assert view.state == "broadcast"
    elsewhere = ColdTransfers(
        world.app.extensions["strongroom.sessions"],
        world.btc.runtime.wallets,
        world.btc.keystore,
        BundleChains([]),
        world.btc.clock,  # type: ignore[arg-type]
    )
    assert elsewhere.tick() == []
    world.btc.chain.mine(1)
    assert world.transfers.tick()[0].state == "broadcast"  # The Bitcoin process still advances it.


def test_bundle_anchors_prints_wallet_network_name_and_fee_cap(world: BtcColdWorld) -> None:
    anchors = world.transfers.anchors()
    [wallet] = anchors["wallets"]  # type: ignore[misc]
    assert wallet["network"] == "regtest" and wallet["name"] == "bitcoin-cold"
    assert wallet["descriptor"] == world.btc.runtime.cold.descriptor(
        world.btc.runtime.wallets.one("bitcoin", Temperature.COLD).id
    )
    assert anchors["fee_caps"] == [{"asset": "BTC", "chain": "bitcoin", "fee_cap_minor": "50000"}]
    # The printed entry is accepted by the signer as it is.
    data = dict(world.anchors_json())
    data["wallets"] = anchors["wallets"]
    assert TrustAnchors.from_bytes(json.dumps(data).encode()).wallets["bitcoin-cold"].network == "regtest"


def test_cold_spend_prepared_before_the_upgrade_gets_its_previous_transactions(world: BtcColdWorld) -> None:
    """A stored PSBT without non_witness_utxo (prepared by an older platform) is completed, not replaced."""
    from custody.chains.bitcoin.models import BitcoinColdSpend
    from signer.bundle import BitcoinTransaction
    from signer.verification import verify_bundle

    world.sweep_to_cold()
    refill = world.approved_refill(150_000)
    exported = world.transfers.export("refill", refill.id)
    spend = spend_id("refill", refill.id)
    original = world.btc.runtime.cold.get(spend).psbt
    stripped = PSBT.from_string(original)
    for inp in stripped.inputs:
        inp.non_witness_utxo = None
    with world.app.extensions["strongroom.sessions"].begin() as session:
        row = session.get(BitcoinColdSpend, spend)
        assert row is not None
        row.psbt = stripped.to_string()
    again = world.btc.runtime.cold.prepare_spend(spend, spend, "ignored", 1, 1, 1)
    assert PSBT.from_string(again.psbt).tx.serialize() == stripped.tx.serialize()
    assert again.psbt == original
    bundle = exported.view  # The exported bundle (made before the strip) still verifies as before.
    assert bundle.state == "exported"
    body = Bundle.from_bytes(exported.data).body
    assert isinstance(body.transaction, BitcoinTransaction) and body.transaction.psbt_base64 == original
    assert verify_bundle(Bundle.from_bytes(exported.data), world.anchors(), world.btc.clock(), History()).ok
