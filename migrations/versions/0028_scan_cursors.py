"""chain scan cursors: where each chain's deposit watcher scans next, and its safe point

Revision ID: 0028_scan_cursors
Revises: 0027_alerts
Create Date: 2026-12-02 05:05:00

See custody/wallets/deposit_watcher.py. A chain the watcher already followed
gets a cursor from its stored blocks: start at the oldest stored block, next
after the newest.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0028_scan_cursors"
down_revision: str | Sequence[str] | None = "0027_alerts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "chain_scan_cursors",
        sa.Column("chain", sa.String(length=16), nullable=False),
        sa.Column("start_height", sa.BigInteger(), nullable=False),
        sa.Column("next_height", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("chain", name=op.f("pk_chain_scan_cursors")),
    )
    op.execute(
        "INSERT INTO chain_scan_cursors (chain, start_height, next_height, updated_ms) "
        "SELECT chain, MIN(height), MAX(height) + 1, 0 FROM chain_blocks GROUP BY chain"
    )


def downgrade() -> None:
    op.drop_table("chain_scan_cursors")
