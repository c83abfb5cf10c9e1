"""account freezes: the pending two-admin lift request (who, when, why)

Revision ID: 0023_freeze_lift
Revises: 0022_halt_unique
Create Date: 2026-12-02 03:30:00

Operators lift a freeze in two steps (custody/freezes.py): a first admin
requests it with a reason, a second, different admin approves it. The request
lives on the freeze row (three nullable columns) rather than in the approvals
table, whose kind CHECK would need a table rebuild on SQLite.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023_freeze_lift"
down_revision: str | Sequence[str] | None = "0022_halt_unique"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("account_freezes") as batch:
        batch.add_column(sa.Column("lift_requested_by", sa.String(64), nullable=True))
        batch.add_column(sa.Column("lift_requested_ms", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("lift_reason", sa.String(256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("account_freezes") as batch:
        batch.drop_column("lift_reason")
        batch.drop_column("lift_requested_ms")
        batch.drop_column("lift_requested_by")
