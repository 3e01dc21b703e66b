"""send ledger: outbound messages already handed to their provider

Ingest's provider dispatcher remembered sent replies only in memory, so records
redelivered after a restart or a rebalance (those after the last offset commit) were
sent to the customer again. A row per message handed to the provider, written right
after the provider accepted it and read before sending, keeps that from happening.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-23 03:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sent_replies",
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("adapter", sa.String(length=64), nullable=False),
        sa.Column("provider_message_id", sa.String(length=998), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_sent_replies_workspace_id_workspaces"),
        ),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_sent_replies")),
    )
    op.create_index("ix_sent_replies_sent_at", "sent_replies", ["sent_at"])


def downgrade() -> None:
    op.drop_index("ix_sent_replies_sent_at", table_name="sent_replies")
    op.drop_table("sent_replies")
