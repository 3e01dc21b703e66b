"""channels: accounts, identity kinds, email message metadata, webhook replay tokens

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 17:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Existing identities were unique per channel; each channel implies one kind.
_KIND_OF_CHANNEL = (
    "CASE channel WHEN 'email' THEN 'email' WHEN 'sms' THEN 'phone' "
    "WHEN 'social' THEN 'social_handle' ELSE 'webchat_session' END"
)


def upgrade() -> None:
    op.create_table(
        "channel_accounts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("adapter", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=True),
        sa.Column("secret_ref", sa.String(length=500), nullable=True),
        sa.Column("settings", sa.JSON(), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_channel_accounts_workspace_id_workspaces"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_accounts")),
        sa.UniqueConstraint("channel", "address", name="uq_channel_accounts_channel_address"),
    )
    with op.batch_alter_table("channel_accounts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_channel_accounts_workspace", ["workspace_id", "channel"], unique=False
        )

    op.create_table(
        "webhook_replay_tokens",
        sa.Column("adapter", sa.String(length=64), nullable=False),
        sa.Column("token", sa.String(length=200), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("adapter", "token", name=op.f("pk_webhook_replay_tokens")),
    )
    with op.batch_alter_table("webhook_replay_tokens", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_webhook_replay_tokens_seen_at"), ["seen_at"], unique=False
        )

    with op.batch_alter_table("contact_identities", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=32), nullable=True))
    op.execute(f"UPDATE contact_identities SET kind = {_KIND_OF_CHANNEL}")  # noqa: S608 - constant
    with op.batch_alter_table("contact_identities", schema=None) as batch_op:
        batch_op.alter_column("kind", existing_type=sa.String(length=32), nullable=False)
        batch_op.drop_constraint("uq_contact_identities_address", type_="unique")
        batch_op.create_unique_constraint(
            "uq_contact_identities_kind_address", ["workspace_id", "kind", "address"]
        )

    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("channel_account_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("customer_address", sa.String(length=320), nullable=True))
        batch_op.add_column(sa.Column("subject", sa.String(length=998), nullable=True))
        batch_op.add_column(sa.Column("reply_token", sa.String(length=32), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_conversations_channel_account_id_channel_accounts"),
            "channel_accounts",
            ["channel_account_id"],
            ["id"],
        )
        batch_op.create_index(
            "uq_conversations_reply_token", ["workspace_id", "reply_token"], unique=True
        )

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("delivery_status_reason", sa.String(length=500), nullable=True)
        )
        batch_op.add_column(sa.Column("subject", sa.String(length=998), nullable=True))
        batch_op.add_column(sa.Column("email_message_id", sa.String(length=998), nullable=True))
        batch_op.add_column(sa.Column("threading", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("attachments", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("original_text", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("channel_data", sa.JSON(), nullable=True))
        batch_op.create_index(
            "ix_messages_email_message_id", ["workspace_id", "email_message_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_email_message_id")
        batch_op.drop_column("channel_data")
        batch_op.drop_column("original_text")
        batch_op.drop_column("attachments")
        batch_op.drop_column("threading")
        batch_op.drop_column("email_message_id")
        batch_op.drop_column("subject")
        batch_op.drop_column("delivery_status_reason")

    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_index("uq_conversations_reply_token")
        batch_op.drop_constraint(
            batch_op.f("fk_conversations_channel_account_id_channel_accounts"),
            type_="foreignkey",
        )
        batch_op.drop_column("reply_token")
        batch_op.drop_column("subject")
        batch_op.drop_column("customer_address")
        batch_op.drop_column("channel_account_id")

    # Identities merged across channels by kind may now collide per channel: the
    # downgrade keeps the oldest of each (workspace, channel, address).
    op.execute(
        "DELETE FROM contact_identities WHERE id IN ("
        " SELECT later.id FROM contact_identities later"
        " JOIN contact_identities earlier"
        "   ON earlier.workspace_id = later.workspace_id"
        "  AND earlier.channel = later.channel AND earlier.address = later.address"
        "  AND (earlier.created_at < later.created_at"
        "       OR (earlier.created_at = later.created_at AND earlier.id < later.id)))"
    )
    with op.batch_alter_table("contact_identities", schema=None) as batch_op:
        batch_op.drop_constraint("uq_contact_identities_kind_address", type_="unique")
        batch_op.create_unique_constraint(
            "uq_contact_identities_address", ["workspace_id", "channel", "address"]
        )
        batch_op.drop_column("kind")

    with op.batch_alter_table("webhook_replay_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_replay_tokens_seen_at"))
    op.drop_table("webhook_replay_tokens")

    with op.batch_alter_table("channel_accounts", schema=None) as batch_op:
        batch_op.drop_index("ix_channel_accounts_workspace")
    op.drop_table("channel_accounts")
