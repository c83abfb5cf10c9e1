"""travel rule: withdrawals' IVMS101 originator/beneficiary data, envelope-encrypted

Revision ID: 0020_travel_rule
Revises: 0019_personal_data
Create Date: 2026-12-02 02:55:00

See custody/compliance/travel_rule.py and docs/compliance.md.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020_travel_rule"
down_revision: str | Sequence[str] | None = "0019_personal_data"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "compliance_travel_rule",
        sa.Column("withdrawal_id", sa.String(length=120), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("kek_name", sa.String(length=64), nullable=False),
        sa.Column("kek_version", sa.Integer(), nullable=False),
        sa.Column("wrapped_key", sa.Text(), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("withdrawal_id", name=op.f("pk_compliance_travel_rule")),
    )
    op.create_index("ix_compliance_travel_rule_username", "compliance_travel_rule", ["username"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_compliance_travel_rule_username", table_name="compliance_travel_rule")
    op.drop_table("compliance_travel_rule")
