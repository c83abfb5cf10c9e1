"""lift approvals: freeze and halt lifts are approvals in the one approvals table

Revision ID: 0026_lift_approvals
Revises: 0025_user_settings
Create Date: 2026-12-02 04:50:00

The two admins who lift a withdrawal halt (withdrawal_halts.lift_proposed_by,
lifted_by) or an account freeze (account_freezes.lift_requested_by, lifted_by
"first,second") become confirmed approvals of kind ``halt_lift`` /
``freeze_lift`` (custody/access/approvals.py ``add_approval`` writes them from
here on), and those columns are dropped. ``approvals.kind`` accepts the two new
kinds and ``approvals.subject_id`` widens to 160 characters (a freeze id).
Each subject's approvals are stamped in order (the second at least 1 ms after
the first), so the table alone says who proposed and who approved. Halts that
migration 0022 closed as duplicates keep their closer, ``migration:duplicate``,
as their only approval.

Downgrade rebuilds the columns from the approvals rows and deletes those rows.
"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0026_lift_approvals"
down_revision: str | Sequence[str] | None = "0025_user_settings"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = ("withdrawal", "refill", "policy_change", "ledger_proposal")
NEW_KINDS = (*OLD_KINDS, "freeze_lift", "halt_lift")
ACTIVE = sa.text("lifted_ms IS NULL")


def _check(kinds: Sequence[str]) -> str:
    return f"kind IN ({', '.join(repr(k) for k in kinds)})"


def _confirmed_id(kind: str, subject_id: str, approver: str, at_ms: int) -> str:
    # The id custody.access.approvals gives an approval confirmed by MFA (no signature to hash).
    return hashlib.sha256(f"confirmed\n{kind}\n{subject_id}\n{approver}\n{at_ms}".encode()).hexdigest()


def _approvals_table() -> sa.Table:
    return sa.table(
        "approvals",
        sa.column("approval_id", sa.String), sa.column("kind", sa.String), sa.column("subject_id", sa.String),
        sa.column("approver", sa.String), sa.column("key_id", sa.String),
        sa.column("approval", sa.LargeBinary), sa.column("created_ms", sa.BigInteger),
    )


def _rows(kind: str, subject_id: str, approvers: Sequence[tuple[str, int]]) -> list[dict[str, object]]:
    """Approval rows of one subject, in order, each at least 1 ms after the one before."""
    rows: list[dict[str, object]] = []
    last = None
    for approver, at_ms in approvers:
        if any(r["approver"] == approver for r in rows):
            continue
        at_ms = at_ms if last is None else max(at_ms, last + 1)
        last = at_ms
        rows.append({"approval_id": _confirmed_id(kind, subject_id, approver, at_ms), "kind": kind,
                     "subject_id": subject_id, "approver": approver, "key_id": None, "approval": None,
                     "created_ms": at_ms})
    return rows


def _set_kinds(kinds: Sequence[str], subject_len: int) -> None:
    with op.batch_alter_table("approvals", recreate="always") as batch:
        batch.drop_constraint(op.f("ck_approvals_kind"), type_="check")
        batch.alter_column("subject_id", type_=sa.String(subject_len), existing_nullable=False)
        batch.create_check_constraint(op.f("ck_approvals_kind"), _check(kinds))


def upgrade() -> None:
    _set_kinds(NEW_KINDS, 160)
    bind = op.get_bind()
    rows: list[dict[str, object]] = []
    for r in bind.execute(sa.text(
        "SELECT id, created_ms, lift_proposed_by, lift_proposed_ms, lifted_by, lifted_ms FROM withdrawal_halts"
    )).mappings():
        approvers = []
        if r["lift_proposed_by"]:
            approvers.append((r["lift_proposed_by"], r["lift_proposed_ms"] or r["created_ms"]))
        if r["lifted_by"]:
            approvers.append((r["lifted_by"], r["lifted_ms"] or r["created_ms"]))
        rows += _rows("halt_lift", r["id"], approvers)
    for r in bind.execute(sa.text(
        "SELECT id, created_ms, lift_requested_by, lift_requested_ms, lifted_by, lifted_ms FROM account_freezes"
    )).mappings():
        approvers = []
        if r["lift_requested_by"]:
            approvers.append((r["lift_requested_by"], r["lift_requested_ms"] or r["created_ms"]))
        for name in (r["lifted_by"] or "").split(","):
            if name:
                approvers.append((name, r["lifted_ms"] or r["created_ms"]))
        rows += _rows("freeze_lift", r["id"], approvers)
    if rows:
        op.bulk_insert(_approvals_table(), rows)
    op.drop_index("uq_withdrawal_halts_active_scope", table_name="withdrawal_halts")
    with op.batch_alter_table("withdrawal_halts") as batch:
        batch.drop_column("lifted_by")
        batch.drop_column("lift_proposed_ms")
        batch.drop_column("lift_proposed_by")
    op.create_index("uq_withdrawal_halts_active_scope", "withdrawal_halts", ["scope"], unique=True,
                    sqlite_where=ACTIVE, postgresql_where=ACTIVE)
    with op.batch_alter_table("account_freezes") as batch:
        batch.drop_column("lifted_by")
        batch.drop_column("lift_requested_ms")
        batch.drop_column("lift_requested_by")


def _approvers(bind: sa.engine.Connection, kind: str) -> dict[str, list[tuple[str, int]]]:
    found: dict[str, list[tuple[str, int]]] = {}
    for r in bind.execute(sa.text(
        "SELECT subject_id, approver, created_ms FROM approvals WHERE kind = :kind "
        "ORDER BY created_ms, approval_id"
    ), {"kind": kind}).mappings():
        found.setdefault(r["subject_id"], []).append((r["approver"], r["created_ms"]))
    return found


def downgrade() -> None:
    op.drop_index("uq_withdrawal_halts_active_scope", table_name="withdrawal_halts")
    with op.batch_alter_table("withdrawal_halts") as batch:
        batch.add_column(sa.Column("lift_proposed_by", sa.String(64), nullable=True))
        batch.add_column(sa.Column("lift_proposed_ms", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("lifted_by", sa.String(64), nullable=True))
    op.create_index("uq_withdrawal_halts_active_scope", "withdrawal_halts", ["scope"], unique=True,
                    sqlite_where=ACTIVE, postgresql_where=ACTIVE)
    with op.batch_alter_table("account_freezes") as batch:
        batch.add_column(sa.Column("lifted_by", sa.String(130), nullable=True))
        batch.add_column(sa.Column("lift_requested_by", sa.String(64), nullable=True))
        batch.add_column(sa.Column("lift_requested_ms", sa.BigInteger(), nullable=True))
    bind = op.get_bind()
    for halt_id, approvers in _approvers(bind, "halt_lift").items():
        lifted = bind.execute(sa.text("SELECT lifted_ms FROM withdrawal_halts WHERE id = :id"),
                              {"id": halt_id}).scalar()
        proposer = approvers[0] if len(approvers) > 1 or lifted is None else None
        closer = approvers[-1][0] if lifted is not None else None
        bind.execute(sa.text(
            "UPDATE withdrawal_halts SET lift_proposed_by = :p, lift_proposed_ms = :pm, lifted_by = :c "
            "WHERE id = :id"
        ), {"p": proposer[0] if proposer else None, "pm": proposer[1] if proposer else None, "c": closer,
            "id": halt_id})
    for freeze_id, approvers in _approvers(bind, "freeze_lift").items():
        lifted = bind.execute(sa.text("SELECT lifted_ms FROM account_freezes WHERE id = :id"),
                              {"id": freeze_id}).scalar()
        bind.execute(sa.text(
            "UPDATE account_freezes SET lift_requested_by = :p, lift_requested_ms = :pm, lifted_by = :c "
            "WHERE id = :id"
        ), {"p": approvers[0][0], "pm": approvers[0][1],
            "c": ",".join(a for a, _ in approvers) if lifted is not None else None, "id": freeze_id})
    bind.execute(sa.text("DELETE FROM approvals WHERE kind IN ('freeze_lift', 'halt_lift')"))
    _set_kinds(OLD_KINDS, 128)
