"""account terms in the journal: open entries carry owner, kind and flags; terms are frozen

Revision ID: 0010_ledger_account_terms
Revises: 0009_ledger_actor
Create Date: 2026-12-01 22:45:00

Every account is opened by a hash-chained ``open`` journal entry that records
its owner, asset, kind and flags (docs/ledger-format.md), so the auditor takes
account terms from the signed journal. Triggers refuse any change of an
account's id, owner, asset, kind, flags or creation time, and any delete:
only the running balances change. Accounts opened before this revision have no
``open`` entry, so, like 0009, it refuses to run on a ledger that has accounts.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_ledger_account_terms"
down_revision: str | Sequence[str] | None = "0009_ledger_actor"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TERMS = ("id", "owner", "asset", "kind", "flags", "created_ms")


def upgrade() -> None:
    count = op.get_bind().execute(sa.text("SELECT COUNT(*) FROM ledger_accounts")).scalar_one()
    if count:
        raise RuntimeError(
            f"ledger_accounts holds {count} accounts opened without an open journal entry; "
            "re-create this database (account terms must be in the signed journal)")
    # Plain ADD COLUMN (no batch table copy) keeps SQLite's append-only triggers on the journal.
    op.add_column("ledger_transfers", sa.Column("account_owner", sa.String(length=128), nullable=True))
    op.add_column("ledger_transfers", sa.Column("account_kind", sa.String(length=32), nullable=True))
    op.add_column("ledger_transfers", sa.Column("account_flags", sa.Integer(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        changed = " OR ".join(f"NEW.{c} IS DISTINCT FROM OLD.{c}" for c in TERMS)
        op.execute(
            "CREATE FUNCTION ledger_accounts_terms_frozen() RETURNS trigger AS $$ BEGIN "
            "IF TG_OP <> 'UPDATE' THEN "
            "RAISE EXCEPTION 'ledger_accounts terms are frozen: % rejected', TG_OP; END IF; "
            f"IF {changed} THEN "
            "RAISE EXCEPTION 'ledger_accounts terms are frozen: only balances may change'; END IF; "
            "RETURN NEW; END; $$ LANGUAGE plpgsql")
        op.execute("CREATE TRIGGER ledger_accounts_terms_frozen BEFORE UPDATE OR DELETE "
                   "ON ledger_accounts FOR EACH ROW EXECUTE FUNCTION ledger_accounts_terms_frozen()")
        op.execute("CREATE TRIGGER ledger_accounts_no_truncate BEFORE TRUNCATE ON ledger_accounts "
                   "FOR EACH STATEMENT EXECUTE FUNCTION ledger_accounts_terms_frozen()")
    else:
        changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in TERMS)
        op.execute(
            "CREATE TRIGGER ledger_accounts_terms_frozen BEFORE UPDATE ON ledger_accounts "
            f"WHEN {changed} BEGIN "
            "SELECT RAISE(ABORT, 'ledger_accounts terms are frozen: only balances may change'); END")
        op.execute(
            "CREATE TRIGGER ledger_accounts_no_delete BEFORE DELETE ON ledger_accounts BEGIN "
            "SELECT RAISE(ABORT, 'ledger_accounts terms are frozen: DELETE rejected'); END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER ledger_accounts_no_truncate ON ledger_accounts")
        op.execute("DROP TRIGGER ledger_accounts_terms_frozen ON ledger_accounts")
        op.execute("DROP FUNCTION ledger_accounts_terms_frozen()")
        for column in ("account_flags", "account_kind", "account_owner"):
            op.drop_column("ledger_transfers", column)
    else:
        op.execute("DROP TRIGGER ledger_accounts_no_delete")
        op.execute("DROP TRIGGER ledger_accounts_terms_frozen")
        for column in ("account_flags", "account_kind", "account_owner"):
            op.execute(f"ALTER TABLE ledger_transfers DROP COLUMN {column}")
