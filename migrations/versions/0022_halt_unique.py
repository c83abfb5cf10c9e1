"""withdrawal halts: at most one active halt per scope (a partial unique index)

Revision ID: 0022_halt_unique
Revises: 0021_approvals
Create Date: 2026-12-02 02:30:00

Two admins halting the same scope at once on PostgreSQL could each insert a
row (``SELECT ... FOR UPDATE`` locks no row that does not exist yet). The
index makes the database refuse the second; custody/withdrawal_halts.py then
returns the halt that won. Duplicates already stored are closed first: the
oldest active halt of a scope stays in force, the later ones are marked lifted
by ``migration:duplicate`` (the scope stays halted, so nothing is released).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022_halt_unique"
down_revision: str | Sequence[str] | None = "0021_approvals"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE = sa.text("lifted_ms IS NULL")


def upgrade() -> None:
    bind = op.get_bind()
    active = bind.execute(sa.text(
        "SELECT id, scope, created_ms FROM withdrawal_halts WHERE lifted_ms IS NULL ORDER BY created_ms, id"
    )).all()
    kept: dict[str, int] = {}
    for row in active:
        if row.scope not in kept:
            kept[row.scope] = row.created_ms
            continue
        bind.execute(sa.text(
            "UPDATE withdrawal_halts SET lifted_by = 'migration:duplicate', lifted_ms = :at WHERE id = :id"
        ), {"at": row.created_ms, "id": row.id})
    op.create_index("uq_withdrawal_halts_active_scope", "withdrawal_halts", ["scope"], unique=True,
                    sqlite_where=ACTIVE, postgresql_where=ACTIVE)


def downgrade() -> None:
    op.drop_index("uq_withdrawal_halts_active_scope", table_name="withdrawal_halts")
