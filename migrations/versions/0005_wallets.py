"""wallets, addresses, limits, chain blocks, deposits, outgoing transactions, nonces, refills, reconciliation

Revision ID: 0005
Revises: 0001
Create Date: 2026-11-26 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import custody.money

revision: str = "0005"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "wallets",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("chain", sa.String(length=16), nullable=False),
        sa.Column("temperature", sa.String(length=16), nullable=False),
        sa.Column("kek_name", sa.String(length=64), nullable=True),
        sa.Column("sealed_seed", sa.Text(), nullable=True),
        sa.Column("account_path", sa.String(length=64), nullable=True),
        sa.Column("account_xpub", sa.String(length=200), nullable=True),
        sa.Column("next_index", sa.Integer(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wallets")),
    )
    op.create_index("uq_wallets_name", "wallets", ["name"], unique=True)
    op.create_table(
        "wallet_addresses",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("wallet_id", sa.Integer(), nullable=False),
        sa.Column("chain", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=128), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=True),
        sa.Column("path", sa.String(length=64), nullable=True),
        sa.Column("derivation_index", sa.Integer(), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["wallet_id"], ["wallets.id"], name=op.f("fk_wallet_addresses_wallet_id_wallets")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wallet_addresses")),
    )
    op.create_index("uq_wallet_addresses_chain_address", "wallet_addresses", ["chain", "address"], unique=True)
    op.create_index("uq_wallet_addresses_wallet_owner", "wallet_addresses", ["wallet_id", "owner"], unique=True)
    op.create_table(
        "wallet_limits",
        sa.Column("chain", sa.String(length=16), nullable=False),
        sa.Column("asset", sa.String(length=16), nullable=False),
        sa.Column("floor_minor", custody.money.U256(), nullable=False),
        sa.Column("target_minor", custody.money.U256(), nullable=False),
        sa.Column("ceiling_minor", custody.money.U256(), nullable=False),
        sa.PrimaryKeyConstraint("chain", "asset", name=op.f("pk_wallet_limits")),
    )
    op.create_table(
        "chain_blocks",
        sa.Column("chain", sa.String(length=16), nullable=False),
        sa.Column("height", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=80), nullable=False),
        sa.Column("parent_hash", sa.String(length=80), nullable=False),
        sa.PrimaryKeyConstraint("chain", "height", name=op.f("pk_chain_blocks")),
    )
    op.create_table(
        "chain_deposits",
        sa.Column("id", sa.String(length=120), nullable=False),
        sa.Column("chain", sa.String(length=16), nullable=False),
        sa.Column("asset", sa.String(length=16), nullable=False),
        sa.Column("txid", sa.String(length=80), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=128), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("wallet_id", sa.Integer(), nullable=False),
        sa.Column("amount_minor", custody.money.U256(), nullable=False),
        sa.Column("block_height", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.String(length=80), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("ledger_synced", sa.Boolean(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["wallet_id"], ["wallets.id"], name=op.f("fk_chain_deposits_wallet_id_wallets")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chain_deposits")),
    )
    op.create_index("ix_chain_deposits_owner", "chain_deposits", ["owner"], unique=False)
    op.create_index("ix_chain_deposits_status", "chain_deposits", ["status"], unique=False)
    op.create_table(
        "chain_transactions",
        sa.Column("id", sa.String(length=120), nullable=False),
        sa.Column("chain", sa.String(length=16), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("asset", sa.String(length=16), nullable=False),
        sa.Column("amount_minor", custody.money.U256(), nullable=False),
        sa.Column("source_wallet_id", sa.Integer(), nullable=False),
        sa.Column("source_address", sa.String(length=128), nullable=False),
        sa.Column("source_path", sa.String(length=64), nullable=False),
        sa.Column("destination", sa.String(length=128), nullable=False),
        sa.Column("debit_account_id", sa.BigInteger(), nullable=False),
        sa.Column("credit_account_id", sa.BigInteger(), nullable=False),
        sa.Column("gas_account_id", sa.BigInteger(), nullable=False),
        sa.Column("hold_transfer_id", sa.String(length=120), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("note", sa.String(length=256), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=True),
        sa.Column("gas_limit", sa.BigInteger(), nullable=False),
        sa.Column("current_txid", sa.String(length=80), nullable=True),
        sa.Column("broadcast_height", sa.BigInteger(), nullable=True),
        sa.Column("mined_txid", sa.String(length=80), nullable=True),
        sa.Column("mined_height", sa.BigInteger(), nullable=True),
        sa.Column("fee_paid_minor", custody.money.U256(), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["source_wallet_id"], ["wallets.id"],
                                name=op.f("fk_chain_transactions_source_wallet_id_wallets")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chain_transactions")),
    )
    op.create_index("ix_chain_transactions_status", "chain_transactions", ["status"], unique=False)
    op.create_table(
        "chain_transaction_attempts",
        sa.Column("txid", sa.String(length=80), nullable=False),
        sa.Column("transaction_id", sa.String(length=120), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column("max_fee_per_gas", custody.money.U256(), nullable=False),
        sa.Column("max_priority_fee_per_gas", custody.money.U256(), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["transaction_id"], ["chain_transactions.id"],
                                name=op.f("fk_chain_transaction_attempts_transaction_id_chain_transactions")),
        sa.PrimaryKeyConstraint("txid", name=op.f("pk_chain_transaction_attempts")),
    )
    op.create_index("ix_chain_transaction_attempts_transaction_id", "chain_transaction_attempts",
                    ["transaction_id"], unique=False)
    op.create_table(
        "chain_nonces",
        sa.Column("chain", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=128), nullable=False),
        sa.Column("next_nonce", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("chain", "address", name=op.f("pk_chain_nonces")),
    )
    op.create_table(
        "wallet_refill_proposals",
        sa.Column("id", sa.String(length=120), nullable=False),
        sa.Column("chain", sa.String(length=16), nullable=False),
        sa.Column("asset", sa.String(length=16), nullable=False),
        sa.Column("amount_minor", custody.money.U256(), nullable=False),
        sa.Column("source_wallet_id", sa.Integer(), nullable=False),
        sa.Column("destination", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("required_approvals", sa.Integer(), nullable=False),
        sa.Column("approvals", sa.Text(), nullable=False),
        sa.Column("proposed_by", sa.String(length=128), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["source_wallet_id"], ["wallets.id"],
                                name=op.f("fk_wallet_refill_proposals_source_wallet_id_wallets")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wallet_refill_proposals")),
    )
    op.create_index("ix_wallet_refill_proposals_status", "wallet_refill_proposals", ["status"], unique=False)
    op.create_table(
        "reconciliation_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("chain", sa.String(length=16), nullable=False),
        sa.Column("height", sa.BigInteger(), nullable=False),
        sa.Column("run_ms", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_runs")),
    )


def downgrade() -> None:
    op.drop_table("reconciliation_runs")
    op.drop_index("ix_wallet_refill_proposals_status", table_name="wallet_refill_proposals")
    op.drop_table("wallet_refill_proposals")
    op.drop_table("chain_nonces")
    op.drop_index("ix_chain_transaction_attempts_transaction_id", table_name="chain_transaction_attempts")
    op.drop_table("chain_transaction_attempts")
    op.drop_index("ix_chain_transactions_status", table_name="chain_transactions")
    op.drop_table("chain_transactions")
    op.drop_index("ix_chain_deposits_status", table_name="chain_deposits")
    op.drop_index("ix_chain_deposits_owner", table_name="chain_deposits")
    op.drop_table("chain_deposits")
    op.drop_table("chain_blocks")
    op.drop_table("wallet_limits")
    op.drop_index("uq_wallet_addresses_wallet_owner", table_name="wallet_addresses")
    op.drop_index("uq_wallet_addresses_chain_address", table_name="wallet_addresses")
    op.drop_table("wallet_addresses")
    op.drop_index("uq_wallets_name", table_name="wallets")
    op.drop_table("wallets")
