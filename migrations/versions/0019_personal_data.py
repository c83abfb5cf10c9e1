"""personal data: users' identity records, envelope-encrypted through the keystore

Revision ID: 0019_personal_data
Revises: 0018_deposit_compliance
Create Date: 2026-12-02 02:35:00

See custody/compliance/pii.py and docs/compliance.md.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019_personal_data"
down_revision: str | Sequence[str] | None = "0018_deposit_compliance"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "compliance_personal_data",
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("kek_name", sa.String(length=64), nullable=False),
        sa.Column("kek_version", sa.Integer(), nullable=False),
        sa.Column("wrapped_key", sa.Text(), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("username", name=op.f("pk_compliance_personal_data")),
    )


def downgrade() -> None:
    op.drop_table("compliance_personal_data")
