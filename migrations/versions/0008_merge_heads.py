"""merge the audit, access, bitcoin and bundles branches into one head (no schema change)

Revision ID: 0008
Revises: 0002, 0003, 0006, 0007
Create Date: 2026-12-10 10:00:00
"""

from collections.abc import Sequence

revision: str = "0008"
down_revision: str | Sequence[str] | None = ("0002", "0003", "0006", "0007")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Nothing to change: this revision only joins the branches so the history has one head."""


def downgrade() -> None:
    """Nothing to undo."""
