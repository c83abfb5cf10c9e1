"""access control, withdrawals, policy documents, security log

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-26 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import custody.money

revision: str = '0003'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY_TABLE = "access_security_log"


def upgrade() -> None:
    op.create_table('access_idempotency',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('idempotency_key', sa.String(length=128), nullable=False),
    sa.Column('request_sha256', sa.String(length=64), nullable=False),
    sa.Column('status', sa.Integer(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_access_idempotency'))
    )
    with op.batch_alter_table('access_idempotency', schema=None) as batch_op:
        batch_op.create_index('uq_access_idempotency_username_key', ['username', 'idempotency_key'], unique=True)

    op.create_table('access_replay_nonces',
    sa.Column('nonce', sa.String(length=256), nullable=False),
    sa.Column('expires_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('nonce', name=op.f('pk_access_replay_nonces'))
    )
    with op.batch_alter_table('access_replay_nonces', schema=None) as batch_op:
        batch_op.create_index('ix_access_replay_nonces_expires_ms', ['expires_ms'], unique=False)

    op.create_table('access_security_log',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('at_ms', sa.BigInteger(), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('subject', sa.String(length=256), nullable=False),
    sa.Column('outcome', sa.String(length=32), nullable=False),
    sa.Column('details', sa.Text(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_access_security_log'))
    )
    op.create_table('access_users',
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('roles', sa.String(length=128), nullable=False),
    sa.Column('kyc_tier', sa.Integer(), nullable=False),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.Column('disabled_ms', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('username', name=op.f('pk_access_users'))
    )
    op.create_table('policy_documents',
    sa.Column('policy_id', sa.String(length=128), nullable=False),
    sa.Column('version', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('document', sa.Text(), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('activated_ms', sa.BigInteger(), nullable=False),
    sa.Column('proposal_id', sa.String(length=128), nullable=True),
    sa.PrimaryKeyConstraint('policy_id', 'version', name=op.f('pk_policy_documents'))
    )
    op.create_table('access_api_keys',
    sa.Column('key_id', sa.String(length=128), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('label', sa.String(length=128), nullable=False),
    sa.Column('secret_ciphertext', sa.String(length=1024), nullable=False),
    sa.Column('scopes', sa.String(length=64), nullable=False),
    sa.Column('ip_allowlist', sa.Text(), nullable=False),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.Column('expires_ms', sa.BigInteger(), nullable=True),
    sa.Column('revoked_ms', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['username'], ['access_users.username'], name=op.f('fk_access_api_keys_username_access_users')),
    sa.PrimaryKeyConstraint('key_id', name=op.f('pk_access_api_keys'))
    )
    with op.batch_alter_table('access_api_keys', schema=None) as batch_op:
        batch_op.create_index('ix_access_api_keys_username', ['username'], unique=False)

    op.create_table('access_approver_keys',
    sa.Column('key_id', sa.String(length=128), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('scheme', sa.String(length=32), nullable=False),
    sa.Column('public_key_hex', sa.String(length=512), nullable=False),
    sa.Column('registered_ms', sa.BigInteger(), nullable=False),
    sa.Column('revoked_ms', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['username'], ['access_users.username'], name=op.f('fk_access_approver_keys_username_access_users')),
    sa.PrimaryKeyConstraint('key_id', name=op.f('pk_access_approver_keys')),
    sa.UniqueConstraint('public_key_hex', name=op.f('uq_access_approver_keys_public_key_hex'))
    )
    with op.batch_alter_table('access_approver_keys', schema=None) as batch_op:
        batch_op.create_index('ix_access_approver_keys_username', ['username'], unique=False)

    op.create_table('access_mfa',
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('secret_ciphertext', sa.String(length=1024), nullable=False),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.Column('confirmed_ms', sa.BigInteger(), nullable=True),
    sa.Column('last_used_step', sa.BigInteger(), nullable=True),
    sa.Column('consecutive_failures', sa.Integer(), nullable=False),
    sa.Column('locked_until_ms', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['username'], ['access_users.username'], name=op.f('fk_access_mfa_username_access_users')),
    sa.PrimaryKeyConstraint('username', name=op.f('pk_access_mfa'))
    )
    op.create_table('policy_change_proposals',
    sa.Column('proposal_id', sa.String(length=128), nullable=False),
    sa.Column('policy_id', sa.String(length=128), nullable=False),
    sa.Column('base_version', sa.BigInteger(), nullable=False),
    sa.Column('new_version', sa.BigInteger(), nullable=False),
    sa.Column('document', sa.Text(), nullable=False),
    sa.Column('document_sha256', sa.String(length=64), nullable=False),
    sa.Column('proposer', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.Column('closed_ms', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['proposer'], ['access_users.username'], name=op.f('fk_policy_change_proposals_proposer_access_users')),
    sa.PrimaryKeyConstraint('proposal_id', name=op.f('pk_policy_change_proposals'))
    )
    op.create_table('withdrawal_requests',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('asset', sa.String(length=16), nullable=False),
    sa.Column('amount', custody.money.U256(precision=78, scale=0), nullable=False),
    sa.Column('amount_usd_cents', custody.money.U256(precision=78, scale=0), nullable=False),
    sa.Column('destination', sa.String(length=256), nullable=False),
    sa.Column('source_wallet', sa.String(length=8), nullable=False),
    sa.Column('state', sa.String(length=24), nullable=False),
    sa.Column('policy_id', sa.String(length=128), nullable=False),
    sa.Column('policy_version', sa.BigInteger(), nullable=False),
    sa.Column('policy_digest', sa.String(length=64), nullable=False),
    sa.Column('rule_id', sa.String(length=128), nullable=True),
    sa.Column('decision', sa.Text(), nullable=False),
    sa.Column('required_count', sa.Integer(), nullable=False),
    sa.Column('required_group', sa.String(length=128), nullable=True),
    sa.Column('release_at_ms', sa.BigInteger(), nullable=True),
    sa.Column('delays_served', sa.String(length=512), nullable=False),
    sa.Column('hold_transfer_id', sa.String(length=128), nullable=False),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.Column('updated_ms', sa.BigInteger(), nullable=False),
    sa.Column('closed_by', sa.String(length=64), nullable=True),
    sa.Column('close_reason', sa.String(length=256), nullable=True),
    sa.ForeignKeyConstraint(['username'], ['access_users.username'], name=op.f('fk_withdrawal_requests_username_access_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_withdrawal_requests'))
    )
    with op.batch_alter_table('withdrawal_requests', schema=None) as batch_op:
        batch_op.create_index('ix_withdrawal_requests_created', ['created_ms'], unique=False)
        batch_op.create_index('ix_withdrawal_requests_state', ['state'], unique=False)
        batch_op.create_index('ix_withdrawal_requests_username_created', ['username', 'created_ms'], unique=False)

    op.create_table('withdrawal_whitelist',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('asset', sa.String(length=16), nullable=False),
    sa.Column('address', sa.String(length=256), nullable=False),
    sa.Column('label', sa.String(length=128), nullable=False),
    sa.Column('added_ms', sa.BigInteger(), nullable=False),
    sa.Column('removed_ms', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['username'], ['access_users.username'], name=op.f('fk_withdrawal_whitelist_username_access_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_withdrawal_whitelist'))
    )
    with op.batch_alter_table('withdrawal_whitelist', schema=None) as batch_op:
        batch_op.create_index('uq_withdrawal_whitelist_username_asset_address', ['username', 'asset', 'address'], unique=True)

    op.create_table('policy_change_approvals',
    sa.Column('approval_id', sa.String(length=64), nullable=False),
    sa.Column('proposal_id', sa.String(length=128), nullable=False),
    sa.Column('approver', sa.String(length=64), nullable=False),
    sa.Column('approval', sa.LargeBinary(), nullable=False),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['proposal_id'], ['policy_change_proposals.proposal_id'], name=op.f('fk_policy_change_approvals_proposal_id_policy_change_proposals')),
    sa.PrimaryKeyConstraint('approval_id', name=op.f('pk_policy_change_approvals'))
    )
    with op.batch_alter_table('policy_change_approvals', schema=None) as batch_op:
        batch_op.create_index('ix_policy_change_approvals_proposal_id', ['proposal_id'], unique=False)

    op.create_table('withdrawal_approvals',
    sa.Column('approval_id', sa.String(length=64), nullable=False),
    sa.Column('withdrawal_id', sa.String(length=64), nullable=False),
    sa.Column('approver', sa.String(length=64), nullable=False),
    sa.Column('key_id', sa.String(length=128), nullable=False),
    sa.Column('approval', sa.LargeBinary(), nullable=False),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['withdrawal_id'], ['withdrawal_requests.id'], name=op.f('fk_withdrawal_approvals_withdrawal_id_withdrawal_requests')),
    sa.PrimaryKeyConstraint('approval_id', name=op.f('pk_withdrawal_approvals'))
    )
    with op.batch_alter_table('withdrawal_approvals', schema=None) as batch_op:
        batch_op.create_index('ix_withdrawal_approvals_withdrawal_id', ['withdrawal_id'], unique=False)
    _create_append_only_triggers()


def _create_append_only_triggers() -> None:
    """Make the security log append-only in the database itself, not just in our code."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION access_security_log_append_only() RETURNS trigger AS $$ "
            "BEGIN RAISE EXCEPTION 'access_security_log is append-only: % rejected', TG_OP; END; "
            "$$ LANGUAGE plpgsql"
        )
        op.execute(
            "CREATE TRIGGER access_security_log_no_update_delete BEFORE UPDATE OR DELETE "
            "ON access_security_log FOR EACH ROW EXECUTE FUNCTION access_security_log_append_only()"
        )
        op.execute(
            "CREATE TRIGGER access_security_log_no_truncate BEFORE TRUNCATE ON access_security_log "
            "FOR EACH STATEMENT EXECUTE FUNCTION access_security_log_append_only()"
        )
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER access_security_log_no_{action.lower()} BEFORE {action} "
                "ON access_security_log BEGIN "
                f"SELECT RAISE(ABORT, 'access_security_log is append-only: {action} rejected'); END"
            )


