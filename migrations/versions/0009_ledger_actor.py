"""ledger entries record their actor (entry format version 2)

Revision ID: 0009_ledger_actor
Revises: 0008
Create Date: 2026-12-01 22:30:00

Entry format version 2 adds ``actor`` to the hash-chained bytes of every entry.
Version 1 entries cannot be given an actor without breaking their chain hashes
(and the signed checkpoints over them), and no version 1 data exists outside
tests, so this revision refuses to run on a journal that already has entries:
re-create such a database instead (docs/ledger-format.md).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_ledger_actor"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTOR_MAX_LEN = 136


def upgrade() -> None:
    count = op.get_bind().execute(sa.text("SELECT COUNT(*) FROM ledger_transfers")).scalar_one()
    if count:
        raise RuntimeError(
            f"ledger_transfers holds {count} entries in format version 1; entry format version 2 "
            "records an actor in every hash-chained entry and cannot rewrite signed history: "
            "re-create this database (no production data exists in version 1)")
    # A plain ADD COLUMN (not a batch table copy) keeps SQLite's append-only triggers; the
    # server default only satisfies SQLite's NOT NULL rule on ADD COLUMN: the table is empty
    # and the ledger always writes an actor.
    op.add_column("ledger_transfers", sa.Column("actor", sa.String(length=ACTOR_MAX_LEN),
                                                nullable=False, server_default=""))
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("ledger_transfers", "actor", server_default=None)


def downgrade() -> None:
    count = op.get_bind().execute(sa.text("SELECT COUNT(*) FROM ledger_transfers")).scalar_one()
    if count:
        raise RuntimeError(f"ledger_transfers holds {count} version 2 entries; they cannot be "
                           "turned back into version 1 entries")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_column("ledger_transfers", "actor")
    else:
        # SQLite 3.35+ drops a column in place, which keeps the append-only triggers.
        op.execute("ALTER TABLE ledger_transfers DROP COLUMN actor")
