"""Migration 0021_approvals moves every stored approval into the one approvals table, and back."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody.db import make_engine, scratch_postgres_database
from policies.approval import ApprovalSubject, SubjectKind, sign_approval
from strongroom.migrate import downgrade, upgrade

from ..conftest import DATABASES, _postgres_admin_url

BEFORE, AFTER = "0020_travel_rule", "0021_approvals"
NOW_MS = 1_767_225_600_000


@pytest.fixture(params=DATABASES)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (no migrations applied)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrate.db'}"
        return
    with scratch_postgres_database(_postgres_admin_url(), f"sr_mig_{uuid.uuid4().hex[:12]}") as url:
        yield url


def _dummy(column: sa.Column[Any]) -> object:
    if isinstance(column.type, sa.LargeBinary):
        return b"\x00"
    if isinstance(column.type, (sa.Integer, sa.BigInteger, sa.Numeric)):
        return 1
    return "x"


def _insert(conn: sa.Connection, name: str, **values: object) -> None:
    """Insert one row, filling every required column the test does not care about."""
    table = sa.Table(name, sa.MetaData(), autoload_with=conn)
    row = {c.name: _dummy(c) for c in table.columns
           if not c.nullable and c.autoincrement is not True and c.server_default is None}
    row.update(values)
    conn.execute(table.insert().values(**row))


def _approval(approver: str, subject_id: str, kind: SubjectKind) -> bytes:
    transfer = {} if kind is SubjectKind.POLICY_CHANGE else {
        "asset": "BTC", "amount_minor": 5, "destination": "bc1qmigrate"}
    policy = {"document_sha256": "ab" * 32} if kind is SubjectKind.POLICY_CHANGE else {}
    subject = ApprovalSubject(kind=kind, subject_id=subject_id, policy_id="default", policy_version=1,
                              **transfer, **policy)  # type: ignore[arg-type]
    return sign_approval(Ed25519PrivateKey.generate(), approver_id=approver, key_id=f"{approver}-k1",
                         subject=subject, signed_at_ms=NOW_MS, expires_at_ms=NOW_MS + 1).to_bytes()


def _seed(conn: sa.Connection) -> dict[str, bytes]:
    signed = {"w": _approval("tina", "w-1", SubjectKind.WITHDRAWAL),
              "r": _approval("tom", "refill:ETH:1", SubjectKind.REFILL),
              "p": _approval("ada", "pc-1", SubjectKind.POLICY_CHANGE)}
    _insert(conn, "access_users", username="alice", roles="trader")
    _insert(conn, "withdrawal_requests", id="w-1", username="alice", state="pending_approval",
            amount="5", amount_usd_cents="5")
    _insert(conn, "withdrawal_approvals", approval_id="a" * 64, withdrawal_id="w-1", approver="tina",
            key_id="tina-k1", approval=signed["w"], created_ms=NOW_MS)
    _insert(conn, "wallets", id=7)
    _insert(conn, "wallet_refill_proposals", id="refill:ETH:1", source_wallet_id=7, status="proposed",
            amount_minor="5", proposed_by="system", approvals=json.dumps([
                {"approver": "old-timer", "at_ms": NOW_MS - 5, "signed": False},
                {"approver": "tom", "at_ms": NOW_MS, "signed": True}]))
    _insert(conn, "wallet_refill_approvals", approval_id="b" * 64, proposal_id="refill:ETH:1", approver="tom",
            key_id="tom-k1", approval=signed["r"], created_ms=NOW_MS)
    _insert(conn, "policy_change_proposals", proposal_id="pc-1", proposer="alice", state="open")
    _insert(conn, "policy_change_approvals", approval_id="c" * 64, proposal_id="pc-1", approver="ada",
            approval=signed["p"], created_ms=NOW_MS)
    _insert(conn, "ledger_proposals", proposal_id="lp-1", proposer="alice", state="executed",
            decided_by="bob", decided_ms=NOW_MS + 9)
    _insert(conn, "ledger_proposals", proposal_id="lp-2", proposer="alice", state="rejected",
            decided_by="carl", decided_ms=NOW_MS + 10)
    return signed


def test_migration_0021_with_stored_approvals_moves_every_row_and_back(empty_url: str) -> None:
    upgrade(empty_url, BEFORE)
    engine = make_engine(empty_url)
    with engine.begin() as conn:
        signed = _seed(conn)
    engine.dispose()

    upgrade(empty_url, AFTER)
    engine = make_engine(empty_url)
    with engine.connect() as conn:
        moved = {(r.kind, r.subject_id, r.approver, r.key_id, r.approval and bytes(r.approval))
                 for r in conn.execute(sa.text("SELECT * FROM approvals"))}
        tables = set(sa.inspect(conn).get_table_names())
        refill_columns = {c["name"] for c in sa.inspect(conn).get_columns("wallet_refill_proposals")}
    engine.dispose()
    assert moved == {
        ("withdrawal", "w-1", "tina", "tina-k1", signed["w"]),
        ("refill", "refill:ETH:1", "tom", "tom-k1", signed["r"]),
        ("refill", "refill:ETH:1", "old-timer", None, None),
        ("policy_change", "pc-1", "ada", "ada-k1", signed["p"]),  # key id read from the signed bytes
        ("ledger_proposal", "lp-1", "bob", None, None),  # the rejecter of lp-2 approved nothing
    }
    assert not tables & {"withdrawal_approvals", "wallet_refill_approvals", "policy_change_approvals"}
    assert "approvals" not in refill_columns

    downgrade(empty_url, BEFORE)
    engine = make_engine(empty_url)
    with engine.connect() as conn:
        back = conn.execute(sa.text("SELECT approver, key_id FROM withdrawal_approvals")).all()
        listed = conn.execute(sa.text("SELECT approvals FROM wallet_refill_proposals")).scalar_one()
        policy = conn.execute(sa.text("SELECT approver FROM policy_change_approvals")).all()
    engine.dispose()
    assert [tuple(r) for r in back] == [("tina", "tina-k1")]
    assert [(a["approver"], a["signed"]) for a in json.loads(listed)] == [("old-timer", False), ("tom", True)]
    assert [tuple(r) for r in policy] == [("ada",)]
