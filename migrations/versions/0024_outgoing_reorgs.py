"""outgoing reorgs: settled outgoing transactions that left the best chain, and their correction

Revision ID: 0024_outgoing_reorgs
Revises: 0023_freeze_lift
Create Date: 2026-12-02 04:40:00

See custody/wallets/outgoing_reorg.py and docs/wallets.md.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from custody.money import U256

revision: str = "0024_outgoing_reorgs"
down_revision: str | Sequence[str] | None = "0023_freeze_lift"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "outgoing_reorgs",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("transaction_id", sa.String(length=120), nullable=False),
        sa.Column("chain", sa.String(length=16), nullable=False),
        sa.Column("asset", sa.String(length=16), nullable=False),
        sa.Column("amount_minor", U256(), nullable=False),
        sa.Column("txid", sa.String(length=80), nullable=False),
        sa.Column("mined_height", sa.BigInteger(), nullable=False),
        sa.Column("fee_reversed_minor", U256(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("resettled_txid", sa.String(length=80), nullable=True),
        sa.Column("resettled_height", sa.BigInteger(), nullable=True),
        sa.Column("resettle_fee_minor", U256(), nullable=True),
        sa.Column("ledger_synced", sa.Boolean(), nullable=False),
        sa.Column("detected_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("status IN ('reversed', 'resettled', 'reverted')",
                           name=op.f("ck_outgoing_reorgs_status")),
        sa.ForeignKeyConstraint(["transaction_id"], ["chain_transactions.id"],
                                name=op.f("fk_outgoing_reorgs_transaction_id_chain_transactions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outgoing_reorgs")),
    )
    op.create_index("ix_outgoing_reorgs_transaction_id", "outgoing_reorgs", ["transaction_id"])
    op.create_index("ix_outgoing_reorgs_chain_status", "outgoing_reorgs", ["chain", "status"])


def downgrade() -> None:
    op.drop_index("ix_outgoing_reorgs_chain_status", table_name="outgoing_reorgs")
    op.drop_index("ix_outgoing_reorgs_transaction_id", table_name="outgoing_reorgs")
    op.drop_table("outgoing_reorgs")
