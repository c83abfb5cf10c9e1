"""The audit API: checkpoints, proofs that verify offline, keys, reserves snapshots and proofs."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient

from custody.audit.export import parse_keys
from custody.audit.liability_proof import verify_liability_proof
from custody.audit.proofs import verify_document
from policies.roles import Role

from ..access.helpers import SignedClient, make_user
from .helpers import accounts, first_batch, second_batch


class Caller:
    """A signed client that accepts URLs with inline query strings."""

    def __init__(self, signed: SignedClient) -> None:
        self.signed = signed

    def _split(self, url: str) -> tuple[str, dict[str, str]]:
        parts = urlsplit(url)
        return parts.path, dict(parse_qsl(parts.query))

    def get(self, url: str) -> Any:
        path, query = self._split(url)
        return self.signed.get(path, query=query)

    def post(self, url: str) -> Any:
        path, query = self._split(url)
        return self.signed.post(path, query=query)


@pytest.fixture
def client(app: Flask, client: FlaskClient, clock: object) -> Caller:
    """An operator (admin + auditor): creates checkpoints and snapshots, reads everything."""
    return Caller(make_user(app, client, clock, "ops", {Role.ADMIN, Role.AUDITOR}, mfa=False))


def _seed(app: Flask) -> dict[str, int]:
    ledger = app.extensions["strongroom.ledger"]
    ids = accounts(ledger)
    first_batch(ledger, ids)
    return ids


def test_checkpoints_are_created_listed_and_chained(app: Flask, client: Caller) -> None:
    ids = _seed(app)
    head, _ = app.extensions["strongroom.ledger"].head()
    first = client.post("/api/v1/audit/checkpoints")
    assert first.status_code == 201, first.json
    assert first.json["checkpoint"]["last_seq"] == head
    again = client.post("/api/v1/audit/checkpoints")
    assert (again.status_code, again.json["error"]) == (409, "no_new_entries")
    second_batch(app.extensions["strongroom.ledger"], ids)
    second = client.post("/api/v1/audit/checkpoints").json
    assert second["checkpoint"]["prev_checkpoint"] == first.json["hash"]
    listed = client.get("/api/v1/audit/checkpoints").json["checkpoints"]
    assert [c["checkpoint"]["number"] for c in listed] == [1, 2]
    assert client.get("/api/v1/audit/checkpoints/latest").json["hash"] == second["hash"]
    missing = client.get("/api/v1/audit/checkpoints/9")
    assert (missing.status_code, missing.json["code"]) == (404, 4702)


def test_inclusion_and_consistency_proofs_verify_offline(app: Flask, client: Caller) -> None:
    ids = _seed(app)
    first_size, _ = app.extensions["strongroom.ledger"].head()
    client.post("/api/v1/audit/checkpoints")
    second_batch(app.extensions["strongroom.ledger"], ids)
    client.post("/api/v1/audit/checkpoints")
    keys = parse_keys(client.get("/api/v1/audit/keys").json)
    inclusion = client.get("/api/v1/audit/proofs/inclusion?seq=4&checkpoint=1").json
    assert inclusion["tree_size"] == first_size and inclusion["checkpoint"]["number"] == 1
    assert verify_document(inclusion, keys).ok
    latest = client.get("/api/v1/audit/proofs/inclusion?seq=12").json
    assert latest["tree_size"] == first_size + 7 and verify_document(latest, keys).ok
    consistency = client.get("/api/v1/audit/proofs/consistency?first_checkpoint=1&second_checkpoint=2").json
    check = verify_document(consistency, keys)
    assert check.ok and not check.notes, check.problems
    odd = client.get("/api/v1/audit/proofs/consistency?first=3&second=13").json
    assert verify_document(odd, keys).ok
    tampered = {**inclusion, "path": list(reversed(inclusion["path"]))}
    assert not verify_document(tampered, keys).ok


def test_proof_requests_out_of_range_are_refused(app: Flask, client: Caller) -> None:
    _seed(app)
    no_checkpoint = client.get("/api/v1/audit/proofs/inclusion?seq=1")
    assert (no_checkpoint.status_code, no_checkpoint.json["error"]) == (404, "checkpoint_not_found")
    too_big = client.get("/api/v1/audit/proofs/inclusion?seq=1&tree_size=99")
    assert (too_big.status_code, too_big.json["error"]) == (400, "invalid_tree_size")
    beyond = client.get("/api/v1/audit/proofs/inclusion?seq=9&tree_size=8")
    assert beyond.json["error"] == "entry_not_found"
    assert client.get("/api/v1/audit/proofs/inclusion?tree_size=8").status_code == 400


def test_reserves_snapshot_report_and_user_proof(app: Flask, client: Caller) -> None:
    _seed(app)
    snapshot = client.post("/api/v1/audit/reserves/snapshots")
    assert snapshot.status_code == 201, snapshot.json
    body = snapshot.json
    # alice: 1000 - 7 + 3 (the 100 hold is still owed); bob: 500 - 3 + 7 (his hold was voided).
    assert body["liabilities"]["BTC"]["total"] == str(996 + 504)
    assert body["reserves"]["BTC"]["total"] == "1500"
    report = client.get("/api/v1/audit/reserves/report").json
    btc = next(row for row in report["assets"] if row["asset"] == "BTC")
    assert (btc["reserves"], btc["liabilities"], btc["ratio"]) == ("1500", "1500", "1.0000")
    proof = client.get(f"/api/v1/audit/reserves/snapshots/{body['id']}/proof?owner=alice&asset=BTC").json
    key = parse_keys(client.get("/api/v1/audit/keys").json)[("ledger-checkpoint", 1)].public_key
    check = verify_liability_proof(proof, key)
    assert check.ok and check.balance == 996, check.problems
    nobody = client.get(f"/api/v1/audit/reserves/snapshots/{body['id']}/proof?owner=carol&asset=BTC")
    assert (nobody.status_code, nobody.json["error"]) == (404, "liability_not_found")


def test_audit_endpoints_refuse_unauthenticated_and_unprivileged_callers(
    app: Flask, client: Caller, clock: object
) -> None:
    _seed(app)
    raw = client.signed.client
    assert raw.get("/api/v1/audit/checkpoints").status_code == 401
    assert raw.post("/api/v1/audit/checkpoints").status_code == 401
    auditor = Caller(make_user(app, raw, clock, "auditor1", {Role.AUDITOR}, mfa=False))
    assert auditor.get("/api/v1/audit/checkpoints").status_code == 200
    refused = auditor.post("/api/v1/audit/checkpoints")
    assert (refused.status_code, refused.json["error"]) == (403, "permission_denied")
    trader = Caller(make_user(app, raw, clock, "alice", {Role.TRADER}, mfa=False))
    assert trader.get("/api/v1/audit/checkpoints").status_code == 403
    assert trader.post("/api/v1/audit/reserves/snapshots").status_code == 403


def test_trader_gets_only_their_own_liability_proof(app: Flask, client: Caller, clock: object) -> None:
    _seed(app)
    snapshot = client.post("/api/v1/audit/reserves/snapshots").json["id"]
    alice = Caller(make_user(app, client.signed.client, clock, "alice", {Role.TRADER}, mfa=False))
    own = alice.get(f"/api/v1/audit/reserves/snapshots/{snapshot}/proof?owner=alice&asset=BTC")
    assert own.status_code == 200, own.json
    other = alice.get(f"/api/v1/audit/reserves/snapshots/{snapshot}/proof?owner=bob&asset=BTC")
    assert (other.status_code, other.json["error"]) == (404, "not_found")
