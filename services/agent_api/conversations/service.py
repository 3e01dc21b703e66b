"""Conversation use cases; the caller commits (and publishes the outbox) at the edge."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.agent_api.auth import AgentClaims
from shared.db.models import (
    Agent,
    AgentRole,
    ContactIdentity,
    Conversation,
    ConversationStatus,
    DeliveryStatus,
    Message,
    utcnow,
)
from shared.events import (
    Channel,
    MessageCreated,
    MessageDirection,
    OutboundMessageRequested,
    Topic,
    conversation_key,
)
from shared.outbox import record_event
from shared.problems import ProblemError

EVENT_SOURCE = "omniroute/agent-api"


def encode_cursor(last_message_at: datetime, conversation_id: uuid.UUID) -> str:
    raw = f"{last_message_at.isoformat()}|{conversation_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        stamp, conversation_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(stamp), uuid.UUID(conversation_id)
    except ValueError as exc:
        raise ProblemError(400, "The cursor is not one this API issued.") from exc


async def list_conversations(
    session: AsyncSession,
    claims: AgentClaims,
    *,
    status: ConversationStatus | None,
    everyone: bool,
    limit: int,
    cursor: str | None,
) -> tuple[list[Conversation], str | None]:
    """Newest activity first, keyset-paginated; agents see their own, supervisors all."""
    query = select(Conversation).where(Conversation.workspace_id == claims.workspace_id)
    if not (everyone and claims.role in (AgentRole.SUPERVISOR.value, AgentRole.ADMIN.value)):
        query = query.where(Conversation.assignee_agent_id == claims.agent_id)
    if status is not None:
        query = query.where(Conversation.status == status.value)
    if cursor is not None:
        last_at, last_id = decode_cursor(cursor)
        query = query.where(
            or_(
                Conversation.last_message_at < last_at,
                and_(Conversation.last_message_at == last_at, Conversation.id < last_id),
            )
        )
    rows = list(
        await session.scalars(
            query.order_by(Conversation.last_message_at.desc(), Conversation.id.desc()).limit(
                limit + 1
            )
        )
    )
    next_cursor = (
        encode_cursor(rows[limit - 1].last_message_at, rows[limit - 1].id)
        if len(rows) > limit
        else None
    )
    return rows[:limit], next_cursor


async def get_conversation(
    session: AsyncSession, claims: AgentClaims, conversation_id: uuid.UUID
) -> Conversation:
    """A conversation of the caller's workspace; any other id answers 404."""
    conversation = await session.scalar(
        select(Conversation).where(
            Conversation.id == conversation_id,
            Conversation.workspace_id == claims.workspace_id,
        )
    )
    if conversation is None:
        raise ProblemError(404, f"No conversation {conversation_id}.")
    return conversation


async def list_messages(
    session: AsyncSession, claims: AgentClaims, conversation_id: uuid.UUID, *, limit: int
) -> list[Message]:
    await get_conversation(session, claims, conversation_id)
    return list(
        await session.scalars(
            select(Message)
            .where(
                Message.workspace_id == claims.workspace_id,
                Message.conversation_id == conversation_id,
            )
            .order_by(Message.created_at, Message.id)
            .limit(limit)
        )
    )


async def reply(
    session: AsyncSession, claims: AgentClaims, conversation_id: uuid.UUID, text: str
) -> Message:
    """Store the agent's reply and, in the same transaction, the events to deliver it."""
    conversation = await get_conversation(session, claims, conversation_id)
    may_reply = conversation.assignee_agent_id == claims.agent_id or claims.role in (
        AgentRole.SUPERVISOR.value,
        AgentRole.ADMIN.value,
    )
    if not may_reply:
        raise ProblemError(403, "Only the conversation's owner (or a supervisor) can reply.")
    if conversation.status == ConversationStatus.RESOLVED.value:
        raise ProblemError(409, "The conversation is resolved; reopen it to reply.")
    recipient = await session.scalar(
        select(ContactIdentity.address).where(
            ContactIdentity.workspace_id == claims.workspace_id,
            ContactIdentity.contact_id == conversation.contact_id,
            ContactIdentity.channel == conversation.channel,
        )
    )
    if recipient is None:
        raise ProblemError(409, "The customer has no address on this conversation's channel.")
    agent_name = await session.scalar(select(Agent.display_name).where(Agent.id == claims.agent_id))
    now = utcnow()
    message = Message(
        id=uuid.uuid4(),
        workspace_id=claims.workspace_id,
        conversation_id=conversation.id,
        channel=conversation.channel,
        direction=MessageDirection.OUTBOUND.value,
        author_agent_id=claims.agent_id,
        text=text,
        delivery_status=DeliveryStatus.QUEUED.value,
        created_at=now,
    )
    session.add(message)
    conversation.last_message_at = now
    if conversation.first_response_at is None:
        conversation.first_response_at = now
    channel = Channel(conversation.channel)
    key = conversation_key(claims.workspace_id, conversation.id)
    record_event(
        session,
        MessageCreated(
            workspace_id=claims.workspace_id,
            conversation_id=conversation.id,
            message_id=message.id,
            channel=channel,
            direction=MessageDirection.OUTBOUND,
            text=text,
            author_agent_id=claims.agent_id,
            assignee_agent_id=conversation.assignee_agent_id,
            created_at=now,
        ),
        topic=Topic.EVENTS,
        key=key,
        source=EVENT_SOURCE,
        subject=str(conversation.id),
    )
    record_event(
        session,
        OutboundMessageRequested(
            workspace_id=claims.workspace_id,
            conversation_id=conversation.id,
            message_id=message.id,
            channel=channel,
            recipient_address=recipient,
            text=text,
            agent_display_name=agent_name,
            created_at=now,
        ),
        topic=Topic.OUTBOUND,
        key=key,
        source=EVENT_SOURCE,
        subject=str(conversation.id),
    )
    await session.flush()
    return message
