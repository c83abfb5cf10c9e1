"""kyc reviews: tier requests decided by a provider (manual review by default), provider callback events

Revision ID: 0017_kyc_reviews
Revises: 0016_lifecycle_states
Create Date: 2026-12-02 00:20:00

See custody/compliance/kyc.py and docs/compliance.md.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017_kyc_reviews"
down_revision: str | Sequence[str] | None = "0016_lifecycle_states"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "compliance_kyc_reviews",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("requested_tier", sa.Integer(), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=512), nullable=True),
        sa.Column("decided_by", sa.String(length=64), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_compliance_kyc_reviews")),
    )
    op.create_index("ix_compliance_kyc_reviews_username", "compliance_kyc_reviews", ["username"], unique=False)
    op.create_index("ix_compliance_kyc_reviews_state", "compliance_kyc_reviews", ["state"], unique=False)
    op.create_table(
        "compliance_kyc_provider_events",
        sa.Column("id", sa.String(length=160), nullable=False),
        sa.Column("review_id", sa.Integer(), nullable=False),
        sa.Column("body_sha256", sa.String(length=64), nullable=False),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["review_id"], ["compliance_kyc_reviews.id"],
                                name=op.f("fk_compliance_kyc_provider_events_review_id_compliance_kyc_reviews")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_compliance_kyc_provider_events")),
    )


def downgrade() -> None:
    op.drop_table("compliance_kyc_provider_events")
    op.drop_index("ix_compliance_kyc_reviews_state", table_name="compliance_kyc_reviews")
    op.drop_index("ix_compliance_kyc_reviews_username", table_name="compliance_kyc_reviews")
    op.drop_table("compliance_kyc_reviews")
