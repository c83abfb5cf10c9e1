"""approvals: one table for every approval (withdrawals, refills, policy changes, ledger proposals)

Revision ID: 0021_approvals
Revises: 0020_travel_rule
Create Date: 2026-12-02 02:20:00

Moves the rows of withdrawal_approvals, wallet_refill_approvals and
policy_change_approvals into ``approvals`` (kind + subject_id), the refill
proposals' JSON list of unsigned approvals (wallet_refill_proposals.approvals,
kept until now for history) into rows without a signature, and the approver
of every executed or failed ledger proposal (ledger_proposals.decided_by)
into a confirmed approval. The old tables and the JSON column are dropped.
custody/access/approvals.py is the only writer from here on.

Downgrade puts the signed rows back into their tables and rebuilds the JSON
column from the refill rows; approvals of ledger proposals exist only as
ledger_proposals.decided_by before this revision, so they are dropped.
"""

import hashlib
import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021_approvals"
down_revision: str | Sequence[str] | None = "0020_travel_rule"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of what custody.access.approvals means at this revision.
KINDS = ("withdrawal", "refill", "policy_change", "ledger_proposal")
SIGNED_TABLES = (  # (old table, its subject column, kind)
    ("withdrawal_approvals", "withdrawal_id", "withdrawal"),
    ("wallet_refill_approvals", "proposal_id", "refill"),
    ("policy_change_approvals", "proposal_id", "policy_change"),
)
APPROVAL_MAGIC = b"SRAP"


def _approvals_table() -> sa.Table:
    return sa.table(
        "approvals",
        sa.column("approval_id", sa.String), sa.column("kind", sa.String), sa.column("subject_id", sa.String),
        sa.column("approver", sa.String), sa.column("key_id", sa.String),
        sa.column("approval", sa.LargeBinary), sa.column("created_ms", sa.BigInteger),
    )


def _key_id(approval: bytes) -> str | None:
    """Read the key id of a stored approval (magic, version u8, approver text, key id text)."""
    if not approval.startswith(APPROVAL_MAGIC) or len(approval) < 7:
        return None
    offset = len(APPROVAL_MAGIC) + 1
    approver_len = int.from_bytes(approval[offset:offset + 2], "big")
    offset += 2 + approver_len
    key_len = int.from_bytes(approval[offset:offset + 2], "big")
    key = approval[offset + 2:offset + 2 + key_len]
    return key.decode("utf-8", "replace") if len(key) == key_len and key_len else None


def _confirmed_id(kind: str, subject_id: str, approver: str, at_ms: int) -> str:
    # The id custody.access.approvals gives an approval confirmed by MFA (no signature to hash).
    return hashlib.sha256(f"confirmed\n{kind}\n{subject_id}\n{approver}\n{at_ms}".encode()).hexdigest()


