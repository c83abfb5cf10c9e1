"""lifecycle states: the database refuses a withdrawal or refill state the lifecycle does not know

Revision ID: 0016_lifecycle_states
Revises: 0015_withdrawal_halts
Create Date: 2026-12-02 00:05:00

custody/withdrawals/lifecycle.py is the only writer of these columns; this is
the database's own guard against any other writer (an insider with SQL access,
a bug). PostgreSQL gets CHECK constraints. SQLite gets BEFORE INSERT/UPDATE
triggers with the same names: adding a CHECK there means rebuilding the table,
which the foreign keys pointing at withdrawal_requests make unsafe on a live file.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016_lifecycle_states"
down_revision: str | Sequence[str] | None = "0015_withdrawal_halts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of custody.withdrawals.lifecycle's states at this revision.
WITHDRAWAL_STATES = (
    "pending_approval", "delayed", "approved", "rejected", "cancelled", "blocked",
    "awaiting_signature", "broadcasting", "completed", "failed",
)
REFILL_STATES = ("proposed", "awaiting_signer", "awaiting_signature", "broadcasting", "completed", "failed")
GUARDS = (
    ("withdrawal_requests", "state", WITHDRAWAL_STATES),
    ("wallet_refill_proposals", "status", REFILL_STATES),
)


def _allowed(column: str, states: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(s) for s in states)})"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table, column, states in GUARDS:
        name = f"ck_{table}_{column}"
        if dialect == "sqlite":
            for when in ("INSERT", "UPDATE"):
                op.execute(
                    f"CREATE TRIGGER {name}_{when.lower()} BEFORE {when} ON {table} "
                    f"WHEN NOT (NEW.{_allowed(column, states)}) "
                    f"BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: {name}'); END"
                )
        else:
            op.create_check_constraint(name, table, _allowed(column, states))


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table, column, _states in GUARDS:
        name = f"ck_{table}_{column}"
        if dialect == "sqlite":
            for when in ("insert", "update"):
                op.execute(f"DROP TRIGGER IF EXISTS {name}_{when}")
        else:
            op.drop_constraint(name, table, type_="check")
