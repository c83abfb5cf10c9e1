"""account freezes: an owner's withdrawals stop after a deposit is reorganised out once credited

Revision ID: 0013_account_freezes
Revises: 0012_console_auth
Create Date: 2026-12-01 23:50:00

See custody/freezes.py and docs/wallets.md (reorgs after settlement).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_account_freezes"
down_revision: str | Sequence[str] | None = "0012_console_auth"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "account_freezes",
        sa.Column("id", sa.String(length=160), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=256), nullable=False),
        sa.Column("raised_by", sa.String(length=64), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("lifted_by", sa.String(length=130), nullable=True),
        sa.Column("lifted_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_account_freezes")),
    )
    op.create_index("ix_account_freezes_owner", "account_freezes", ["owner"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_account_freezes_owner", table_name="account_freezes")
    op.drop_table("account_freezes")
