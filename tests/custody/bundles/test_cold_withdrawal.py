"""Cold withdrawals through the offline signer on the embedded chain (Python API end to end).

Export an approved cold withdrawal, sign it with the signer's own code, import
it, broadcast, confirm, settle the ledger, close the withdrawal, and keep the
reconciliation clean; and every way the platform must refuse.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from custody.bundles.codes import BundleCode, BundleError
from custody.bundles.service import ledger_prefix
from custody.chains.ethereum.devchain import EmbeddedChain
from custody.keystore import LocalKeystore
from signer.bundle import Bundle, EthereumTransaction
from signer.canonical import canonical_bytes
from signer.signed import SignedBundle

from ...signer.helpers import ETH_ATTACKER, ETH_DESTINATION
from ..wallets.helpers import ETH
from .helpers import ColdWorld, make_cold_harness, make_world

AMOUNT = ETH


@pytest.fixture
def world(
    app: Flask, client: FlaskClient, clock: Any, keystore: LocalKeystore, database_url: str
) -> ColdWorld:
    harness = make_cold_harness(EmbeddedChain(), database_url, keystore, clock)
    return make_world(app, client, clock, keystore, harness, "embedded")


def test_cold_withdrawal_exported_signed_imported_broadcast_confirmed_and_settled(world: ColdWorld) -> None:
    withdrawal_id = world.cold_withdrawal(AMOUNT)
    cold_before = world.cold_balance()
    exported = world.transfers.export("withdrawal", withdrawal_id)
    assert exported.view.state == "exported"
    assert world.withdrawal_state(withdrawal_id) == "awaiting_signature"
    bundle = Bundle.from_bytes(exported.data)
    assert bundle.body.intent.destination == ETH_DESTINATION and bundle.body.intent.amount_minor == AMOUNT
    assert {a.approver_id for a in bundle.body.approvals} == {"treasury1", "treasury2"}
    # The same request exported again gives the very same bytes (a lost stick), not a second bundle.
    assert world.transfers.export("withdrawal", withdrawal_id).data == exported.data

    signed = world.sign(exported.data)
    view = world.transfers.import_signed(signed)
    assert view.state == "broadcast" and view.txid is not None
    assert world.withdrawal_state(withdrawal_id) == "broadcasting"
    world.settle()

    assert world.transfers.get(view.bundle_id).state == "confirmed"
    assert world.withdrawal_state(withdrawal_id) == "completed"
    adapter = world.harness.runtime.adapter
    assert adapter.balance(ETH_DESTINATION, "ETH") == AMOUNT
    fee = world.transfers.get(view.bundle_id).fee_paid_minor
    assert fee is not None and fee > 0
    assert world.cold_balance() == cold_before - AMOUNT - fee
    prefix = ledger_prefix("withdrawal", withdrawal_id)
    ledger = world.harness.ledger
    assert ledger.get_transfer(f"{prefix}:hold:post").pending_id == f"{withdrawal_id}:hold"
    assert ledger.get_transfer(f"{prefix}:reserve:post").pending_id == f"{prefix}:reserve"
    world.harness.assert_ledger_balanced()
    world.harness.assert_reconciled()
    # Never twice: more rounds, and importing the same signed file again, change nothing; another
    # signature of the same bundle is refused.
    world.settle(2)
    assert world.transfers.import_signed(signed).state == "confirmed"
    with pytest.raises(BundleError) as info:
        world.transfers.import_signed(world.sign(exported.data))
    assert info.value.code is BundleCode.SIGNED_CONFLICT
    assert world.cold_balance() == cold_before - AMOUNT - fee
    assert world.withdrawal_state(withdrawal_id) == "completed"


def _tampered(signed: bytes, **result: Any) -> bytes:
    document = json.loads(signed)
    document.update(result)
    return canonical_bytes(document)


def _resigned_to(world: ColdWorld, exported: bytes, destination: str) -> bytes:
    """A signed result whose transaction pays ``destination``, signed by the real cold key."""
    from eth_account import Account

    from signer.ethereum import ethereum_private_key
    from signer.wire import transaction_dict

    from ...signer.helpers import ETH_PATH, seed

    bundle = Bundle.from_bytes(exported)
    tx = bundle.body.transaction
    assert isinstance(tx, EthereumTransaction)
    fields = transaction_dict(tx)
    fields["to"] = destination
    raw = bytes(Account.sign_transaction(fields, ethereum_private_key(seed(0), ETH_PATH)).raw_transaction)
    honest = SignedBundle.from_bytes(world.sign(exported))
    return _tampered(
        honest.to_bytes(),
        result={"type": "ethereum_raw", "raw_transaction": raw.hex(), "tx_hash": honest.tx_hash},
    )


def test_tampered_signed_bundle_is_refused_and_nothing_is_broadcast(world: ColdWorld) -> None:
    withdrawal_id = world.cold_withdrawal(AMOUNT)
    exported = world.transfers.export("withdrawal", withdrawal_id).data
    head = world.harness.runtime.adapter.head_height()
    honest = world.sign(exported)
    for bad in (
        _resigned_to(world, exported, ETH_ATTACKER),  # a different destination, really signed by the cold key
        _tampered(honest, bundle_sha256="00" * 32),  # answers another bundle
        honest[:-1],  # not a signed document
    ):
        with pytest.raises(BundleError) as info:
            world.transfers.import_signed(bad)
        assert info.value.code in (BundleCode.SIGNED_REFUSED, BundleCode.BUNDLE_NOT_FOUND), info.value
    assert world.harness.runtime.adapter.head_height() == head  # nothing was mined
    assert world.harness.runtime.adapter.balance(ETH_ATTACKER, "ETH") == 0
    assert world.withdrawal_state(withdrawal_id) == "awaiting_signature"
    assert world.transfers.get(f"bnd-{withdrawal_id}-1").state == "exported"
    # The honest answer still goes through afterwards.
    assert world.transfers.import_signed(honest).state == "broadcast"


def test_export_refuses_requests_that_are_not_approved_cold_withdrawals(world: ColdWorld) -> None:
    with pytest.raises(BundleError) as info:
        world.transfers.export("withdrawal", "wd_nope")
    assert info.value.code is BundleCode.REQUEST_NOT_FOUND
    created = world.alice.post(
        "/api/v1/withdrawals",
        json={"asset": "ETH", "amount": str(AMOUNT), "destination": ETH_DESTINATION, "source_wallet": "cold"},
        mfa=True,
        idempotency_key="cold-pending-1",
    )
    pending = created.json["withdrawal"]["id"]
    with pytest.raises(BundleError) as info:
        world.transfers.export("withdrawal", pending)
    assert info.value.code is BundleCode.REQUEST_NOT_READY
    assert world.transfers.recent() == []


def test_export_refuses_when_the_cold_wallet_is_short_in_the_ledger(world: ColdWorld) -> None:
    withdrawal_id = world.cold_withdrawal(world.cold_balance() + 1)
    with pytest.raises(BundleError) as info:
        world.transfers.export("withdrawal", withdrawal_id)
    assert info.value.code is BundleCode.COLD_BALANCE_SHORT
    assert world.withdrawal_state(withdrawal_id) == "approved"


def test_expired_bundle_is_superseded_with_the_same_nonce_and_its_signature_refused(world: ColdWorld) -> None:
    withdrawal_id = world.cold_withdrawal(AMOUNT)
    first = world.transfers.export("withdrawal", withdrawal_id)
    late_signature = world.sign(first.data)
    world.clock.advance(25 * 3_600_000)
    # The approvals are an hour old by now: they no longer count, so nothing can be re-exported.
    with pytest.raises(BundleError) as info:
        world.transfers.export("withdrawal", withdrawal_id)
    assert info.value.code is BundleCode.QUORUM_NOT_MET
    assert world.transfers.get(first.view.bundle_id).state == "exported"
    assert late_signature  # the signed result of an expired bundle can still be imported while current
    assert world.transfers.import_signed(late_signature).state == "broadcast"


def test_expired_unsigned_bundle_is_replaced_with_the_same_nonce_and_the_old_one_refused(
    world: ColdWorld,
) -> None:
    withdrawal_id = world.cold_withdrawal(AMOUNT, approval_ttl_ms=48 * 3_600_000)
    first = world.transfers.export("withdrawal", withdrawal_id)
    old_answer = world.sign(first.data)
    world.clock.advance(25 * 3_600_000)
    second = world.transfers.export("withdrawal", withdrawal_id)
    assert second.view.bundle_id.endswith("-2") and second.data != first.data
    assert world.transfers.get(first.view.bundle_id).state == "superseded"
    old_tx, new_tx = (Bundle.from_bytes(b.data).body.transaction for b in (first, second))
    assert isinstance(old_tx, EthereumTransaction) and isinstance(new_tx, EthereumTransaction)
    assert old_tx.nonce == new_tx.nonce  # at most one of the two can ever be mined
    with pytest.raises(BundleError) as info:
        world.transfers.import_signed(old_answer)
    assert info.value.code is BundleCode.BUNDLE_SUPERSEDED
    assert world.transfers.import_signed(world.sign(second.data)).state == "broadcast"
    world.settle()
    assert world.withdrawal_state(withdrawal_id) == "completed"
    world.harness.assert_reconciled()


def test_cold_withdrawal_mined_but_not_yet_settled_reconciles_clean(world: ColdWorld) -> None:
    withdrawal_id = world.cold_withdrawal(AMOUNT)
    exported = world.transfers.export("withdrawal", withdrawal_id)
    view = world.transfers.import_signed(world.sign(exported.data))
    assert view.state == "broadcast"
    world.harness.chain.mine(1)
    world.harness.runtime.tick()
    view = world.transfers.tick()[0]
    assert view.state == "broadcast" and view.mined_height is not None  # mined, not yet N confirmations
    world.harness.assert_reconciled()  # the chain is ahead of the ledger: in flight, not a discrepancy
    world.settle()
    assert world.transfers.get(view.bundle_id).state == "confirmed"
    world.harness.assert_reconciled()


def test_cold_withdrawal_with_version_1_approvals_refused_with_a_clear_message(world: ColdWorld) -> None:
    """Approvals stored before the approval digest bound chain, network, wallet, fee cap and rule."""
    from sqlalchemy import delete

    from custody.access.models import ApprovalRow

    from ...policies.test_approval_doc import VERSION_1_APPROVAL_HEX

    withdrawal_id = world.cold_withdrawal(ETH)
    sessions = world.app.extensions["strongroom.sessions"]
    mine = (ApprovalRow.kind == "withdrawal", ApprovalRow.subject_id == withdrawal_id)
    with sessions.begin() as session:
        rows = list(session.scalars(select(ApprovalRow).where(*mine)))
        assert len(rows) == 2
        session.execute(delete(ApprovalRow).where(*mine))
        for n, row in enumerate(rows):  # As a database from before the migration holds them.
            session.add(
                ApprovalRow(
                    approval_id=f"v1-{n}",
                    kind="withdrawal",
                    subject_id=withdrawal_id,
                    approver=row.approver,
                    key_id=row.key_id,
                    approval=bytes.fromhex(VERSION_1_APPROVAL_HEX),
                    created_ms=row.created_ms,
                )
            )
    with pytest.raises(BundleError) as error:
        world.transfers.export("withdrawal", withdrawal_id)
    assert error.value.code is BundleCode.QUORUM_NOT_MET
    assert "2 stored approval(s) skipped: approval format version 1" in error.value.message
    assert "the approver must approve again" in error.value.message
    assert world.withdrawal_state(withdrawal_id) == "approved"


def test_cold_withdrawal_subject_binds_chain_network_wallet_fee_cap_and_rule(world: ColdWorld) -> None:
    from .helpers import COLD_RULE

    created = world.alice.post(
        "/api/v1/withdrawals",
        json={"asset": "ETH", "amount": str(ETH), "destination": ETH_DESTINATION, "source_wallet": "cold"},
        mfa=True,
        idempotency_key="cold-subject-1",
    )
    subject = created.json["withdrawal"]["subject"]
    assert (subject["chain"], subject["network"], subject["source_wallet"]) == (
        "ethereum",
        "embedded",
        "ethereum-cold",
    )
    assert subject["rule_id"] == COLD_RULE
    assert subject["fee_cap_minor"] == str(21_000 * 500 * 10**9)  # Gas limit x the 500 gwei cap.


def test_export_refuses_a_cold_withdrawal_of_a_frozen_owner(world: ColdWorld, app: Flask) -> None:
    from custody import freezes

    withdrawal_id = world.cold_withdrawal(AMOUNT)
    with app.extensions["strongroom.sessions"].begin() as session:
        freezes.freeze(session, freeze_id="reorg:test", owner="alice", reason="deposit reorged out",
                       raised_by="service:deposit-watcher", now_ms=1)
    with pytest.raises(BundleError) as info:
        world.transfers.export("withdrawal", withdrawal_id)
    assert info.value.code is BundleCode.REQUEST_NOT_READY and "frozen" in info.value.message
    assert world.withdrawal_state(withdrawal_id) == "approved"
    assert world.transfers.recent() == []


def test_export_refuses_a_cold_withdrawal_whose_hold_is_no_longer_live(world: ColdWorld, app: Flask) -> None:
    """An operator (or an expiry) voided the hold: a signed transfer would pay out unbacked funds."""
    from custody.ledger.entry import TransferKind
    from custody.ledger.posting import TransferRequest

    withdrawal_id = world.cold_withdrawal(AMOUNT)
    voided = world.harness.ledger.transfer(TransferRequest(
        id=f"{withdrawal_id}:hold:void-by-operator", kind=TransferKind.VOID,
        pending_id=f"{withdrawal_id}:hold"))
    assert voided.ok, voided
    with pytest.raises(BundleError) as info:
        world.transfers.export("withdrawal", withdrawal_id)
    assert info.value.code is BundleCode.HOLD_NOT_LIVE and info.value.status == 409
    assert world.withdrawal_state(withdrawal_id) == "approved"
    assert world.transfers.recent() == []


def test_exported_cold_withdrawal_not_imported_while_its_chain_is_halted(
    world: ColdWorld, app: Flask
) -> None:
    """An exported withdrawal is still in flight: a halt stops it before broadcast, a lift lets it go."""
    from custody import withdrawal_halts

    withdrawal_id = world.cold_withdrawal(AMOUNT)
    exported = world.transfers.export("withdrawal", withdrawal_id)
    signed = world.sign(exported.data)
    sessions = app.extensions["strongroom.sessions"]
    with sessions.begin() as session:
        halt = withdrawal_halts.halt(session, scope="chain:ethereum", reason="incident", admin="admin1",
                                     now_ms=1)
    with pytest.raises(BundleError) as info:
        world.transfers.import_signed(signed)
    assert info.value.code is BundleCode.WITHDRAWALS_HALTED and info.value.status == 423
    assert world.withdrawal_state(withdrawal_id) == "awaiting_signature"
    assert world.transfers.get(exported.view.bundle_id).txid is None
    with sessions.begin() as session:
        withdrawal_halts.lift(session, halt.id, admin="admin1", roles={"admin"}, now_ms=2)
        withdrawal_halts.lift(session, halt.id, admin="admin2", roles={"admin"}, now_ms=3)
    assert world.transfers.import_signed(signed).state == "broadcast"
    assert world.withdrawal_state(withdrawal_id) == "broadcasting"
