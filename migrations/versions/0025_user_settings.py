"""personal settings: one validated JSON document per user (layout, order defaults, theme, units)

Revision ID: 0025_user_settings
Revises: 0024_outgoing_reorgs
Create Date: 2026-12-02 04:30:00

strongroom/console/preferences.py validates every field before a document is
stored; docs/console.md ("Personal settings") lists the fields.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025_user_settings"
down_revision: str | Sequence[str] | None = "0024_outgoing_reorgs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "user_settings",
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("document", sa.String(length=2048), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["username"], ["access_users.username"],
                                name=op.f("fk_user_settings_username_access_users")),
        sa.PrimaryKeyConstraint("username", name=op.f("pk_user_settings")),
    )


def downgrade() -> None:
    op.drop_table("user_settings")
