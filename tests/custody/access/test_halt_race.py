"""Concurrent halts of one scope leave exactly one active halt (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from custody import withdrawal_halts
from custody.db import make_engine, make_session_factory
from custody.withdrawal_halts import WithdrawalHalt

from ...conftest import DATABASES, fresh_database_url

CONCURRENT = 6
NOW_MS = 1_767_225_600_000


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from fresh_database_url(request, request.param, tmp_path)


def test_withdrawal_halt_concurrent_halts_of_one_scope_leave_one_active_row(database_url: str) -> None:
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    barrier = threading.Barrier(CONCURRENT)
    ids: list[str] = []
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            barrier.wait(timeout=60)
            with sessions.begin() as session:
                view = withdrawal_halts.halt(session, scope="chain:bitcoin", reason=f"incident {n}",
                                             admin=f"admin{n}", now_ms=NOW_MS + n)
                ids.append(view.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(CONCURRENT)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    with sessions() as session:
        active = session.scalar(select(func.count()).select_from(WithdrawalHalt)
                                .where(WithdrawalHalt.lifted_ms.is_(None)))
    engine.dispose()
    assert active == 1
    assert len(ids) == CONCURRENT and len(set(ids)) == 1


def test_withdrawal_halt_second_active_row_refused_by_the_database(database_url: str) -> None:
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        withdrawal_halts.halt(session, scope="global", reason="first", admin="admin1", now_ms=NOW_MS)
    with pytest.raises(IntegrityError), sessions.begin() as session:  # An insider's direct insert.
        session.add(WithdrawalHalt(id="wh_insider", scope="global", reason="dup", raised_by="eve",
                                   created_ms=NOW_MS))
    engine.dispose()
