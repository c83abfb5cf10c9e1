"""Alembic migrations produce exactly the models' schema and round-trip."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from custody.db import make_engine
from strongroom.migrate import downgrade, upgrade
from strongroom.models import Base


def test_migrations_match_models_exactly(database_url: str) -> None:
    engine = make_engine(database_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []


def test_downgrade_to_base_and_upgrade_again_round_trips(database_url: str) -> None:
    downgrade(database_url, "base")
    engine = make_engine(database_url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    upgrade(database_url)
    engine = make_engine(database_url)
    assert {"ledger_accounts", "ledger_transfers", "ledger_head"} <= set(
        inspect(engine).get_table_names())
    engine.dispose()
