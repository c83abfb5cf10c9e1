"""cold bundles and their imported signatures; signed refill approvals

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-03 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import custody.money

revision: str = "0007"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "wallet_refill_approvals",
        sa.Column("approval_id", sa.String(length=64), nullable=False),
        sa.Column("proposal_id", sa.String(length=120), nullable=False),
        sa.Column("approver", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=128), nullable=False),
        sa.Column("approval", sa.LargeBinary(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["proposal_id"],
            ["wallet_refill_proposals.id"],
            name=op.f("fk_wallet_refill_approvals_proposal_id_wallet_refill_proposals"),
        ),
        sa.PrimaryKeyConstraint("approval_id", name=op.f("pk_wallet_refill_approvals")),
    )
    op.create_index(
        "ix_wallet_refill_approvals_proposal_id", "wallet_refill_approvals", ["proposal_id"], unique=False
    )
    op.create_table(
        "cold_bundles",
        sa.Column("bundle_id", sa.String(length=128), nullable=False),
        sa.Column("chain", sa.String(length=16), nullable=False),
        sa.Column("request_kind", sa.String(length=16), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("bundle", sa.LargeBinary(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("source_wallet_id", sa.Integer(), nullable=False),
        sa.Column("asset", sa.String(length=16), nullable=False),
        sa.Column("amount_minor", custody.money.U256(), nullable=False),
        sa.Column("destination", sa.String(length=256), nullable=False),
        sa.Column("debit_account_id", sa.BigInteger(), nullable=False),
        sa.Column("credit_account_id", sa.BigInteger(), nullable=False),
        sa.Column("gas_account_id", sa.BigInteger(), nullable=False),
        sa.Column("reserve_transfer_id", sa.String(length=144), nullable=False),
        sa.Column("hold_transfer_id", sa.String(length=144), nullable=True),
        sa.Column("raw_transaction", sa.Text(), nullable=True),
        sa.Column("txid", sa.String(length=80), nullable=True),
        sa.Column("broadcast_height", sa.BigInteger(), nullable=True),
        sa.Column("mined_height", sa.BigInteger(), nullable=True),
        sa.Column("fee_paid_minor", custody.money.U256(), nullable=True),
        sa.Column("note", sa.String(length=256), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["source_wallet_id"], ["wallets.id"], name=op.f("fk_cold_bundles_source_wallet_id_wallets")
        ),
        sa.PrimaryKeyConstraint("bundle_id", name=op.f("pk_cold_bundles")),
    )
    op.create_index(
        "uq_cold_bundles_request_attempt",
        "cold_bundles",
        ["request_kind", "request_id", "attempt"],
        unique=True,
    )
    op.create_index("ix_cold_bundles_state", "cold_bundles", ["state"], unique=False)
    op.create_table(
        "cold_bundle_signatures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("bundle_id", sa.String(length=128), nullable=False),
        sa.Column("signer_id", sa.String(length=128), nullable=False),
        sa.Column("signed", sa.LargeBinary(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("imported_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["bundle_id"],
            ["cold_bundles.bundle_id"],
            name=op.f("fk_cold_bundle_signatures_bundle_id_cold_bundles"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cold_bundle_signatures")),
    )
    op.create_index(
        "uq_cold_bundle_signatures_bundle_signer",
        "cold_bundle_signatures",
        ["bundle_id", "signer_id"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_cold_bundle_signatures_bundle_signer", table_name="cold_bundle_signatures")
    op.drop_table("cold_bundle_signatures")
    op.drop_index("ix_cold_bundles_state", table_name="cold_bundles")
    op.drop_index("uq_cold_bundles_request_attempt", table_name="cold_bundles")
    op.drop_table("cold_bundles")
    op.drop_index("ix_wallet_refill_approvals_proposal_id", table_name="wallet_refill_approvals")
    op.drop_table("wallet_refill_approvals")
