"""supervisor wall: conversations by workspace and creation time (volume by hour)

Revision ID: 0006_supervisor_wall
Revises: 0005
Create Date: 2026-11-22 18:40:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006_supervisor_wall"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_conversations_workspace_created",
        "conversations",
        ["workspace_id", "created_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_conversations_workspace_created", table_name="conversations")
