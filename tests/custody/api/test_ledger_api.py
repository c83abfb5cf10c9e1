"""The ledger HTTP API: happy paths, stable error bodies, nothing half-applied."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from custody.api.errors import LEDGER_STATUS
from custody.ledger.codes import LedgerCode
from policies.roles import Role

from ..access.helpers import SignedClient, make_user


@pytest.fixture
def ops(app: Flask, client: FlaskClient, clock: object) -> SignedClient:
    """An internal operator: admin (proposes raw ledger writes) and auditor (reads everything)."""
    return make_user(app, client, clock, "ops", {Role.ADMIN, Role.AUDITOR})


@pytest.fixture
def ops2(app: Flask, client: FlaskClient, clock: object) -> SignedClient:
    """A second admin: approves what ``ops`` proposes (no single person moves money)."""
    return make_user(app, client, clock, "ops2", {Role.ADMIN})


@dataclass
class Answer:
    """What a raw ledger write ends in, once proposed by one admin and approved by another."""

    status_code: int
    json: Any


class TwoAdmins:
    """Propose a raw ledger write as ``ops`` and approve it as ``ops2``; answer like the ledger did."""

    def __init__(self, ops: SignedClient, ops2: SignedClient) -> None:
        self.ops, self.ops2 = ops, ops2
        self.keys = itertools.count(1)

    def post(self, path: str, **kwargs: Any) -> Any:
        proposed = self.ops.post(path, mfa=True, idempotency_key=f"p{next(self.keys)}", **kwargs)
        if proposed.status_code != 202:
            return proposed
        proposal = proposed.json["proposal"]
        assert proposal["state"] == "proposed" and proposal["proposer"] == "ops"
        approved = self.ops2.post(f"/api/v1/ledger/proposals/{proposal['id']}/approve", mfa=True,
                                  idempotency_key=f"a{next(self.keys)}")
        results = approved.json["results"]
        if path.endswith("/batch"):
            return Answer(201 if approved.status_code == 200 else 422, {"results": results})
        (result,) = results
        if "error" in result:
            status = LEDGER_STATUS.get(LedgerCode(result["code"]), 400)
            return Answer(status, {k: result[k] for k in ("code", "error", "message")})
        return Answer(201 if result["status"] == "created" else 200, result)


@pytest.fixture
def admins2(ops: SignedClient, ops2: SignedClient) -> TwoAdmins:
    return TwoAdmins(ops, ops2)


def _account(client: SignedClient, owner: str, asset: str, kind: str) -> int:
    response = client.post("/api/v1/ledger/accounts",
                           json={"owner": owner, "asset": asset, "kind": kind})
    assert response.status_code == 201, response.json
    return int(response.json["id"])


@pytest.fixture
def funded(ops: SignedClient, admins2: TwoAdmins) -> dict[str, int]:
    ids = {"wallet": _account(ops, "platform", "ETH", "hot_wallet"),
           "alice": _account(ops, "alice", "ETH", "user_available"),
           "bob": _account(ops, "bob", "ETH", "user_available")}
    response = admins2.post("/api/v1/ledger/transfers", json={
        "id": "fund", "debit_account": ids["wallet"], "credit_account": ids["alice"],
        "amount": str(10**30)})
    assert response.status_code == 201, response.json
    return ids


def _assert_error(response: Any, status: int, code: int, error: str) -> None:
    assert response.status_code == status, response.json
    body = response.json
    assert (body["code"], body["error"]) == (code, error)
    assert body["message"]


def test_health_reports_database_and_ledger_head(client: FlaskClient) -> None:
    response = client.get("/api/v1/health")
    assert response.status_code == 200
    assert response.json["status"] == "ok"
    # Nothing but the accounts the app opens at start-up (each an ``open`` journal entry).
    assert response.json["ledger"]["seq"] == client.application.extensions["strongroom.ledger"].head()[0]


def test_transfer_and_balance_round_trip_exact_large_amounts(
    ops: SignedClient, funded: dict[str, int], admins2: TwoAdmins) -> None:
    response = admins2.post("/api/v1/ledger/transfers", json={
        "id": "t1", "debit_account": funded["alice"], "credit_account": funded["bob"],
        "amount": "123456789012345678901234567"})
    assert response.status_code == 201
    assert response.json["transfer"]["amount"] == "123456789012345678901234567"
    bob = ops.get(f"/api/v1/ledger/accounts/{funded['bob']}").json
    assert bob["balance"]["credits_posted"] == "123456789012345678901234567"


def test_retry_returns_original_with_200(
    ops: SignedClient, funded: dict[str, int], admins2: TwoAdmins
) -> None:
    body = {"id": "t1", "debit_account": funded["alice"], "credit_account": funded["bob"],
            "amount": 5}
    first = admins2.post("/api/v1/ledger/transfers", json=body)
    again = admins2.post("/api/v1/ledger/transfers", json=body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json["status"] == "exists"
    assert again.json["transfer"] == first.json["transfer"]
    conflict = admins2.post("/api/v1/ledger/transfers", json={**body, "amount": 6})
    _assert_error(conflict, 409, 4007, "transfer_exists_with_different_fields")


@pytest.mark.parametrize(
    ("patch", "status", "code", "error"),
    [
        ({"amount": 1.5}, 400, 9002, "invalid_field"),
        ({"amount": "1e3"}, 400, 9002, "invalid_field"),
        ({"amount": -1}, 400, 9002, "invalid_field"),
        ({"amount": True}, 400, 9002, "invalid_field"),
        ({"amount": str(10**31)}, 422, 4003, "insufficient_funds"),
        ({"credit_account": 424242}, 404, 4001, "unknown_account"),
        ({"kind": "teleport"}, 400, 9002, "invalid_field"),
        ({"surprise": 1}, 400, 9002, "invalid_field"),
        ({"id": "has space"}, 400, 4013, "invalid_transfer_id"),
        ({"debit_account": "1"}, 400, 9002, "invalid_field"),
    ],
)
def test_bad_transfer_gets_stable_error_and_changes_nothing(
    ops: SignedClient, funded: dict[str, int], patch: dict[str, Any], status: int, code: int,
    error: str, admins2: TwoAdmins) -> None:
    body = {"id": "t1", "debit_account": funded["alice"], "credit_account": funded["bob"],
            "amount": 5, **patch}
    seq_before = ops.get("/api/v1/health").json["ledger"]["seq"]
    _assert_error(admins2.post("/api/v1/ledger/transfers", json=body), status, code, error)
    assert ops.get("/api/v1/health").json["ledger"]["seq"] == seq_before


def test_non_json_and_non_object_bodies_are_refused(ops: SignedClient, admins2: TwoAdmins) -> None:
    _assert_error(admins2.post("/api/v1/ledger/transfers", data="x"), 415, 9015,
                  "unsupported_media_type")
    _assert_error(admins2.post("/api/v1/ledger/transfers", data="[1]",
                              content_type="application/json"), 400, 9001, "invalid_json")
    _assert_error(admins2.post("/api/v1/ledger/transfers", data="{bad",
                              content_type="application/json"), 400, 9001, "invalid_json")


def test_unknown_route_and_method_get_json_errors(client: FlaskClient) -> None:
    _assert_error(client.get("/api/v1/nope"), 404, 9004, "not_found")
    _assert_error(client.delete("/api/v1/ledger/transfers/x"), 405, 9005, "method_not_allowed")


def test_linked_batch_failure_reports_each_item_and_applies_nothing(
    ops: SignedClient, funded: dict[str, int], admins2: TwoAdmins) -> None:
    transfers = [
        {"id": "a", "debit_account": funded["alice"], "credit_account": funded["bob"], "amount": 1},
        {"id": "b", "debit_account": funded["bob"], "credit_account": funded["alice"], "amount": 2},
    ]
    response = admins2.post("/api/v1/ledger/transfers/batch",
                           json={"transfers": transfers, "linked": True})
    assert response.status_code == 422
    assert [r.get("error", r["status"]) for r in response.json["results"]] == [
        "not_applied", "insufficient_funds"]
    bob = ops.get(f"/api/v1/ledger/accounts/{funded['bob']}").json
    assert bob["balance"]["credits_posted"] == "0"


def test_unlinked_batch_proposal_is_still_applied_all_or_nothing(
    ops: SignedClient, funded: dict[str, int], admins2: TwoAdmins
) -> None:
    transfers = [
        {"id": "a", "debit_account": funded["alice"], "credit_account": funded["bob"], "amount": 1},
        {"id": "b", "debit_account": funded["bob"], "credit_account": funded["alice"], "amount": 2},
    ]
    response = admins2.post("/api/v1/ledger/transfers/batch", json={"transfers": transfers})
    assert response.status_code == 422
    assert [r["status"] for r in response.json["results"]] == ["not_applied", "failed"]
    assert ops.get(f"/api/v1/ledger/accounts/{funded['bob']}").json["balance"]["credits_posted"] == "0"


def test_two_phase_over_the_api(ops: SignedClient, funded: dict[str, int], admins2: TwoAdmins) -> None:
    hold = admins2.post("/api/v1/ledger/transfers", json={
        "id": "hold", "kind": "pending", "debit_account": funded["alice"],
        "credit_account": funded["bob"], "amount": 100, "timeout_s": 3600})
    assert hold.status_code == 201
    posted = admins2.post("/api/v1/ledger/transfers/hold/post", json={"id": "hold-post",
                                                                      "amount": "60"})
    assert posted.status_code == 201
    assert posted.json["transfer"]["amount"] == "60"
    _assert_error(admins2.post("/api/v1/ledger/transfers/hold/void", json={"id": "hold-void"}),
                  409, 4009, "pending_transfer_already_posted")
    _assert_error(admins2.post("/api/v1/ledger/transfers/nope/void", json={"id": "v"}),
                  404, 4008, "pending_transfer_not_found")


def test_history_is_cursor_paginated(ops: SignedClient, funded: dict[str, int], admins2: TwoAdmins) -> None:
    for i in range(5):
        admins2.post("/api/v1/ledger/transfers", json={
            "id": f"t{i}", "debit_account": funded["alice"], "credit_account": funded["bob"],
            "amount": 1})
    url = f"/api/v1/ledger/accounts/{funded['bob']}/history"
    page = ops.get(url, query={"limit": 2}).json
    ids = [e["id"] for e in page["entries"]]
    while page["next_cursor"]:
        page = ops.get(url, query={"limit": 2, "cursor": page["next_cursor"]}).json
        ids += [e["id"] for e in page["entries"]]
    assert ids == [f"t{i}" for i in range(5)]
    _assert_error(ops.get(url, query={"limit": 0}), 400, 9002, "invalid_field")
    _assert_error(ops.get(url, query={"cursor": "-1"}), 400, 9002, "invalid_field")


def test_create_account_refusals(ops: SignedClient) -> None:
    _account(ops, "carol", "BTC", "user_available")
    _assert_error(ops.post("/api/v1/ledger/accounts", json={
        "owner": "carol", "asset": "BTC", "kind": "user_available"}), 409, 4015, "account_exists")
    _assert_error(ops.post("/api/v1/ledger/accounts", json={
        "owner": "carol", "asset": "XRP", "kind": "user_available"}), 400, 4014, "unknown_asset")
    _assert_error(ops.get("/api/v1/ledger/accounts/999"), 404, 4001, "unknown_account")


@pytest.mark.parametrize(("action", "body"), [
    ("post", {"id": "p", "surprise": 1}),
    ("post", {"id": "p", "debit_account": 1}),
    ("void", {"id": "v", "amount": "5"}),  # a void releases the whole hold: no amount
    ("void", {"id": "v", "pending_id": "other"}),
])
def test_post_or_void_with_unknown_fields_refused_400_nothing_proposed(
    ops: SignedClient, funded: dict[str, int], admins2: TwoAdmins, action: str, body: dict[str, Any]
) -> None:
    hold = admins2.post("/api/v1/ledger/transfers", json={
        "id": "hold", "kind": "pending", "debit_account": funded["alice"],
        "credit_account": funded["bob"], "amount": 100, "timeout_s": 3600})
    assert hold.status_code == 201
    before = ops.get("/api/v1/ledger/proposals").json
    _assert_error(ops.post(f"/api/v1/ledger/transfers/hold/{action}", json=body, mfa=True,
                           idempotency_key=f"x-{action}"), 400, 9002, "invalid_field")
    assert ops.get("/api/v1/ledger/proposals").json == before
