"""alerts: rules per user, fired notifications, a webhook per user (secret sealed), deliveries

Revision ID: 0027_alerts
Revises: 0026_lift_approvals
Create Date: 2026-12-02 05:00:00

strongroom/console/alerts.py evaluates the rules over the event flow; a fired
alert is a notification row, a message on the private stream's ``alerts``
channel and, for a rule with ``webhook``, a delivery (pending -> delivered, or
dead after the last retry). The webhook secret is stored only sealed by the
keystore (docs/console.md, "Alerts").
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0027_alerts"
down_revision: str | Sequence[str] | None = "0026_lift_approvals"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _user_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["username"], ["access_users.username"],
                                   name=op.f(f"fk_{table}_username_access_users"))


def upgrade() -> None:
    op.create_table(
        "alert_rules",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("params", sa.String(length=512), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("deleted_ms", sa.BigInteger(), nullable=True),
        _user_fk("alert_rules"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_rules")),
    )
    op.create_index("ix_alert_rules_username", "alert_rules", ["username"], unique=False)
    op.create_table(
        "alert_notifications",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("rule_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("message", sa.String(length=512), nullable=False),
        sa.Column("data", sa.String(length=4096), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        _user_fk("alert_notifications"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_notifications")),
    )
    op.create_index("ix_alert_notifications_username_id", "alert_notifications", ["username", "id"],
                    unique=False)
    op.create_table(
        "alert_webhooks",
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("url", sa.String(length=512), nullable=False),
        sa.Column("secret_sealed", sa.String(length=512), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        _user_fk("alert_webhooks"),
        sa.PrimaryKeyConstraint("username", name=op.f("pk_alert_webhooks")),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("idempotency_key", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("body", sa.String(length=4096), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_error", sa.String(length=512), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        _user_fk("webhook_deliveries"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_webhook_deliveries_idempotency_key")),
    )
    op.create_index("ix_webhook_deliveries_state_next", "webhook_deliveries", ["state", "next_attempt_ms"],
                    unique=False)
    op.create_index("ix_webhook_deliveries_username", "webhook_deliveries", ["username"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_username", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_state_next", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("alert_webhooks")
    op.drop_index("ix_alert_notifications_username_id", table_name="alert_notifications")
    op.drop_table("alert_notifications")
    op.drop_index("ix_alert_rules_username", table_name="alert_rules")
    op.drop_table("alert_rules")
