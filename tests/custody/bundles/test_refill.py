"""Refills cold -> hot: signed treasury approvals, then the same bundle path as withdrawals."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from custody.access.errors import AccessCode, AccessError
from custody.bundles.codes import BundleCode, BundleError
from custody.chains.ethereum.devchain import EmbeddedChain
from custody.keystore import LocalKeystore
from custody.wallets.wallet import Temperature
from policies.approval import Approval
from policies.results import PolicyError

from ..wallets.helpers import ETH
from .helpers import ColdWorld, make_cold_harness, make_world


@pytest.fixture
def world(
    app: Flask, client: FlaskClient, clock: Any, keystore: LocalKeystore, database_url: str
) -> ColdWorld:
    harness = make_cold_harness(EmbeddedChain(), database_url, keystore, clock)
    return make_world(app, client, clock, keystore, harness, "embedded")


def _approval(world: ColdWorld, index: int, refill: Any) -> Approval:
    signer = world.treasury[index]
    return Approval.from_bytes(base64.b64decode(signer.approve_subject(refill.subject)))


def test_refill_with_signed_approvals_is_exported_signed_broadcast_and_settled(world: ColdWorld) -> None:
    treasury = world.harness.runtime.treasury
    treasury.set_limits("ETH", 2 * ETH, 3 * ETH, 10 * ETH)
    refill = treasury.rebalance("ETH")
    assert refill is not None and refill.status == "proposed"  # type: ignore[union-attr]
    with pytest.raises(BundleError) as info:
        world.transfers.export("refill", refill.id)
    assert info.value.code is BundleCode.REQUEST_NOT_READY

    first = treasury.approve_refill(refill.id, "treasury1", _approval(world, 0, refill))
    assert first.status == "proposed"
    done = treasury.approve_refill(refill.id, "treasury2", _approval(world, 1, refill))
    assert done.status == "awaiting_signer"

    hot_before = world.harness.wallet_balance(Temperature.HOT, "ETH")
    cold_before = world.cold_balance()
    exported = world.transfers.export("refill", refill.id)
    assert treasury.refills()[0].status == "awaiting_signature"
    view = world.transfers.import_signed(world.sign(exported.data))
    assert treasury.refills()[0].status == "broadcasting"
    world.settle()

    view = world.transfers.get(view.bundle_id)
    assert view.state == "confirmed" and view.fee_paid_minor
    assert treasury.refills()[0].status == "completed"
    assert world.harness.wallet_balance(Temperature.HOT, "ETH") == hot_before + refill.amount_minor
    assert world.cold_balance() == cold_before - refill.amount_minor - view.fee_paid_minor
    world.harness.assert_ledger_balanced()
    world.harness.assert_reconciled()


def test_refill_approvals_must_be_signed_by_registered_treasury_keys_over_the_refill(
    world: ColdWorld,
) -> None:
    treasury = world.harness.runtime.treasury
    treasury.set_limits("ETH", 2 * ETH, 3 * ETH, 10 * ETH)
    refill = treasury.rebalance("ETH")
    assert refill is not None
    someone_else = _approval(world, 0, refill)
    with pytest.raises(AccessError) as mismatch:
        treasury.approve_refill(refill.id, "treasury2", someone_else)  # treasury1's approval, submitted by 2
    assert mismatch.value.code is AccessCode.APPROVER_MISMATCH
    other = treasury.propose_refill("USDC", 10, "system.treasury")
    with pytest.raises(PolicyError):  # an approval of another refill does not count for this one
        treasury.approve_refill(other.id, "treasury1", someone_else)
    # One signed approval is not a quorum: no bundle.
    treasury.approve_refill(refill.id, "treasury1", _approval(world, 0, refill))
    with pytest.raises(BundleError) as info:
        world.transfers.export("refill", refill.id)
    assert info.value.code is BundleCode.REQUEST_NOT_READY
    # The same approver twice does not count twice (one add_approval() for every kind: 5024).
    with pytest.raises(PolicyError, match="approver_duplicate"):
        treasury.approve_refill(refill.id, "treasury1", _approval(world, 0, refill))
    treasury.approve_refill(refill.id, "treasury3", _approval(world, 2, refill))
    assert world.transfers.export("refill", refill.id).view.state == "exported"
