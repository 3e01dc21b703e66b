"""routing engine: teams, policies, timers, queue fields

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 16:06:16.488238
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "teams",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"], ["workspaces.id"], name=op.f("fk_teams_workspace_id_workspaces")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_teams")),
        sa.UniqueConstraint("workspace_id", "name", name="uq_teams_workspace_name"),
    )
    op.create_table(
        "agent_teams",
        sa.Column("agent_id", sa.Uuid(), nullable=False),
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_agent_teams_agent_id_agents")
        ),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_agent_teams_team_id_teams")
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"], ["workspaces.id"], name=op.f("fk_agent_teams_workspace_id_workspaces")
        ),
        sa.PrimaryKeyConstraint("agent_id", "team_id", name=op.f("pk_agent_teams")),
    )
    with op.batch_alter_table("agent_teams", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_agent_teams_workspace_id"), ["workspace_id"], unique=False
        )

    op.create_table(
        "routing_policies",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("created_by_agent_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by_agent_id"],
            ["agents.id"],
            name=op.f("fk_routing_policies_created_by_agent_id_agents"),
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_routing_policies_workspace_id_workspaces"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_routing_policies")),
        sa.UniqueConstraint("workspace_id", "version", name="uq_routing_policies_version"),
    )
    op.create_table(
        "timers",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=True),
        sa.Column("agent_id", sa.Uuid(), nullable=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_timers_agent_id_agents")
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_timers_conversation_id_conversations"),
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"], ["workspaces.id"], name=op.f("fk_timers_workspace_id_workspaces")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_timers")),
    )
    with op.batch_alter_table("timers", schema=None) as batch_op:
        batch_op.create_index("ix_timers_agent", ["agent_id", "kind"], unique=False)
        batch_op.create_index("ix_timers_conversation", ["conversation_id", "kind"], unique=False)
        batch_op.create_index(
            "ix_timers_due",
            ["due_at"],
            unique=False,
            postgresql_where=sa.text("fired_at IS NULL AND cancelled_at IS NULL"),
            sqlite_where=sa.text("fired_at IS NULL AND cancelled_at IS NULL"),
        )

    with op.batch_alter_table("assignments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("closed_reason", sa.String(length=64), nullable=True))

    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("vip", sa.Boolean(), server_default=sa.text("(false)"), nullable=False)
        )

    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("team_id", sa.Uuid(), nullable=True))
        batch_op.add_column(
            sa.Column("required_skills", sa.JSON(), server_default=sa.text("'[]'"), nullable=False)
        )
        batch_op.add_column(sa.Column("language", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("queue_notice", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("intake", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("routing_explanation", sa.JSON(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_conversations_team_id_teams"), "teams", ["team_id"], ["id"]
        )
        batch_op.create_index(
            "ix_conversations_waiting",
            ["workspace_id", "priority", "queued_at"],
            unique=False,
            postgresql_where=sa.text("status = 'queued'"),
            sqlite_where=sa.text("status = 'queued'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_conversations_waiting",
            postgresql_where=sa.text("status = 'queued'"),
            sqlite_where=sa.text("status = 'queued'"),
        )
        batch_op.drop_constraint(batch_op.f("fk_conversations_team_id_teams"), type_="foreignkey")
        batch_op.drop_column("routing_explanation")
        batch_op.drop_column("intake")
        batch_op.drop_column("queue_notice")
        batch_op.drop_column("queued_at")
        batch_op.drop_column("language")
        batch_op.drop_column("required_skills")
        batch_op.drop_column("team_id")

    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_column("vip")

    with op.batch_alter_table("assignments", schema=None) as batch_op:
        batch_op.drop_column("closed_reason")

    with op.batch_alter_table("timers", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_timers_due",
            postgresql_where=sa.text("fired_at IS NULL AND cancelled_at IS NULL"),
            sqlite_where=sa.text("fired_at IS NULL AND cancelled_at IS NULL"),
        )
        batch_op.drop_index("ix_timers_conversation")
        batch_op.drop_index("ix_timers_agent")

    op.drop_table("timers")
    op.drop_table("routing_policies")
    with op.batch_alter_table("agent_teams", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_agent_teams_workspace_id"))

    op.drop_table("agent_teams")
    op.drop_table("teams")
