"""withdrawal halts: per-chain halt and global freeze, lifted by two admins

Revision ID: 0015_withdrawal_halts
Revises: 0014_compliance
Create Date: 2026-12-02 00:05:00

See custody/withdrawal_halts.py and docs/operations.md.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_withdrawal_halts"
down_revision: str | Sequence[str] | None = "0014_compliance"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "withdrawal_halts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("scope", sa.String(length=40), nullable=False),
        sa.Column("reason", sa.String(length=256), nullable=False),
        sa.Column("raised_by", sa.String(length=64), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("lift_proposed_by", sa.String(length=64), nullable=True),
        sa.Column("lift_proposed_ms", sa.BigInteger(), nullable=True),
        sa.Column("lifted_by", sa.String(length=64), nullable=True),
        sa.Column("lifted_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_withdrawal_halts")),
    )
    op.create_index("ix_withdrawal_halts_scope", "withdrawal_halts", ["scope"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_withdrawal_halts_scope", table_name="withdrawal_halts")
    op.drop_table("withdrawal_halts")
