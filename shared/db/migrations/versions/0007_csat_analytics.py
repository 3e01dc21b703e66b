"""csat surveys, follow-ups and settings; time-window indexes for analytics

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 18:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "csat_settings",
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_csat_settings_workspace_id_workspaces"),
        ),
        sa.PrimaryKeyConstraint("workspace_id", name=op.f("pk_csat_settings")),
    )
    op.create_table(
        "csat_surveys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("thread_key", sa.String(length=400), nullable=False),
        sa.Column("tier", sa.Integer(), nullable=False),
        sa.Column("agent_id", sa.Uuid(), nullable=True),
        sa.Column("team_id", sa.Uuid(), nullable=True),
        sa.Column("message_id", sa.Uuid(), nullable=True),
        sa.Column("accepts_reply", sa.Boolean(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("score", sa.Integer(), nullable=True),
        sa.Column("answered_via", sa.String(length=16), nullable=True),
        sa.Column("responded_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("score BETWEEN 1 AND 5", name=op.f("ck_csat_surveys_score_range")),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_csat_surveys_agent_id_agents")
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_csat_surveys_conversation_id_conversations"),
        ),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_csat_surveys_message_id_messages")
        ),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_csat_surveys_team_id_teams")
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_csat_surveys_workspace_id_workspaces"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_csat_surveys")),
    )
    with op.batch_alter_table("csat_surveys", schema=None) as batch_op:
        batch_op.create_index(
            "ix_csat_surveys_pending_reply",
            ["workspace_id", "channel", "thread_key", "sent_at"],
            unique=False,
            postgresql_where=sa.text("responded_at IS NULL AND accepts_reply"),
            sqlite_where=sa.text("responded_at IS NULL AND accepts_reply"),
        )
        batch_op.create_index(
            "ix_csat_surveys_responded", ["workspace_id", "responded_at"], unique=False
        )
        batch_op.create_index(
            "ix_csat_surveys_conversation", ["conversation_id", "sent_at"], unique=False
        )
    op.create_table(
        "csat_follow_ups",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("survey_id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("agent_id", sa.Uuid(), nullable=True),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_by_agent_id", sa.Uuid(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_csat_follow_ups_agent_id_agents")
        ),
        sa.ForeignKeyConstraint(
            ["closed_by_agent_id"],
            ["agents.id"],
            name=op.f("fk_csat_follow_ups_closed_by_agent_id_agents"),
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_csat_follow_ups_conversation_id_conversations"),
        ),
        sa.ForeignKeyConstraint(
            ["survey_id"],
            ["csat_surveys.id"],
            name=op.f("fk_csat_follow_ups_survey_id_csat_surveys"),
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_csat_follow_ups_workspace_id_workspaces"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_csat_follow_ups")),
        sa.UniqueConstraint("survey_id", name="uq_csat_follow_ups_survey"),
    )
    with op.batch_alter_table("csat_follow_ups", schema=None) as batch_op:
        batch_op.create_index(
            "ix_csat_follow_ups_open", ["workspace_id", "closed_at", "opened_at"], unique=False
        )
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_conversations_workspace_created", ["workspace_id", "created_at"], unique=False
        )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_messages_workspace_created", ["workspace_id", "created_at"], unique=False
        )
    with op.batch_alter_table("assignments", schema=None) as batch_op:
        batch_op.create_index(
            "ix_assignments_conversation_created",
            ["conversation_id", "created_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("assignments", schema=None) as batch_op:
        batch_op.drop_index("ix_assignments_conversation_created")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_workspace_created")
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_index("ix_conversations_workspace_created")
    with op.batch_alter_table("csat_follow_ups", schema=None) as batch_op:
        batch_op.drop_index("ix_csat_follow_ups_open")
    op.drop_table("csat_follow_ups")
    with op.batch_alter_table("csat_surveys", schema=None) as batch_op:
        batch_op.drop_index("ix_csat_surveys_conversation")
        batch_op.drop_index("ix_csat_surveys_responded")
        batch_op.drop_index("ix_csat_surveys_pending_reply")
    op.drop_table("csat_surveys")
    op.drop_table("csat_settings")
