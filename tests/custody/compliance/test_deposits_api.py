"""Officers see held and quarantined deposits and release a tier-cap hold over the API (MFA, logged)."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from custody.chains.ethereum.devchain import EmbeddedChain
from custody.ledger.entry import AccountKind
from custody.ledger.service import Ledger
from policies.roles import Role
from strongroom.runtimes.ethereum import WalletRuntime, build_runtime
from strongroom.wiring import build_deposit_gate

from ..access.helpers import SignedClient, assert_error, make_user
from .test_deposits import COLD, CONFIRMATIONS, ETH, PRICES


@pytest.fixture
def runtime(app: Flask, keystore: Any, clock: Any) -> tuple[EmbeddedChain, WalletRuntime]:
    chain = EmbeddedChain()
    sessions, ledger = app.extensions["strongroom.sessions"], app.extensions["strongroom.ledger"]
    built = build_runtime(sessions, ledger, keystore, chain.adapter(), clock, CONFIRMATIONS,
                          start_height=chain.web3.eth.block_number + 1,
                          gate=build_deposit_gate(sessions, ledger, clock, PRICES))
    built.setup_wallets(COLD)
    built.watcher.tick()
    return chain, built


def _settle(chain: EmbeddedChain, runtime: WalletRuntime) -> None:
    for _ in range(4):
        runtime.tick()
        chain.mine(1)
    runtime.tick()


def test_deposits_api_officer_lists_and_releases_a_held_deposit(
    app: Flask, client: FlaskClient, clock: Any, runtime: tuple[EmbeddedChain, WalletRuntime]
) -> None:
    chain, wallets = runtime
    trader = make_user(app, client, clock, "frank", {Role.TRADER}, kyc_tier=1)
    officer = make_user(app, client, clock, "officer1", {Role.COMPLIANCE})
    chain.send_eth(wallets.wallets.deposit_address("ethereum-deposits", "frank").address, 3 * ETH)
    _settle(chain, wallets)
    listed = officer.get("/api/v1/compliance/deposits")
    assert listed.status_code == 200, listed.json
    [held] = listed.json["deposits"]
    assert (held["owner"], held["decision"], held["amount_minor"]) == ("frank", "held_tier_cap", str(3 * ETH))
    assert_error(trader.get("/api/v1/compliance/deposits"), 403, "permission_denied")
    path = f"/api/v1/compliance/deposits/{held['deposit_id']}/release"
    assert_error(officer.post(path, json={"reason": "ok"}), 401, "mfa_required")
    released = officer.post(path, json={"reason": "source of funds documented"}, mfa=True)
    assert released.status_code == 200, released.json
    assert released.json["deposit"]["released_by"] == "officer1"
    ledger: Ledger = app.extensions["strongroom.ledger"]
    account = ledger.find_account("frank", "ETH", AccountKind.USER_AVAILABLE)
    assert account is not None and account.balance.credit_balance_posted == 3 * ETH
    assert_error(officer.post(path, json={"reason": "again"}, mfa=True), 409, "deposit_not_releasable")
    assert_error(officer.post("/api/v1/compliance/deposits/dep:nope/release", json={"reason": "x"}, mfa=True),
                 404, "deposit_not_found")


def test_deposits_api_release_refused_for_trader(app: Flask, client: FlaskClient, clock: Any) -> None:
    trader: SignedClient = make_user(app, client, clock, "frank", {Role.TRADER})
    assert_error(trader.post("/api/v1/compliance/deposits/dep:x/release", json={"reason": "mine"}, mfa=True),
                 403, "permission_denied")
