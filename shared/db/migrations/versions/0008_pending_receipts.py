"""pending receipts: provider delivery receipts that came before the "sent" report

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22 19:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pending_receipts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("provider_message_id", sa.String(length=998), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("adapter", sa.String(length=64), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_pending_receipts_workspace_id_workspaces"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_receipts")),
        sa.UniqueConstraint(
            "workspace_id",
            "channel",
            "provider_message_id",
            "status",
            name="uq_pending_receipts_provider_status",
        ),
    )
    op.create_index("ix_pending_receipts_received_at", "pending_receipts", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_pending_receipts_received_at", table_name="pending_receipts")
    op.drop_table("pending_receipts")
