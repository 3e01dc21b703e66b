"""csat surveys: a time-window index on sent_at (response rate)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22 19:20:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("csat_surveys", schema=None) as batch_op:
        batch_op.create_index("ix_csat_surveys_sent", ["workspace_id", "sent_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("csat_surveys", schema=None) as batch_op:
        batch_op.drop_index("ix_csat_surveys_sent")
