"""ledger accounts, transfers and head

Revision ID: 0001
Revises:
Create Date: 2026-11-25 07:29:28.021699
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import custody.money

GENESIS_HASH = "00" * 32

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('ledger_accounts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('asset', sa.String(length=16), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('flags', sa.Integer(), nullable=False),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.Column('debits_pending', custody.money.U256(), nullable=False),
    sa.Column('debits_posted', custody.money.U256(), nullable=False),
    sa.Column('credits_pending', custody.money.U256(), nullable=False),
    sa.Column('credits_posted', custody.money.U256(), nullable=False),
    sa.Column('last_seq', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_accounts'))
    )
    with op.batch_alter_table('ledger_accounts', schema=None) as batch_op:
        batch_op.create_index('uq_ledger_accounts_owner_asset_kind', ['owner', 'asset', 'kind'], unique=True)

    op.create_table('ledger_head',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_head'))
    )
    op.create_table('ledger_transfers',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('debit_account_id', sa.Integer(), nullable=False),
    sa.Column('credit_account_id', sa.Integer(), nullable=False),
    sa.Column('asset', sa.String(length=16), nullable=False),
    sa.Column('amount', custody.money.U256(), nullable=False),
    sa.Column('pending_id', sa.String(length=128), nullable=True),
    sa.Column('timeout_s', sa.Integer(), nullable=False),
    sa.Column('expires_ms', sa.BigInteger(), nullable=True),
    sa.Column('code', sa.Integer(), nullable=False),
    sa.Column('reference', sa.String(length=256), nullable=False),
    sa.Column('timestamp_ms', sa.BigInteger(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['credit_account_id'], ['ledger_accounts.id'], name=op.f('fk_ledger_transfers_credit_account_id_ledger_accounts')),
    sa.ForeignKeyConstraint(['debit_account_id'], ['ledger_accounts.id'], name=op.f('fk_ledger_transfers_debit_account_id_ledger_accounts')),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_ledger_transfers')),
    sa.UniqueConstraint('id', name=op.f('uq_ledger_transfers_id'))
    )
    with op.batch_alter_table('ledger_transfers', schema=None) as batch_op:
        batch_op.create_index('ix_ledger_transfers_credit_seq', ['credit_account_id', 'seq'], unique=False)
        batch_op.create_index('ix_ledger_transfers_debit_seq', ['debit_account_id', 'seq'], unique=False)
        batch_op.create_index('ix_ledger_transfers_expires', ['expires_ms'], unique=False,
                              postgresql_where=sa.text('expires_ms IS NOT NULL'),
                              sqlite_where=sa.text('expires_ms IS NOT NULL'))
        batch_op.create_index('uq_ledger_transfers_pending_id', ['pending_id'], unique=True,
                              postgresql_where=sa.text('pending_id IS NOT NULL'),
                              sqlite_where=sa.text('pending_id IS NOT NULL'))

    op.execute(sa.text("INSERT INTO ledger_head (id, seq, hash) VALUES (1, 0, :genesis)")
               .bindparams(genesis=GENESIS_HASH))
    _create_append_only_triggers()



def _create_append_only_triggers() -> None:
    """Make the journal append-only in the database itself, not just in our code."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION ledger_transfers_append_only() RETURNS trigger AS $$ "
            "BEGIN RAISE EXCEPTION 'ledger_transfers is append-only: % rejected', TG_OP; END; "
            "$$ LANGUAGE plpgsql"
        )
        op.execute(
            "CREATE TRIGGER ledger_transfers_no_update_delete BEFORE UPDATE OR DELETE "
            "ON ledger_transfers FOR EACH ROW EXECUTE FUNCTION ledger_transfers_append_only()"
        )
        op.execute(
            "CREATE TRIGGER ledger_transfers_no_truncate BEFORE TRUNCATE ON ledger_transfers "
            "FOR EACH STATEMENT EXECUTE FUNCTION ledger_transfers_append_only()"
        )
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER ledger_transfers_no_{action.lower()} BEFORE {action} "
                "ON ledger_transfers BEGIN "
                f"SELECT RAISE(ABORT, 'ledger_transfers is append-only: {action} rejected'); END"
            )


def _drop_append_only_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER ledger_transfers_no_truncate ON ledger_transfers")
        op.execute("DROP TRIGGER ledger_transfers_no_update_delete ON ledger_transfers")
        op.execute("DROP FUNCTION ledger_transfers_append_only()")
    else:
        op.execute("DROP TRIGGER ledger_transfers_no_update")
        op.execute("DROP TRIGGER ledger_transfers_no_delete")


def downgrade() -> None:
    _drop_append_only_triggers()
    with op.batch_alter_table('ledger_transfers', schema=None) as batch_op:
        batch_op.drop_index('uq_ledger_transfers_pending_id')
        batch_op.drop_index('ix_ledger_transfers_expires')
        batch_op.drop_index('ix_ledger_transfers_debit_seq')
        batch_op.drop_index('ix_ledger_transfers_credit_seq')

    op.drop_table('ledger_transfers')
    op.drop_table('ledger_head')
    with op.batch_alter_table('ledger_accounts', schema=None) as batch_op:
        batch_op.drop_index('uq_ledger_accounts_owner_asset_kind')

    op.drop_table('ledger_accounts')