def upgrade() -> None:
    op.create_table(
        "approvals",
        sa.Column("approval_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("subject_id", sa.String(128), nullable=False),
        sa.Column("approver", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(128), nullable=True),
        sa.Column("approval", sa.LargeBinary(), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(f"kind IN ({', '.join(repr(k) for k in KINDS)})", name=op.f("ck_approvals_kind")),
        sa.PrimaryKeyConstraint("approval_id", name=op.f("pk_approvals")),
    )
    op.create_index("ix_approvals_kind_subject_id", "approvals", ["kind", "subject_id"])
    bind = op.get_bind()
    rows: list[dict[str, object]] = []
    for table, column, kind in SIGNED_TABLES:
        key = "NULL AS key_id" if table == "policy_change_approvals" else "key_id"
        for r in bind.execute(sa.text(
            # Table and column names are this module's constants, never input.
            f"SELECT approval_id, {column} AS subject_id, approver, {key}, approval, created_ms FROM {table}"  # noqa: S608
        )).mappings():
            approval = bytes(r["approval"])
            rows.append({"approval_id": r["approval_id"], "kind": kind, "subject_id": r["subject_id"],
                         "approver": r["approver"], "key_id": r["key_id"] or _key_id(approval),
                         "approval": approval, "created_ms": r["created_ms"]})
    rows += _unsigned_refill_rows(bind)
    for r in bind.execute(sa.text(
        "SELECT proposal_id, decided_by, decided_ms FROM ledger_proposals "
        "WHERE state IN ('executed', 'failed') AND decided_by IS NOT NULL"
    )).mappings():
        at_ms = r["decided_ms"] or 0
        rows.append({"approval_id": _confirmed_id("ledger_proposal", r["proposal_id"], r["decided_by"], at_ms),
                     "kind": "ledger_proposal", "subject_id": r["proposal_id"], "approver": r["decided_by"],
                     "key_id": None, "approval": None, "created_ms": at_ms})
    if rows:
        op.bulk_insert(_approvals_table(), rows)
    for table, column, _kind in SIGNED_TABLES:
        op.drop_index(f"ix_{table}_{column}", table_name=table)
        op.drop_table(table)
    op.drop_column("wallet_refill_proposals", "approvals")


def _unsigned_refill_rows(bind: sa.engine.Connection) -> list[dict[str, object]]:
    """The JSON list's approvals without a signature (the signed ones are already rows)."""
    rows: list[dict[str, object]] = []
    for r in bind.execute(sa.text("SELECT id, approvals FROM wallet_refill_proposals")).mappings():
        for entry in json.loads(r["approvals"] or "[]"):
            if entry.get("signed"):
                continue
            at_ms = int(entry.get("at_ms", 0))
            approver = str(entry["approver"])
            rows.append({"approval_id": _confirmed_id("refill", r["id"], approver, at_ms), "kind": "refill",
                         "subject_id": r["id"], "approver": approver, "key_id": None, "approval": None,
                         "created_ms": at_ms})
    return rows


def downgrade() -> None:
    op.add_column("wallet_refill_proposals",
                  sa.Column("approvals", sa.Text(), nullable=False, server_default="[]"))
    op.create_table(
        "withdrawal_approvals",
        sa.Column("approval_id", sa.String(64), nullable=False),
        sa.Column("withdrawal_id", sa.String(64), nullable=False),
        sa.Column("approver", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(128), nullable=False),
        sa.Column("approval", sa.LargeBinary(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["withdrawal_id"], ["withdrawal_requests.id"],
                                name=op.f("fk_withdrawal_approvals_withdrawal_id_withdrawal_requests")),
        sa.PrimaryKeyConstraint("approval_id", name=op.f("pk_withdrawal_approvals")),
    )
    op.create_table(
        "wallet_refill_approvals",
        sa.Column("approval_id", sa.String(64), nullable=False),
        sa.Column("proposal_id", sa.String(120), nullable=False),
        sa.Column("approver", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(128), nullable=False),
        sa.Column("approval", sa.LargeBinary(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["proposal_id"], ["wallet_refill_proposals.id"],
                                name=op.f("fk_wallet_refill_approvals_proposal_id_wallet_refill_proposals")),
        sa.PrimaryKeyConstraint("approval_id", name=op.f("pk_wallet_refill_approvals")),
    )
    op.create_table(
        "policy_change_approvals",
        sa.Column("approval_id", sa.String(64), nullable=False),
        sa.Column("proposal_id", sa.String(128), nullable=False),
        sa.Column("approver", sa.String(64), nullable=False),
        sa.Column("approval", sa.LargeBinary(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["proposal_id"], ["policy_change_proposals.proposal_id"],
                                name=op.f("fk_policy_change_approvals_proposal_id_policy_change_proposals")),
        sa.PrimaryKeyConstraint("approval_id", name=op.f("pk_policy_change_approvals")),
    )
    bind = op.get_bind()
    for table, column, kind in SIGNED_TABLES:
        key = "" if table == "policy_change_approvals" else ", key_id"
        bind.execute(sa.text(
            f"INSERT INTO {table} (approval_id, {column}, approver{key}, approval, created_ms) "  # noqa: S608
            f"SELECT approval_id, subject_id, approver{key}, approval, created_ms FROM approvals "
            "WHERE kind = :kind AND approval IS NOT NULL"
        ), {"kind": kind})
        op.create_index(f"ix_{table}_{column}", table, [column])
    listed: dict[str, list[dict[str, object]]] = {}
    for r in bind.execute(sa.text(
        "SELECT subject_id, approver, approval IS NOT NULL AS signed, created_ms FROM approvals "
        "WHERE kind = 'refill' ORDER BY created_ms, approval_id"
    )).mappings():
        listed.setdefault(r["subject_id"], []).append(
            {"approver": r["approver"], "at_ms": r["created_ms"], "signed": bool(r["signed"])})
    for subject_id, entries in listed.items():
        bind.execute(sa.text("UPDATE wallet_refill_proposals SET approvals = :a WHERE id = :id"),
                     {"a": json.dumps(entries), "id": subject_id})
    op.drop_index("ix_approvals_kind_subject_id", table_name="approvals")
    op.drop_table("approvals")
