"""console auth: argon2id passwords and browser sessions

Revision ID: 0012_console_auth
Revises: 0011_ledger_proposals
Create Date: 2026-12-02 00:00:00

The web console (strongroom/console) logs people in with a password (argon2id
hash), their TOTP code, and a server-side session stored under the SHA-256 of
its cookie token.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_console_auth"
down_revision: str | Sequence[str] | None = "0011_ledger_proposals"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_credentials",
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=256), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.Column("failed_logins", sa.Integer(), nullable=False),
        sa.Column("locked_until_ms", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["username"], ["access_users.username"],
                                name=op.f("fk_console_credentials_username_access_users")),
        sa.PrimaryKeyConstraint("username", name=op.f("pk_console_credentials")),
    )
    op.create_table(
        "console_sessions",
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_seen_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["username"], ["access_users.username"],
                                name=op.f("fk_console_sessions_username_access_users")),
        sa.PrimaryKeyConstraint("token_sha256", name=op.f("pk_console_sessions")),
    )
    op.create_index("ix_console_sessions_username", "console_sessions", ["username"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_console_sessions_username", table_name="console_sessions")
    op.drop_table("console_sessions")
    op.drop_table("console_credentials")
