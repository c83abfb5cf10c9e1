"""bitcoin: UTXO set, cold multisig descriptors, cold spends (PSBTs)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "btc_utxos",
        sa.Column("id", sa.String(length=120), nullable=False),
        sa.Column("chain", sa.String(length=16), nullable=False),
        sa.Column("wallet_id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=128), nullable=False),
        sa.Column("txid", sa.String(length=80), nullable=False),
        sa.Column("vout", sa.Integer(), nullable=False),
        sa.Column("amount_sat", sa.BigInteger(), nullable=False),
        sa.Column("block_height", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.String(length=80), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("locked_by", sa.String(length=120), nullable=True),
        sa.Column("spent_txid", sa.String(length=80), nullable=True),
        sa.Column("spent_height", sa.BigInteger(), nullable=True),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["wallet_id"], ["wallets.id"], name=op.f("fk_btc_utxos_wallet_id_wallets")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_btc_utxos")),
    )
    op.create_index("ix_btc_utxos_wallet_status", "btc_utxos", ["wallet_id", "status"], unique=False)
    op.create_index("ix_btc_utxos_locked_by", "btc_utxos", ["locked_by"], unique=False)
    op.create_table(
        "btc_cold_wallets",
        sa.Column("wallet_id", sa.Integer(), nullable=False),
        sa.Column("network", sa.String(length=16), nullable=False),
        sa.Column("descriptor", sa.Text(), nullable=False),
        sa.Column("next_change", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["wallets.id"], name=op.f("fk_btc_cold_wallets_wallet_id_wallets")
        ),
        sa.PrimaryKeyConstraint("wallet_id", name=op.f("pk_btc_cold_wallets")),
    )
    op.create_table(
        "btc_cold_spends",
        sa.Column("id", sa.String(length=120), nullable=False),
        sa.Column("record_id", sa.String(length=120), nullable=False),
        sa.Column("wallet_id", sa.Integer(), nullable=False),
        sa.Column("destination", sa.String(length=128), nullable=False),
        sa.Column("amount_sat", sa.BigInteger(), nullable=False),
        sa.Column("fee_sat", sa.BigInteger(), nullable=False),
        sa.Column("change_index", sa.Integer(), nullable=True),
        sa.Column("change_address", sa.String(length=128), nullable=True),
        sa.Column("change_path", sa.String(length=64), nullable=True),
        sa.Column("psbt", sa.Text(), nullable=False),
        sa.Column("bundle", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("txid", sa.String(length=80), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["wallets.id"], name=op.f("fk_btc_cold_spends_wallet_id_wallets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_btc_cold_spends")),
    )


def downgrade() -> None:
    op.drop_table("btc_cold_spends")
    op.drop_table("btc_cold_wallets")
    op.drop_index("ix_btc_utxos_locked_by", table_name="btc_utxos")
    op.drop_index("ix_btc_utxos_wallet_status", table_name="btc_utxos")
    op.drop_table("btc_utxos")
