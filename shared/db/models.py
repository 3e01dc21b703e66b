"""The data model of the contract. Every row carries ``workspace_id``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT identity on PostgreSQL; SQLite only autoincrements an INTEGER PRIMARY KEY.
SequenceId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that reads back timezone-aware on every database. PostgreSQL keeps
    the zone (``timestamptz``) and needs nothing per value; SQLite (dev mode) stores
    none: values are stored and compared in UTC and read back with its zone, so API
    answers carry an offset and comparisons with aware times work the same on both."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return super().bind_processor(dialect)
        return dialect.type_descriptor(self.impl_instance).bind_processor(dialect)

    def process_bind_param(
        self,
        value: datetime | None,
        dialect: Dialect,  # noqa: ARG002 - the signature TypeDecorator calls
    ) -> datetime | None:
        # SQLite keeps the wall-clock digits only: an aware time is compared in UTC.
        if value is not None and value.tzinfo is not None:
            return value.astimezone(UTC)
        return value

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        if dialect.name == "sqlite":
            return super().result_processor(dialect, coltype)
        return dialect.type_descriptor(self.impl_instance).result_processor(dialect, coltype)

    def process_result_value(
        self,
        value: datetime | None,
        dialect: Dialect,  # noqa: ARG002 - the signature TypeDecorator calls
    ) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UtcDateTime(),
        dict[str, Any]: JSON,
    }


class AgentStatus(StrEnum):
    ONLINE = "online"
    AWAY = "away"
    OFFLINE = "offline"


class AgentRole(StrEnum):
    AGENT = "agent"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"


class ConversationStatus(StrEnum):
    QUEUED = "queued"
    ASSIGNED = "assigned"
    PENDING = "pending"
    SNOOZED = "snoozed"
    RESOLVED = "resolved"


class DeliveryStatus(StrEnum):
    RECEIVED = "received"
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"


class Workspace(Base):
    __tablename__ = "workspaces"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Agent(Base):
    __tablename__ = "agents"
    __table_args__ = (
        UniqueConstraint("workspace_id", "email", name="uq_agents_workspace_email"),
        CheckConstraint("tier BETWEEN 1 AND 3", name="tier_range"),
        CheckConstraint("load_units >= 0", name="load_not_negative"),
        CheckConstraint("load_units <= capacity_units", name="load_within_capacity"),
        Index("ix_agents_workspace_status", "workspace_id", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"))
    email: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(300))
    role: Mapped[str] = mapped_column(String(16), default=AgentRole.AGENT.value)
    tier: Mapped[int] = mapped_column(Integer, default=1)
    skills: Mapped[list[str]] = mapped_column(JSON, default=list)
    languages: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default=AgentStatus.OFFLINE.value)
    capacity_units: Mapped[float] = mapped_column(Float, default=3.0)
    load_units: Mapped[float] = mapped_column(Float, default=0.0)
    status_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_assigned_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deactivated_at: Mapped[datetime | None] = mapped_column(default=None)


class Team(Base):
    """A group of agents with its own queue (e.g. billing, tier-2 technical)."""

    __tablename__ = "teams"
    __table_args__ = (UniqueConstraint("workspace_id", "name", name="uq_teams_workspace_name"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"))
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AgentTeam(Base):
    __tablename__ = "agent_teams"

    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id"), primary_key=True)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id"), primary_key=True)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"), index=True)


class RoutingPolicyVersion(Base):
    """Every version of a workspace's routing policy; the highest version is in force."""

    __tablename__ = "routing_policies"
    __table_args__ = (
        UniqueConstraint("workspace_id", "version", name="uq_routing_policies_version"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"))
    version: Mapped[int] = mapped_column(Integer)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_by_agent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("agents.id"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TimerKind(StrEnum):
    SLA_FIRST_RESPONSE = "sla_first_response"
    OWNER_OFFLINE_GRACE = "owner_offline_grace"
    SNOOZE_END = "snooze_end"


class Timer(Base):
    """A durable timer: due-time indexed, claimed with FOR UPDATE SKIP LOCKED."""

    __tablename__ = "timers"
    __table_args__ = (
        Index(
            "ix_timers_due",
            "due_at",
            postgresql_where=text("fired_at IS NULL AND cancelled_at IS NULL"),
            sqlite_where=text("fired_at IS NULL AND cancelled_at IS NULL"),
        ),
        Index("ix_timers_conversation", "conversation_id", "kind"),
        Index("ix_timers_agent", "agent_id", "kind"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"))
    kind: Mapped[str] = mapped_column(String(32))
    conversation_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("conversations.id"), default=None
    )
    agent_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("agents.id"), default=None)
    due_at: Mapped[datetime] = mapped_column()
    fired_at: Mapped[datetime | None] = mapped_column(default=None)
    cancelled_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Contact(Base):
    __tablename__ = "contacts"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"), index=True)
    display_name: Mapped[str | None] = mapped_column(String(200), default=None)
    vip: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    merged_into_contact_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("contacts.id"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


_KIND_OF_CHANNEL = {
    "email": "email",
    "sms": "phone",
    "social": "social_handle",
    "webchat": "webchat_session",
}


def _kind_of_channel(context: Any) -> str | None:
    channel = context.get_current_parameters().get("channel")
    return _KIND_OF_CHANNEL.get(str(channel)) if channel is not None else None


class ContactIdentity(Base):
    """One address of a contact, by kind (email, phone, social handle, chat session).

    Unique per workspace and kind, so the same email address reached over email and
    given in web chat is one contact. ``channel`` is where it was first seen.
    """

    __tablename__ = "contact_identities"
    __table_args__ = (
        UniqueConstraint(
            "workspace_id", "kind", "address", name="uq_contact_identities_kind_address"
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"))
    contact_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contacts.id"), index=True)
    channel: Mapped[str] = mapped_column(String(16))
    # Defaults to the kind the channel implies, for code that only names the channel.
    kind: Mapped[str] = mapped_column(String(32), default=_kind_of_channel)
    address: Mapped[str] = mapped_column(String(320))
    # Messaging consent (e.g. SMS STOP): replies are not sent while this is set.
    opted_out_at: Mapped[datetime | None] = mapped_column(default=None)
    opt_out_keyword: Mapped[str | None] = mapped_column(String(32), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChannelAccount(Base):
    """A workspace's address on a channel (e.g. support@acme.example) and its adapter.

    Provider secrets are never stored here, only a reference (``env:NAME`` or
    ``file:/path``) resolved by the service that needs it.
    """

    __tablename__ = "channel_accounts"
    __table_args__ = (
        UniqueConstraint("channel", "address", name="uq_channel_accounts_channel_address"),
        Index("ix_channel_accounts_workspace", "workspace_id", "channel"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"))
    channel: Mapped[str] = mapped_column(String(16))
    adapter: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str | None] = mapped_column(String(200), default=None)
    secret_ref: Mapped[str | None] = mapped_column(String(500), default=None)
    settings: Mapped[dict[str, Any]] = mapped_column(
        JSON, default=dict, server_default=text("'{}'")
    )
    enabled: Mapped[bool] = mapped_column(default=True, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookReplayToken(Base):
    """Signed webhook tokens already accepted (e.g. Mailgun's), so a replay is refused."""

    __tablename__ = "webhook_replay_tokens"

    adapter: Mapped[str] = mapped_column(String(64), primary_key=True)
    token: Mapped[str] = mapped_column(String(200), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        # At most one conversation per thread that is not resolved yet.
        Index(
            "uq_conversations_open_thread",
            "workspace_id",
            "channel",
            "thread_key",
            unique=True,
            postgresql_where=text("status <> 'resolved'"),
            sqlite_where=text("status <> 'resolved'"),
        ),
        Index("ix_conversations_assignee", "workspace_id", "assignee_agent_id", "status"),
        # The token in a `support+<token>@…` address leads a reply to its conversation.
        Index("uq_conversations_reply_token", "workspace_id", "reply_token", unique=True),
        Index("ix_conversations_queue", "workspace_id", "status", "priority", "created_at"),
        Index(
            "ix_conversations_waiting",
            "workspace_id",
            "priority",
            "queued_at",
            postgresql_where=text("status = 'queued'"),
            sqlite_where=text("status = 'queued'"),
        ),
        CheckConstraint("tier BETWEEN 1 AND 3", name="tier_range"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"))
    contact_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contacts.id"), index=True)
    channel: Mapped[str] = mapped_column(String(16))
    thread_key: Mapped[str] = mapped_column(String(400))
    channel_account_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("channel_accounts.id"), default=None
    )
    customer_address: Mapped[str | None] = mapped_column(String(320), default=None)
    subject: Mapped[str | None] = mapped_column(String(998), default=None)
    reply_token: Mapped[str | None] = mapped_column(String(32), default=None)
    status: Mapped[str] = mapped_column(String(16), default=ConversationStatus.QUEUED.value)
    tier: Mapped[int] = mapped_column(Integer, default=1)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    assignee_agent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("agents.id"), default=None
    )
    team_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("teams.id"), default=None)
    required_skills: Mapped[list[str]] = mapped_column(
        JSON, default=list, server_default=text("'[]'")
    )
    language: Mapped[str | None] = mapped_column(String(16), default=None)
    queued_at: Mapped[datetime | None] = mapped_column(default=None)
    queue_notice: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    intake: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # The latest routing decision when it was no assignment (e.g. queued); None when it
    # was the latest assignment, whose explanation holds it.
    routing_explanation: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    outcome_code: Mapped[str | None] = mapped_column(String(64), default=None)
    snoozed_until: Mapped[datetime | None] = mapped_column(default=None)
    sla_due_at: Mapped[datetime | None] = mapped_column(default=None)
    first_response_at: Mapped[datetime | None] = mapped_column(default=None)
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)
    last_message_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        # Idempotency of inbound delivery: one row per provider message id.
        UniqueConstraint(
            "workspace_id", "channel", "provider_message_id", name="uq_messages_provider_id"
        ),
        Index("ix_messages_conversation_created", "conversation_id", "created_at"),
        Index("ix_messages_email_message_id", "workspace_id", "email_message_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"))
    conversation_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("conversations.id"))
    channel: Mapped[str] = mapped_column(String(16))
    direction: Mapped[str] = mapped_column(String(16))
    provider_message_id: Mapped[str | None] = mapped_column(String(200), default=None)
    author_agent_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("agents.id"), default=None)
    text: Mapped[str] = mapped_column(Text)
    delivery_status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.RECEIVED.value)
    delivery_status_reason: Mapped[str | None] = mapped_column(String(500), default=None)
    subject: Mapped[str | None] = mapped_column(String(998), default=None)
    # The email `Message-ID` (inbound: the customer's; outbound: ours), for threading.
    email_message_id: Mapped[str | None] = mapped_column(String(998), default=None)
    # How the message found its conversation: rule, matched value, candidates.
    threading: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    attachments: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    # The text as received, before quoted replies and signatures were stripped.
    original_text: Mapped[str | None] = mapped_column(Text, default=None)
    # Channel specifics (e.g. email In-Reply-To, References, To, Cc, raw MIME key).
    channel_data: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    mentions: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (
        # One owner: at most one open assignment per conversation, enforced by the DB.
        Index(
            "uq_assignments_one_open_per_conversation",
            "conversation_id",
            unique=True,
            postgresql_where=text("closed_at IS NULL"),
            sqlite_where=text("closed_at IS NULL"),
        ),
        Index("ix_assignments_agent_open", "agent_id", "closed_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"))
    conversation_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("conversations.id"))
    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id"))
    reason: Mapped[str] = mapped_column(String(64))
    explanation: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Never loaded or set: it tells the unit of work that a conversation inserted in the
    # same flush goes first (without a relationship, mappers flush in name order, and
    # "Assignment" sorts before "Conversation").
    conversation: Mapped[Conversation] = relationship(lazy="raise")
    load_units: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(default=None)
    closed_reason: Mapped[str | None] = mapped_column(String(64), default=None)


class OutboxEvent(Base):
    """Events written in the business transaction; ``id`` is the stream sequence (``seq``)."""

    __tablename__ = "outbox_events"
    __table_args__ = (
        Index(
            "ix_outbox_events_unpublished",
            "id",
            postgresql_where=text("published_at IS NULL"),
            sqlite_where=text("published_at IS NULL"),
        ),
        Index("ix_outbox_events_workspace_seq", "workspace_id", "id"),
        Index("uq_outbox_events_seq", "seq", unique=True),
        Index("ix_outbox_events_workspace_stream", "workspace_id", "seq"),
    )

    id: Mapped[int] = mapped_column(SequenceId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"))
    topic: Mapped[str] = mapped_column(String(200))
    record_key: Mapped[str] = mapped_column(String(400))
    event_type: Mapped[str] = mapped_column(String(200))
    envelope: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(default=None)
    # Stream position, given after commit in commit order: what WebSocket clients resume
    # from (``seq``). ``id`` is not enough: ids are handed out before commit.
    seq: Mapped[int | None] = mapped_column(SequenceId, default=None)


class ApiKey(Base):
    """A key for integrations: shown once, stored as a SHA-256 hash."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    key_prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    created_by_agent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("agents.id"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class CannedResponse(Base):
    __tablename__ = "canned_responses"
    __table_args__ = (
        UniqueConstraint("workspace_id", "shortcut", name="uq_canned_responses_shortcut"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"))
    shortcut: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class OutcomeCode(Base):
    """Resolution outcomes a workspace offers on resolve (e.g. solved, refunded)."""

    __tablename__ = "outcome_codes"
    __table_args__ = (UniqueConstraint("workspace_id", "code", name="uq_outcome_codes_code"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"))
    code: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyRecord(Base):
    """The first response to a POST with an ``Idempotency-Key``, replayed for retries."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("scope", "key", name="uq_idempotency_keys_scope_key"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    scope: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(200))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(500))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    response_body: Mapped[str | None] = mapped_column(Text, default=None)
    content_type: Mapped[str | None] = mapped_column(String(100), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Consultation(Base):
    """The owner asks another agent or a team for help; ownership does not change."""

    __tablename__ = "consultations"
    __table_args__ = (Index("ix_consultations_consultant", "consultant_agent_id", "closed_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"))
    conversation_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("conversations.id"), index=True)
    requested_by_agent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("agents.id"), default=None
    )
    consultant_agent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("agents.id"), default=None
    )
    team_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("teams.id"), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookSubscription(Base):
    """An integration's endpoint (e.g. a CRM) that receives the workspace's events."""

    __tablename__ = "webhook_subscriptions"
    __table_args__ = (Index("ix_webhook_subscriptions_workspace", "workspace_id", "enabled"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"))
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str | None] = mapped_column(String(200), default=None)
    event_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Kept in clear: every delivery is signed with it (shown to the admin once).
    secret: Mapped[str] = mapped_column(String(100))
    enabled: Mapped[bool] = mapped_column(default=True, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class WebhookDelivery(Base):
    """One event for one subscription: pending until accepted (2xx) or given up.

    Due deliveries are claimed with FOR UPDATE SKIP LOCKED, like timers."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("subscription_id", "event_id", name="uq_webhook_deliveries_event"),
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        Index("ix_webhook_deliveries_subscription", "subscription_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"))
    subscription_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_subscriptions.id"))
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(200))
    # The exact bytes sent (and signed), so retries and replays send the same body.
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    give_up_after: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookAttempt(Base):
    """The delivery log: one row per HTTP attempt."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "number"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"))
    subscription_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_subscriptions.id"))
    delivery_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_deliveries.id"))
    number: Mapped[int] = mapped_column(Integer)
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(String(500), default=None)
    duration_ms: Mapped[float] = mapped_column(Float)


class NoticeRecipientStatus(StrEnum):
    QUEUED = "queued"
    SKIPPED = "skipped"


class Notice(Base):
    """A proactive message to a set of contacts, each on their preferred channel."""

    __tablename__ = "notices"
    __table_args__ = (Index("ix_notices_workspace_created", "workspace_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"))
    subject: Mapped[str | None] = mapped_column(String(998), default=None)
    text: Mapped[str] = mapped_column(Text)
    channel: Mapped[str | None] = mapped_column(String(16), default=None)
    created_by_agent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("agents.id"), default=None
    )
    created_by_api_key_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("api_keys.id"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class NoticeRecipient(Base):
    """One contact of a notice: skipped (with the reason) or its queued message, whose
    delivery status (sent, delivered, failed) the delivery receipts keep current."""

    __tablename__ = "notice_recipients"
    __table_args__ = (
        UniqueConstraint("notice_id", "contact_id", name="uq_notice_recipients_contact"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"))
    notice_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("notices.id"))
    contact_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contacts.id"))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(500), default=None)
    channel: Mapped[str | None] = mapped_column(String(16), default=None)
    conversation_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("conversations.id"), default=None
    )
    message_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("messages.id"), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CsatSettingsRow(Base):
    """A workspace's CSAT survey settings (``shared.csat.CsatSettings`` as JSON)."""

    __tablename__ = "csat_settings"

    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"), primary_key=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class CsatSurvey(Base):
    """A satisfaction survey sent on resolve; answered once (link or a 1-5 reply).

    Agent, team, channel and tier are the conversation's at resolve, so results stay
    attributed to who handled it."""

    __tablename__ = "csat_surveys"
    __table_args__ = (
        CheckConstraint("score BETWEEN 1 AND 5", name="score_range"),
        # A 1-5 reply finds the pending survey of its thread.
        Index(
            "ix_csat_surveys_pending_reply",
            "workspace_id",
            "channel",
            "thread_key",
            "sent_at",
            postgresql_where=text("responded_at IS NULL AND accepts_reply"),
            sqlite_where=text("responded_at IS NULL AND accepts_reply"),
        ),
        Index("ix_csat_surveys_responded", "workspace_id", "responded_at"),
        Index("ix_csat_surveys_conversation", "conversation_id", "sent_at"),
        Index("ix_csat_surveys_sent", "workspace_id", "sent_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"))
    conversation_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("conversations.id"))
    channel: Mapped[str] = mapped_column(String(16))
    thread_key: Mapped[str] = mapped_column(String(400))
    tier: Mapped[int] = mapped_column(Integer)
    agent_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("agents.id"), default=None)
    team_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("teams.id"), default=None)
    message_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("messages.id"), default=None)
    accepts_reply: Mapped[bool] = mapped_column(default=False)
    sent_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    score: Mapped[int | None] = mapped_column(Integer, default=None)
    answered_via: Mapped[str | None] = mapped_column(String(16), default=None)
    responded_at: Mapped[datetime | None] = mapped_column(default=None)


