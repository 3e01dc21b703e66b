"""Routing one inbound message inside the batch's transaction: thread, store, assign."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.router.assignment import AgentCandidate, rank_agents
from shared.bus.consumer import PoisonRecordError
from shared.capacity import UNITS_PER_CONVERSATION, reserve_capacity
from shared.db.models import (
    Agent,
    AgentStatus,
    Assignment,
    Contact,
    ContactIdentity,
    Conversation,
    ConversationStatus,
    DeliveryStatus,
    Message,
    Workspace,
    utcnow,
)
from shared.events import (
    ConversationAssigned,
    ConversationQueued,
    MessageCreated,
    MessageDirection,
    MessageReceived,
    Topic,
    conversation_key,
)
from shared.metrics import ROUTING_DECISIONS
from shared.outbox import record_event

EVENT_SOURCE = "omniroute/router"


@dataclass(frozen=True)
class RoutingOutcome:
    conversation_id: uuid.UUID | None
    message_id: uuid.UUID | None
    duplicate: bool = False
    assigned_agent_id: uuid.UUID | None = None


async def route_inbound(session: AsyncSession, inbound: MessageReceived) -> RoutingOutcome:
    """Store ``inbound`` once, in its conversation, and give a new conversation an owner."""
    workspace_exists = await session.scalar(
        select(Workspace.id).where(Workspace.id == inbound.workspace_id)
    )
    if workspace_exists is None:
        raise PoisonRecordError(f"unknown workspace {inbound.workspace_id}")

    existing = await session.scalar(
        select(Message.id).where(
            Message.workspace_id == inbound.workspace_id,
            Message.channel == inbound.channel.value,
            Message.provider_message_id == inbound.provider_message_id,
        )
    )
    if existing is not None:
        ROUTING_DECISIONS.labels(outcome="duplicate").inc()
        return RoutingOutcome(conversation_id=None, message_id=existing, duplicate=True)

    contact = await _find_or_create_contact(session, inbound)
    conversation = await session.scalar(
        select(Conversation).where(
            Conversation.workspace_id == inbound.workspace_id,
            Conversation.channel == inbound.channel.value,
            Conversation.thread_key == inbound.thread_key,
            Conversation.status != ConversationStatus.RESOLVED.value,
        )
    )
    now = utcnow()
    if conversation is None:
        conversation = Conversation(
            id=uuid.uuid4(),
            workspace_id=inbound.workspace_id,
            contact_id=contact.id,
            channel=inbound.channel.value,
            thread_key=inbound.thread_key,
            status=ConversationStatus.QUEUED.value,
            created_at=now,
            last_message_at=now,
        )
        session.add(conversation)
        await session.flush()
    conversation.last_message_at = now

    message = Message(
        id=uuid.uuid4(),
        workspace_id=inbound.workspace_id,
        conversation_id=conversation.id,
        channel=inbound.channel.value,
        direction=MessageDirection.INBOUND.value,
        provider_message_id=inbound.provider_message_id,
        text=inbound.text,
        delivery_status=DeliveryStatus.RECEIVED.value,
        created_at=now,
    )
    session.add(message)
    await session.flush()

    if conversation.status == ConversationStatus.QUEUED.value:
        await _assign_or_queue(session, conversation, contact, inbound)

    key = conversation_key(inbound.workspace_id, conversation.id)
    record_event(
        session,
        MessageCreated(
            workspace_id=inbound.workspace_id,
            conversation_id=conversation.id,
            message_id=message.id,
            channel=inbound.channel,
            direction=MessageDirection.INBOUND,
            text=message.text,
            assignee_agent_id=conversation.assignee_agent_id,
            created_at=message.created_at,
        ),
        topic=Topic.EVENTS,
        key=key,
        source=EVENT_SOURCE,
        subject=str(conversation.id),
    )
    return RoutingOutcome(
        conversation_id=conversation.id,
        message_id=message.id,
        assigned_agent_id=conversation.assignee_agent_id,
    )


async def _find_or_create_contact(session: AsyncSession, inbound: MessageReceived) -> Contact:
    identity = await session.scalar(
        select(ContactIdentity).where(
            ContactIdentity.workspace_id == inbound.workspace_id,
            ContactIdentity.channel == inbound.channel.value,
            ContactIdentity.address == inbound.sender.address,
        )
    )
    if identity is not None:
        contact = await session.get(Contact, identity.contact_id)
        if contact is not None:
            return contact
    contact = Contact(
        id=uuid.uuid4(),
        workspace_id=inbound.workspace_id,
        display_name=inbound.sender.display_name,
    )
    session.add(contact)
    await session.flush()
    session.add(
        ContactIdentity(
            workspace_id=inbound.workspace_id,
            contact_id=contact.id,
            channel=inbound.channel.value,
            address=inbound.sender.address,
        )
    )
    return contact


async def _assign_or_queue(
    session: AsyncSession,
    conversation: Conversation,
    contact: Contact,
    inbound: MessageReceived,
) -> None:
    units = UNITS_PER_CONVERSATION[inbound.channel]
    rows = await session.execute(
        select(
            Agent.id, Agent.status, Agent.capacity_units, Agent.load_units, Agent.last_assigned_at
        ).where(
            Agent.workspace_id == inbound.workspace_id,
            Agent.status == AgentStatus.ONLINE.value,
        )
    )
    ranking = rank_agents(
        [
            AgentCandidate(
                agent_id=row.id,
                status=row.status,
                capacity_units=row.capacity_units,
                load_units=row.load_units,
                last_assigned_at=row.last_assigned_at,
            )
            for row in rows
        ],
        units=units,
    )
    key = conversation_key(inbound.workspace_id, conversation.id)
    for candidate in ranking.eligible:
        # The ranking read may be stale: the conditional UPDATE is what decides.
        if not await reserve_capacity(
            session, workspace_id=inbound.workspace_id, agent_id=candidate.agent_id, units=units
        ):
            continue
        assignment = Assignment(
            id=uuid.uuid4(),
            workspace_id=inbound.workspace_id,
            conversation_id=conversation.id,
            agent_id=candidate.agent_id,
            reason="new_conversation",
            explanation=ranking.explanation(candidate.agent_id),
            load_units=units,
        )
        session.add(assignment)
        conversation.status = ConversationStatus.ASSIGNED.value
        conversation.assignee_agent_id = candidate.agent_id
        await session.flush()
        record_event(
            session,
            ConversationAssigned(
                workspace_id=inbound.workspace_id,
                conversation_id=conversation.id,
                assignment_id=assignment.id,
                agent_id=candidate.agent_id,
                channel=inbound.channel,
                contact_display_name=contact.display_name,
                reason=assignment.reason,
                assigned_at=assignment.created_at,
            ),
            topic=Topic.EVENTS,
            key=key,
            source=EVENT_SOURCE,
            subject=str(conversation.id),
        )
        ROUTING_DECISIONS.labels(outcome="assigned").inc()
        return
    ROUTING_DECISIONS.labels(outcome="queued").inc()
    record_event(
        session,
        ConversationQueued(
            workspace_id=inbound.workspace_id,
            conversation_id=conversation.id,
            channel=inbound.channel,
            priority=conversation.priority,
            queued_at=utcnow(),
        ),
        topic=Topic.EVENTS,
        key=key,
        source=EVENT_SOURCE,
        subject=str(conversation.id),
    )
