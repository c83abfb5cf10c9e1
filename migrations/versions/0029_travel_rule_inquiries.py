"""travel rule: inquiries to counterparty VASPs (TRP-style) that hold a withdrawal until they answer

Revision ID: 0029_travel_rule_inquiries
Revises: 0028_scan_cursors
Create Date: 2026-12-02 05:05:00

See custody/compliance/trp.py and docs/compliance.md.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0029_travel_rule_inquiries"
down_revision: str | Sequence[str] | None = "0028_scan_cursors"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "compliance_travel_rule_inquiries",
        sa.Column("withdrawal_id", sa.String(length=120), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("vasp_lei", sa.String(length=20), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("deadline_ms", sa.BigInteger(), nullable=False),
        sa.Column("sent_ms", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.String(length=256), nullable=True),
        sa.Column("txid", sa.String(length=128), nullable=True),
        sa.Column("notified_ms", sa.BigInteger(), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("withdrawal_id", name=op.f("pk_compliance_travel_rule_inquiries")),
    )
    op.create_index("ix_compliance_travel_rule_inquiries_state", "compliance_travel_rule_inquiries", ["state"],
                    unique=False)


def downgrade() -> None:
    op.drop_index("ix_compliance_travel_rule_inquiries_state", table_name="compliance_travel_rule_inquiries")
    op.drop_table("compliance_travel_rule_inquiries")