class CsatFollowUp(Base):
    """A low score a supervisor follows up; open until closed with a note."""

    __tablename__ = "csat_follow_ups"
    __table_args__ = (
        UniqueConstraint("survey_id", name="uq_csat_follow_ups_survey"),
        Index("ix_csat_follow_ups_open", "workspace_id", "closed_at", "opened_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"))
    survey_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("csat_surveys.id"))
    conversation_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("conversations.id"))
    agent_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("agents.id"), default=None)
    score: Mapped[int] = mapped_column(Integer)
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(default=None)
    closed_by_agent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("agents.id"), default=None
    )
    note: Mapped[str | None] = mapped_column(Text, default=None)


# Time-window indexes the analytics and the supervisor wall read (a window is an index
# range, never a full scan).
Index("ix_conversations_workspace_created", Conversation.workspace_id, Conversation.created_at)
Index("ix_messages_workspace_created", Message.workspace_id, Message.created_at)
Index("ix_assignments_conversation_created", Assignment.conversation_id, Assignment.created_at)


class PendingDeliveryReceipt(Base):
    """A provider's receipt that came before we knew which reply it is about.

    Receipts name the provider's message id, which the router learns from the
    dispatcher's "sent" report; the two travel on different keys, so a fast receipt can
    win. It waits here (durably) until its message is known, then is applied and
    deleted; rows never matched are deleted after a retention period.
    """

    __tablename__ = "pending_receipts"
    __table_args__ = (
        UniqueConstraint(
            "workspace_id",
            "channel",
            "provider_message_id",
            "status",
            name="uq_pending_receipts_provider_status",
        ),
        Index("ix_pending_receipts_received_at", "received_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"))
    channel: Mapped[str] = mapped_column(String(16))
    provider_message_id: Mapped[str] = mapped_column(String(998))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(500), default=None)
    adapter: Mapped[str | None] = mapped_column(String(64), default=None)
    occurred_at: Mapped[datetime] = mapped_column()
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebChatSettingsRow(Base):
    """A workspace's web-chat settings: the site origins the widget may be used from."""

    __tablename__ = "webchat_settings"

    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"), primary_key=True)
    allowed_origins: Mapped[list[str]] = mapped_column(JSON, default=list)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class SentReply(Base):
    """The send ledger: an outbound message ingest's provider dispatcher handed to its
    provider, written right after the provider accepted it. A dispatcher that is given
    the message again (a restart or a rebalance redelivers what was not committed yet)
    finds it here and does not send it a second time. Web chat is not recorded (every
    replica pushes to the sockets it holds). Rows older than the outbound topic's
    retention are pruned: no record that could be redelivered names them any more.
    """

    __tablename__ = "sent_replies"
    __table_args__ = (Index("ix_sent_replies_sent_at", "sent_at"),)

    message_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"))
    channel: Mapped[str] = mapped_column(String(16))
    adapter: Mapped[str] = mapped_column(String(64))
    provider_message_id: Mapped[str] = mapped_column(String(998))
    sent_at: Mapped[datetime] = mapped_column(default=utcnow)
