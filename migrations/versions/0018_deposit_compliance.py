"""deposit compliance: each incoming deposit's decision (credited, held over the KYC tier cap, quarantined)

Revision ID: 0018_deposit_compliance
Revises: 0017_kyc_reviews
Create Date: 2026-12-02 02:10:00

See custody/compliance/deposits.py and docs/compliance.md.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import custody.money

revision: str = "0018_deposit_compliance"
down_revision: str | Sequence[str] | None = "0017_kyc_reviews"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "compliance_deposits",
        sa.Column("deposit_id", sa.String(length=120), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("asset", sa.String(length=16), nullable=False),
        sa.Column("amount_minor", custody.money.U256(), nullable=False),
        sa.Column("usd_cents", sa.BigInteger(), nullable=True),
        sa.Column("sender", sa.String(length=256), nullable=False),
        sa.Column("tier", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(length=24), nullable=False),
        sa.Column("reason", sa.String(length=512), nullable=False),
        sa.Column("alert_id", sa.String(length=80), nullable=True),
        sa.Column("decided_ms", sa.BigInteger(), nullable=False),
        sa.Column("released_by", sa.String(length=64), nullable=True),
        sa.Column("released_ms", sa.BigInteger(), nullable=True),
        sa.Column("release_reason", sa.String(length=512), nullable=True),
        sa.PrimaryKeyConstraint("deposit_id", name=op.f("pk_compliance_deposits")),
    )
    op.create_index("ix_compliance_deposits_owner_decided", "compliance_deposits", ["owner", "decided_ms"],
                    unique=False)
    op.create_index("ix_compliance_deposits_decision", "compliance_deposits", ["decision"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_compliance_deposits_decision", table_name="compliance_deposits")
    op.drop_index("ix_compliance_deposits_owner_decided", table_name="compliance_deposits")
    op.drop_table("compliance_deposits")
