"""compliance: sanctions list versions and addresses, alerts, cases and case comments

Revision ID: 0014_compliance
Revises: 0013_account_freezes
Create Date: 2026-12-02 00:10:00

See custody/compliance/ and docs/compliance.md.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_compliance"
down_revision: str | Sequence[str] | None = "0013_account_freezes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "compliance_sanctions_lists",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("source", sa.String(length=256), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("entry_count", sa.Integer(), nullable=False),
        sa.Column("address_count", sa.Integer(), nullable=False),
        sa.Column("entries", sa.Text(), nullable=False),
        sa.Column("diff", sa.Text(), nullable=False),
        sa.Column("loaded_by", sa.String(length=64), nullable=False),
        sa.Column("loaded_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_compliance_sanctions_lists")),
    )
    op.create_table(
        "compliance_sanctioned_addresses",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("family", sa.String(length=16), nullable=False),
        sa.Column("normalised", sa.String(length=256), nullable=False),
        sa.Column("currency", sa.String(length=16), nullable=False),
        sa.Column("ent_num", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["version"], ["compliance_sanctions_lists.version"],
                                name=op.f("fk_compliance_sanctioned_addresses_version_compliance_sanctions_lists")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_compliance_sanctioned_addresses")),
    )
    op.create_index("ix_compliance_sanctioned_addresses_lookup", "compliance_sanctioned_addresses",
                    ["version", "family", "normalised"], unique=False)
    op.create_table(
        "compliance_cases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=256), nullable=False),
        sa.Column("assignee", sa.String(length=64), nullable=True),
        sa.Column("opened_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.Column("closed_by", sa.String(length=64), nullable=True),
        sa.Column("closed_ms", sa.BigInteger(), nullable=True),
        sa.Column("resolution", sa.String(length=32), nullable=True),
        sa.Column("close_reason", sa.String(length=512), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_compliance_cases")),
    )
    op.create_index("ix_compliance_cases_username_state", "compliance_cases", ["username", "state"], unique=False)
    op.create_index("ix_compliance_cases_state", "compliance_cases", ["state"], unique=False)
    op.create_table(
        "compliance_alerts",
        sa.Column("id", sa.String(length=80), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("rule_id", sa.String(length=128), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("subject_kind", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["compliance_cases.id"],
                                name=op.f("fk_compliance_alerts_case_id_compliance_cases")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_compliance_alerts")),
    )
    op.create_index("ix_compliance_alerts_case_id", "compliance_alerts", ["case_id"], unique=False)
    op.create_index("ix_compliance_alerts_username", "compliance_alerts", ["username"], unique=False)
    op.create_table(
        "compliance_case_comments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("author", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["compliance_cases.id"],
                                name=op.f("fk_compliance_case_comments_case_id_compliance_cases")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_compliance_case_comments")),
    )
    op.create_index("ix_compliance_case_comments_case_id", "compliance_case_comments", ["case_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_compliance_case_comments_case_id", table_name="compliance_case_comments")
    op.drop_table("compliance_case_comments")
    op.drop_index("ix_compliance_alerts_username", table_name="compliance_alerts")
    op.drop_index("ix_compliance_alerts_case_id", table_name="compliance_alerts")
    op.drop_table("compliance_alerts")
    op.drop_index("ix_compliance_cases_state", table_name="compliance_cases")
    op.drop_index("ix_compliance_cases_username_state", table_name="compliance_cases")
    op.drop_table("compliance_cases")
    op.drop_index("ix_compliance_sanctioned_addresses_lookup", table_name="compliance_sanctioned_addresses")
    op.drop_table("compliance_sanctioned_addresses")
    op.drop_table("compliance_sanctions_lists")
