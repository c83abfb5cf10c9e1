"""Concurrent approvals of one freeze's lift lift it once (SQLite and PostgreSQL, migrated schema)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from custody import freezes
from custody.access.errors import AccessCode, AccessError
from custody.db import make_engine, make_session_factory
from custody.security_log import SecurityEvent

from ...conftest import DATABASES, fresh_database_url

CONCURRENT = 6
NOW_MS = 1_767_225_600_000
FREEZE_ID = "reorg:dep:ethereum:feed:0:a1"


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from fresh_database_url(request, request.param, tmp_path)


def test_freeze_lift_concurrent_approvals_lift_once(database_url: str) -> None:
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        freezes.freeze(session, freeze_id=FREEZE_ID, owner="alice", reason="reorg", raised_by="watcher",
                       now_ms=NOW_MS)
        freezes.request_lift(session, FREEZE_ID, admin="admin0", roles={"admin"}, reason="settled",
                             now_ms=NOW_MS + 1)
    barrier = threading.Barrier(CONCURRENT)
    lifted: list[str] = []
    refused: list[AccessCode] = []
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            barrier.wait(timeout=60)
            with sessions.begin() as session:
                view = freezes.approve_lift(session, FREEZE_ID, admin=f"admin{n}", roles={"admin"},
                                             now_ms=NOW_MS + 10 + n)
                lifted.append(view.lifted_by or "")
        except AccessError as exc:
            refused.append(AccessCode(exc.code))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(1, CONCURRENT + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    with sessions() as session:
        lifts = session.scalar(select(func.count()).select_from(SecurityEvent)
                               .where(SecurityEvent.action == "freeze.lift"))
        view = freezes.get(session, FREEZE_ID)
        assert view is not None
        lifted_by, frozen = view.lifted_by, freezes.is_frozen(session, "alice")
    engine.dispose()
    assert not errors, errors
    assert len(lifted) == 1 and refused == [AccessCode.PROPOSAL_CLOSED] * (CONCURRENT - 1)
    assert lifted_by == lifted[0] and lifted_by is not None and lifted_by.startswith("admin0,")
    assert lifts == 1 and frozen is False
