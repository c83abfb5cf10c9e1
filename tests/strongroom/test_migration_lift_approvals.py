"""Migration 0026_lift_approvals moves halt and freeze lifts into the approvals table, and back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from custody import freezes, withdrawal_halts
from custody.db import make_engine, make_session_factory, scratch_postgres_database
from strongroom.migrate import downgrade, upgrade

from ..conftest import DATABASES, _postgres_admin_url

BEFORE, AFTER = "0025_user_settings", "0026_lift_approvals"
NOW_MS = 1_767_225_600_000
HALTS = [  # id, scope, proposer, proposed_ms, lifted_by, lifted_ms
    ("wh_proposed", "global", "ann", NOW_MS + 1, None, None),
    ("wh_lifted", "chain:bitcoin", "ann", NOW_MS + 2, "bob", NOW_MS + 2),  # same ms: still ordered
    ("wh_duplicate", "chain:bitcoin", None, None, "migration:duplicate", NOW_MS + 3),
]
FREEZES = [  # id, requester, requested_ms, reason, lifted_by, lifted_ms
    ("reorg:dep:bitcoin:aa:n:a0", "ann", NOW_MS + 4, "settled", None, None),
    ("reorg:dep:bitcoin:bb:n:a0", "ann", NOW_MS + 5, "settled", "ann,bob", NOW_MS + 6),
    ("reorg-out:wd:" + "x" * 120 + ":r0", None, None, None, None, None),  # longer than 128
]


@pytest.fixture(params=DATABASES)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (no migrations applied)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrate.db'}"
        return
    with scratch_postgres_database(_postgres_admin_url(), f"sr_mig_{uuid.uuid4().hex[:12]}") as url:
        yield url


def _seed(conn: sa.Connection) -> None:
    for halt_id, scope, proposer, proposed_ms, lifted_by, lifted_ms in HALTS:
        conn.execute(sa.text(
            "INSERT INTO withdrawal_halts (id, scope, reason, raised_by, created_ms, lift_proposed_by, "
            "lift_proposed_ms, lifted_by, lifted_ms) VALUES (:id, :scope, 'r', 'root', :c, :p, :pm, :lb, :lm)"
        ), {"id": halt_id, "scope": scope, "c": NOW_MS, "p": proposer, "pm": proposed_ms, "lb": lifted_by,
            "lm": lifted_ms})
    for freeze_id, requester, requested_ms, reason, lifted_by, lifted_ms in FREEZES:
        conn.execute(sa.text(
            "INSERT INTO account_freezes (id, owner, reason, raised_by, created_ms, lift_requested_by, "
            "lift_requested_ms, lift_reason, lifted_by, lifted_ms) "
            "VALUES (:id, 'alice', 'reorg', 'watcher', :c, :p, :pm, :why, :lb, :lm)"
        ), {"id": freeze_id, "c": NOW_MS, "p": requester, "pm": requested_ms, "why": reason, "lb": lifted_by,
            "lm": lifted_ms})


def test_migration_0025_with_stored_lifts_moves_them_to_approvals_and_back(empty_url: str) -> None:
    upgrade(empty_url, BEFORE)
    engine = make_engine(empty_url)
    with engine.begin() as conn:
        _seed(conn)
    engine.dispose()

    upgrade(empty_url, AFTER)
    engine = make_engine(empty_url)
    with engine.connect() as conn:
        moved = sorted((r.kind, r.subject_id, r.approver, r.created_ms, r.approval) for r in conn.execute(
            sa.text("SELECT * FROM approvals")))
        halt_columns = {c["name"] for c in sa.inspect(conn).get_columns("withdrawal_halts")}
        freeze_columns = {c["name"] for c in sa.inspect(conn).get_columns("account_freezes")}
    with make_session_factory(engine)() as session:
        halts = {v.id: v for v in withdrawal_halts.listing(session, active_only=False)}
        frozen = [freezes.get(session, f[0]) for f in FREEZES]
    engine.dispose()
    assert moved == sorted([
        ("halt_lift", "wh_proposed", "ann", NOW_MS + 1, None),
        ("halt_lift", "wh_lifted", "ann", NOW_MS + 2, None),
        ("halt_lift", "wh_lifted", "bob", NOW_MS + 3, None),
        ("halt_lift", "wh_duplicate", "migration:duplicate", NOW_MS + 3, None),
        ("freeze_lift", FREEZES[0][0], "ann", NOW_MS + 4, None),
        ("freeze_lift", FREEZES[1][0], "ann", NOW_MS + 5, None),
        ("freeze_lift", FREEZES[1][0], "bob", NOW_MS + 6, None),
    ])
    assert not halt_columns & {"lift_proposed_by", "lift_proposed_ms", "lifted_by"}
    assert not freeze_columns & {"lift_requested_by", "lift_requested_ms", "lifted_by"}
    assert (halts["wh_proposed"].lift_proposed_by, halts["wh_proposed"].lifted_by) == ("ann", None)
    assert (halts["wh_lifted"].lift_proposed_by, halts["wh_lifted"].lifted_by) == ("ann", "bob")
    assert halts["wh_duplicate"].lifted_by == "migration:duplicate"
    assert [(v.lift_requested_by, v.lifted_by) for v in frozen if v is not None] == [
        ("ann", None), ("ann", "ann,bob"), (None, None)]

    downgrade(empty_url, BEFORE)
    engine = make_engine(empty_url)
    with engine.connect() as conn:
        halts_back = sorted(tuple(r) for r in conn.execute(sa.text(
            "SELECT id, lift_proposed_by, lift_proposed_ms, lifted_by FROM withdrawal_halts")))
        freezes_back = sorted(tuple(r) for r in conn.execute(sa.text(
            "SELECT id, lift_requested_by, lift_requested_ms, lifted_by FROM account_freezes")))
        left = conn.execute(sa.text("SELECT count(*) FROM approvals")).scalar_one()
    engine.dispose()
    assert halts_back == sorted([("wh_proposed", "ann", NOW_MS + 1, None),
                                 ("wh_lifted", "ann", NOW_MS + 2, "bob"),
                                 ("wh_duplicate", None, None, "migration:duplicate")])
    assert freezes_back == sorted([(FREEZES[0][0], "ann", NOW_MS + 4, None),
                                   (FREEZES[1][0], "ann", NOW_MS + 5, "ann,bob"),
                                   (FREEZES[2][0], None, None, None)])
    assert left == 0
