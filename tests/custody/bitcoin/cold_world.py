"""A Bitcoin cold world: the platform app, the regtest wallets, the bundle service and the cosigners.

The cold wallet is the 2-of-3 descriptor of the three test signer seeds
(tests/signer/helpers.py WORLD); the treasury approvers are WORLD's, with
their keys registered on the platform; the signers' anchors name the
platform's own bundle key and wallet name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from custody.bundles.bitcoin import BitcoinBundles
from custody.bundles.chains import BundleChains
from custody.bundles.service import ColdTransfers
from custody.bundles.terms import install_terms
from custody.wallets.treasury import REFILL_POLICY_ID, REFILL_RULE, RefillView
from custody.wallets.wallet import Temperature
from policies.approval import Approval, ApprovalSubject, sign_approval
from policies.roles import Role
from policies.signature_scheme import ed25519_public_bytes
from signer.anchors import TrustAnchors
from signer.bundle import Bundle
from signer.signed import SignedBundle
from signer.signing import sign_bundle
from signer.signing_log import History

from ...signer.helpers import approver_key, seed
from ..access.helpers import SignedClient, access, make_user
from .helpers import CONFIRMATIONS, WORLD, BtcHarness

COLD_WALLET = "bitcoin-cold"
APPROVERS = ("bob", "carol", "erin")
HOUR_MS = 3_600_000


def register_approvers(app: Flask, client: FlaskClient, clock: Any) -> list[SignedClient]:
    """Create WORLD's treasury approvers as users with API keys and MFA, and register their keys."""
    treasury = []
    for name in APPROVERS:
        user = make_user(app, client, clock, name, {Role.TREASURY})
        user.approver_key, user.approver_key_id = approver_key(name), f"{name}-key"
        access(app).approvers.register(
            name, user.approver_key_id, ed25519_public_bytes(user.approver_key), actor="test"
        )
        treasury.append(user)
    return treasury


@dataclass
class BtcColdWorld:
    """The Bitcoin wallets and the cold-transfer service on the app's database."""

    app: Flask
    btc: BtcHarness
    transfers: ColdTransfers
    treasury: list[SignedClient]

    def anchors(self) -> TrustAnchors:
        """WORLD's anchors with the platform's bundle key, wallet name and quorum rules."""
        return TrustAnchors.from_bytes(json.dumps(self.anchors_json()).encode())

    def anchors_json(self) -> dict[str, Any]:
        data: dict[str, Any] = WORLD.anchors_json()
        data["platform_keys"] = [self.transfers.platform_key().to_json()]
        wallets = [w for w in data["wallets"] if w["chain"] == "bitcoin"]  # type: ignore[index]
        data["wallets"] = [{**w, "name": COLD_WALLET} for w in wallets]
        data["quorums"] = [
            {"policy_id": "default", "rule": "cold-source-approvals", "count": 2, "group": "treasury"},
            {"policy_id": REFILL_POLICY_ID, "rule": REFILL_RULE, "count": 2, "group": "treasury"},
        ]
        return data

    def sign(self, data: bytes, signer: int) -> SignedBundle:
        """Cosigner ``signer`` (0, 1 or 2) signs the bundle the way `strongroom-signer sign` does."""
        outcome = sign_bundle(
            Bundle.from_bytes(data),
            self.anchors(),
            seed(signer),
            self.btc.clock(),
            History(),  # type: ignore[operator]
        )
        assert outcome.signed is not None, [str(r) for r in outcome.verification.refusals]
        signed: SignedBundle = outcome.signed
        return signed

    def approve(self, subject: ApprovalSubject, name: str) -> Approval:
        now = self.btc.clock()  # type: ignore[operator]
        return sign_approval(
            approver_key(name),
            approver_id=name,
            key_id=f"{name}-key",
            subject=subject,
            signed_at_ms=now - 1_000,
            expires_at_ms=now + HOUR_MS,
        )

    def approved_refill(self, amount_sat: int) -> RefillView:
        """Propose a refill of ``amount_sat`` and approve it by bob and carol (signed approvals)."""
        treasury = self.btc.runtime.treasury
        refill = treasury.propose_refill("BTC", amount_sat, "dave")
        for name in APPROVERS[:2]:
            refill = treasury.approve_refill(refill.id, name, self.approve(refill.subject, name))
        assert refill.status == "awaiting_signer", refill
        return refill

    def sweep_to_cold(self, hot_sat: int = 900_000) -> int:
        """Fund the hot wallet and sweep its surplus to the cold multisig; return the cold balance."""
        btc = self.btc
        btc.fund_hot([hot_sat])
        btc.runtime.treasury.set_limits("BTC", 100_000, 200_000, 300_000)
        sweep = btc.runtime.treasury.rebalance("BTC")
        assert sweep is not None and sweep.purpose == "sweep"
        btc.settle(5)
        assert btc.wallet_balance(Temperature.COLD) == sweep.amount_minor
        return sweep.amount_minor

    def settle(self, rounds: int = CONFIRMATIONS["BTC"] + 2) -> None:
        """Mine and tick the wallets and the cold transfers."""
        for _ in range(rounds):
            self.btc.runtime.tick()
            self.transfers.tick()
            self.btc.chain.mine(1)
        self.btc.runtime.tick()
        self.transfers.tick()


def make_btc_cold_world(app: Flask, client: FlaskClient, btc: BtcHarness) -> BtcColdWorld:
    treasury = register_approvers(app, client, btc.clock)
    chains = BundleChains([BitcoinBundles(btc.runtime.cold, CONFIRMATIONS)])
    install_terms(chains, app.extensions["strongroom.access"].withdrawals, [btc.runtime.treasury])
    transfers = ColdTransfers(
        app.extensions["strongroom.sessions"],
        btc.runtime.wallets,
        btc.keystore,
        chains,
        btc.clock,  # type: ignore[arg-type]
    )
    return BtcColdWorld(app, btc, transfers, treasury)