def _drop_append_only_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER access_security_log_no_truncate ON access_security_log")
        op.execute("DROP TRIGGER access_security_log_no_update_delete ON access_security_log")
        op.execute("DROP FUNCTION access_security_log_append_only()")
    else:
        op.execute("DROP TRIGGER access_security_log_no_update")
        op.execute("DROP TRIGGER access_security_log_no_delete")


def downgrade() -> None:
    _drop_append_only_triggers()
    with op.batch_alter_table('withdrawal_approvals', schema=None) as batch_op:
        batch_op.drop_index('ix_withdrawal_approvals_withdrawal_id')

    op.drop_table('withdrawal_approvals')
    with op.batch_alter_table('policy_change_approvals', schema=None) as batch_op:
        batch_op.drop_index('ix_policy_change_approvals_proposal_id')

    op.drop_table('policy_change_approvals')
    with op.batch_alter_table('withdrawal_whitelist', schema=None) as batch_op:
        batch_op.drop_index('uq_withdrawal_whitelist_username_asset_address')

    op.drop_table('withdrawal_whitelist')
    with op.batch_alter_table('withdrawal_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_withdrawal_requests_username_created')
        batch_op.drop_index('ix_withdrawal_requests_state')
        batch_op.drop_index('ix_withdrawal_requests_created')

    op.drop_table('withdrawal_requests')
    op.drop_table('policy_change_proposals')
    op.drop_table('access_mfa')
    with op.batch_alter_table('access_approver_keys', schema=None) as batch_op:
        batch_op.drop_index('ix_access_approver_keys_username')

    op.drop_table('access_approver_keys')
    with op.batch_alter_table('access_api_keys', schema=None) as batch_op:
        batch_op.drop_index('ix_access_api_keys_username')

    op.drop_table('access_api_keys')
    op.drop_table('policy_documents')
    op.drop_table('access_users')
    op.drop_table('access_security_log')
    with op.batch_alter_table('access_replay_nonces', schema=None) as batch_op:
        batch_op.drop_index('ix_access_replay_nonces_expires_ms')

    op.drop_table('access_replay_nonces')
    with op.batch_alter_table('access_idempotency', schema=None) as batch_op:
        batch_op.drop_index('uq_access_idempotency_username_key')

    op.drop_table('access_idempotency')
