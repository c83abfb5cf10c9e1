"""A trader's withdrawal goes from the signed API through policy to the chain and back into the ledger."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from custody.chains.ethereum.devchain import EmbeddedChain
from custody.wallets.dispatch import WithdrawalDispatcher
from policies.roles import Role

from ..custody.access.helpers import make_user
from ..custody.wallets.helpers import ETH, make_harness

DAY_MS = 86_400_000
DESTINATION = "0x00000000000000000000000000000000000000aa"


def _dispatcher(app: Flask, harness: Any, clock: Any) -> WithdrawalDispatcher:
    return WithdrawalDispatcher(app.extensions["strongroom.sessions"], harness.runtime.executor,
                                ["ETH", "USDC"], clock, app.extensions["strongroom.ledger"])


def _funded_alice(app: Flask, client: FlaskClient, clock: Any, harness: Any) -> Any:
    alice = make_user(app, client, clock, "alice", {Role.TRADER})
    harness.chain.send_eth(harness.deposit_address("alice"), 2 * ETH)
    harness.chain.mine(4)
    harness.runtime.watcher.tick()
    harness.runtime.treasury.consolidate("ETH")
    harness.settle()
    return alice


def test_approved_hot_withdrawal_is_broadcast_confirmed_and_settled_in_the_ledger(
    app: Flask, client: FlaskClient, clock: Any, database_url: str, keystore: Any
) -> None:
    harness = make_harness(EmbeddedChain(), database_url, keystore, clock)
    alice = make_user(app, client, clock, "alice", {Role.TRADER})
    harness.chain.send_eth(harness.deposit_address("alice"), 2 * ETH)
    harness.chain.mine(4)
    harness.runtime.watcher.tick()
    harness.runtime.treasury.consolidate("ETH")
    harness.settle()
    assert harness.user_balance("alice", "ETH") == 2 * ETH

    assert alice.post("/api/v1/whitelist", json={"asset": "ETH", "address": DESTINATION},
                      mfa=True).status_code == 201
    clock.advance(DAY_MS + 1)
    created = alice.post("/api/v1/withdrawals", json={
        "asset": "ETH", "amount": str(ETH // 10), "destination": DESTINATION}, mfa=True,
        idempotency_key="e2e-withdrawal-1")
    assert created.status_code == 201, created.json
    withdrawal = created.json["withdrawal"]
    assert withdrawal["state"] == "approved"

    dispatcher = _dispatcher(app, harness, clock)
    assert dispatcher.run().dispatched == [withdrawal["id"]]
    url = f"/api/v1/withdrawals/{withdrawal['id']}"
    assert alice.get(url).json["withdrawal"]["state"] == "broadcasting"
    # In flight, the owner can no longer cancel: the hold stays until the chain decides.
    refused = alice.post(f"{url}/cancel")
    assert refused.status_code == 409, refused.json
    assert dispatcher.run().dispatched == []  # never two transactions for one withdrawal

    harness.settle()
    assert dispatcher.run().completed == [withdrawal["id"]]
    assert alice.get(url).json["withdrawal"]["state"] == "completed"
    assert harness.chain.adapter().balance(DESTINATION, "ETH") == ETH // 10
    assert harness.user_balance("alice", "ETH") == 2 * ETH - ETH // 10
    posted = harness.ledger.get_transfer(f"wd:{withdrawal['id']}:hold:post")
    assert posted.pending_id == f"{withdrawal['id']}:hold"
    harness.assert_ledger_balanced()
    harness.assert_reconciled()


def test_withdrawal_the_hot_wallet_refuses_fails_and_returns_the_funds(
    app: Flask, client: FlaskClient, clock: Any, keystore: Any
) -> None:
    harness = make_harness(EmbeddedChain(), app.config["DATABASE_URL"], keystore, clock)
    alice = _funded_alice(app, client, clock, harness)
    bad = "not-an-ethereum-address"
    assert alice.post("/api/v1/whitelist", json={"asset": "ETH", "address": bad}, mfa=True).status_code == 201
    clock.advance(DAY_MS + 1)
    created = alice.post("/api/v1/withdrawals", json={"asset": "ETH", "amount": str(ETH // 10),
                                                       "destination": bad}, mfa=True,
                         idempotency_key="e2e-withdrawal-bad")
    assert created.status_code == 201, created.json
    withdrawal = created.json["withdrawal"]
    assert harness.user_balance("alice", "ETH") == 2 * ETH  # posted balance; the hold is pending
    report = _dispatcher(app, harness, clock).run()
    assert report.dispatched == [withdrawal["id"]]
    state = alice.get(f"/api/v1/withdrawals/{withdrawal['id']}").json["withdrawal"]
    assert state["state"] == "failed"
    account = harness.ledger.find_account("alice", "ETH", "user_available")
    assert account is not None and account.balance.credit_balance_available == 2 * ETH
    harness.assert_ledger_balanced()
