"""Conversation use cases; the caller commits (and publishes the outbox) at the edge."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.agent_api.auth import AgentClaims
from shared.conversations import NoCustomerAddressError, send_to_customer
from shared.db.models import (
    Agent,
    AgentRole,
    Assignment,
    Conversation,
    ConversationStatus,
    Message,
)
from shared.events import MessageDirection
from shared.problems import ProblemError
from shared.routing.engine import (
    EscalationOutcome,
    RoutingContext,
    cancel_sla_clock,
    team_id_named,
)
from shared.routing.engine import escalate as escalate_conversation
from shared.routing.policy import RoutingPolicy

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
    _require_owner_or_supervisor(conversation, claims, "reply")
    if conversation.status == ConversationStatus.RESOLVED.value:
        raise ProblemError(409, "The conversation is resolved; reopen it to reply.")
    agent_name = await session.scalar(select(Agent.display_name).where(Agent.id == claims.agent_id))
    try:
        message = await send_to_customer(
            session,
            conversation,
            text,
            source=EVENT_SOURCE,
            direction=MessageDirection.OUTBOUND,
            author_agent_id=claims.agent_id,
            author_display_name=agent_name,
        )
    except NoCustomerAddressError as exc:
        raise ProblemError(
            409, "The customer has no address on this conversation's channel."
        ) from exc
    if conversation.first_response_at is None:
        conversation.first_response_at = message.created_at
        await cancel_sla_clock(session, conversation)
    return message


def _require_owner_or_supervisor(
    conversation: Conversation, claims: AgentClaims, action: str
) -> None:
    if conversation.assignee_agent_id == claims.agent_id or claims.role in (
        AgentRole.SUPERVISOR.value,
        AgentRole.ADMIN.value,
    ):
        return
    raise ProblemError(403, f"Only the conversation's owner (or a supervisor) can {action}.")


async def escalate(
    session: AsyncSession,
    claims: AgentClaims,
    conversation_id: uuid.UUID,
    *,
    reason: str,
    team: str | None,
    policy: RoutingPolicy,
) -> EscalationOutcome:
    """Manual escalation by the owner: next tier, or to a named team."""
    conversation = await get_conversation(session, claims, conversation_id)
    _require_owner_or_supervisor(conversation, claims, "escalate")
    if conversation.status == ConversationStatus.RESOLVED.value:
        raise ProblemError(409, "The conversation is resolved.")
    team_id = None
    if team is not None:
        team_id = await team_id_named(session, claims.workspace_id, team)
        if team_id is None:
            raise ProblemError(422, f"No team named {team!r} in this workspace.")
    ctx = RoutingContext(session=session, policy=policy, source=EVENT_SOURCE)
    return await escalate_conversation(
        ctx,
        conversation,
        trigger="agent",
        reason=reason,
        by_agent_id=claims.agent_id,
        team_id=team_id,
    )


async def routing_history(
    session: AsyncSession, claims: AgentClaims, conversation_id: uuid.UUID
) -> tuple[Conversation, list[Assignment]]:
    conversation = await get_conversation(session, claims, conversation_id)
    assignments = list(
        await session.scalars(
            select(Assignment)
            .where(
                Assignment.workspace_id == claims.workspace_id,
                Assignment.conversation_id == conversation_id,
            )
            .order_by(Assignment.created_at)
        )
    )
    return conversation, assignments
