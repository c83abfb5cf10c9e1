"""ledger proposals: manual ledger operations need a second admin

Revision ID: 0011_ledger_proposals
Revises: 0010_ledger_account_terms
Create Date: 2026-12-01 23:40:00

A manual transfer, mint or correction is stored as a proposal by one admin and
applied only when another admin approves it with MFA (custody.access.ledger_ops).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_ledger_proposals"
down_revision: str | Sequence[str] | None = "0010_ledger_account_terms"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ledger_proposals",
        sa.Column("proposal_id", sa.String(length=128), nullable=False),
        sa.Column("proposer", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=256), nullable=False),
        sa.Column("transfers", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("decided_by", sa.String(length=64), nullable=True),
        sa.Column("decided_ms", sa.BigInteger(), nullable=True),
        sa.Column("results", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["proposer"], ["access_users.username"],
                                name=op.f("fk_ledger_proposals_proposer_access_users")),
        sa.PrimaryKeyConstraint("proposal_id", name=op.f("pk_ledger_proposals")),
    )
    op.create_index("ix_ledger_proposals_state", "ledger_proposals", ["state"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_ledger_proposals_state", table_name="ledger_proposals")
    op.drop_table("ledger_proposals")
