"""audit checkpoints and proof-of-reserves snapshots

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import custody.money

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('audit_checkpoints',
    sa.Column('number', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('first_seq', sa.BigInteger(), nullable=False),
    sa.Column('last_seq', sa.BigInteger(), nullable=False),
    sa.Column('checkpoint_hash', sa.String(length=64), nullable=False),
    sa.Column('timestamp_ms', sa.BigInteger(), nullable=False),
    sa.Column('record', sa.Text(), nullable=False),
    sa.Column('frontier', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('number', name=op.f('pk_audit_checkpoints')),
    sa.UniqueConstraint('checkpoint_hash', name=op.f('uq_audit_checkpoints_checkpoint_hash')),
    sa.UniqueConstraint('last_seq', name=op.f('uq_audit_checkpoints_last_seq'))
    )
    op.create_table('audit_liability_snapshots',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.Column('ledger_seq', sa.BigInteger(), nullable=False),
    sa.Column('record', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_liability_snapshots'))
    )
    op.create_table('audit_liability_leaves',
    sa.Column('snapshot_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('asset', sa.String(length=16), nullable=False),
    sa.Column('position', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('salt', sa.String(length=64), nullable=False),
    sa.Column('balance', custody.money.U256(), nullable=False),
    sa.ForeignKeyConstraint(['snapshot_id'], ['audit_liability_snapshots.id'], name=op.f('fk_audit_liability_leaves_snapshot_id_audit_liability_snapshots')),
    sa.PrimaryKeyConstraint('snapshot_id', 'asset', 'position', name=op.f('pk_audit_liability_leaves'))
    )
    with op.batch_alter_table('audit_liability_leaves', schema=None) as batch_op:
        batch_op.create_index('ix_audit_liability_leaves_owner', ['snapshot_id', 'owner', 'asset'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('audit_liability_leaves', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_liability_leaves_owner')

    op.drop_table('audit_liability_leaves')
    op.drop_table('audit_liability_snapshots')
    op.drop_table('audit_checkpoints')
