"""Routing one inbound message inside the batch's transaction: thread, store, assign."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.bus.consumer import PoisonRecordError
from shared.db.models import (
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
    MessageCreated,
    MessageDirection,
    MessageReceived,
    Topic,
    conversation_key,
)
from shared.metrics import ROUTING_DECISIONS
from shared.outbox import record_event
from shared.routing.business_hours import is_open
from shared.routing.engine import (
    PolicyCache,
    RoutingContext,
    assign_or_queue,
    start_sla_clock,
    team_id_named,
    tell_customer,
)
from shared.routing.intake import decide_intake

EVENT_SOURCE = "omniroute/router"


@dataclass(frozen=True)
class RoutingOutcome:
    conversation_id: uuid.UUID | None
    message_id: uuid.UUID | None
    duplicate: bool = False
    assigned_agent_id: uuid.UUID | None = None


async def route_inbound(
    session: AsyncSession, inbound: MessageReceived, policies: PolicyCache
) -> RoutingOutcome:
    """Store ``inbound`` once, in its conversation; a new conversation gets an owner or
    a place in the queue, its intake decision and its first-response clock."""
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

    policy = await policies.get(session, inbound.workspace_id)
    ctx = RoutingContext(session=session, policy=policy, source=EVENT_SOURCE)
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
    is_new = conversation is None
    if conversation is None:
        conversation = await _open_conversation(ctx, inbound, contact)
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

    if is_new:
        await start_sla_clock(ctx, conversation)
        await assign_or_queue(ctx, conversation, reason="new_conversation")

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
            received_at=inbound.received_at,
        ),
        topic=Topic.EVENTS,
        key=conversation_key(inbound.workspace_id, conversation.id),
        source=EVENT_SOURCE,
        subject=str(conversation.id),
    )
    hours = policy.business_hours
    if is_new and hours is not None and not is_open(hours, now):
        await tell_customer(
            ctx, conversation, hours.off_hours_message.format(hours=hours.describe())
        )
    return RoutingOutcome(
        conversation_id=conversation.id,
        message_id=message.id,
        assigned_agent_id=conversation.assignee_agent_id,
    )


async def _open_conversation(
    ctx: RoutingContext, inbound: MessageReceived, contact: Contact
) -> Conversation:
    decision = decide_intake(
        ctx.policy.intake_rules, text=inbound.text, vip=contact.vip, channel=inbound.channel
    )
    team_id = (
        await team_id_named(ctx.session, inbound.workspace_id, decision.team)
        if decision.team
        else None
    )
    now = utcnow()
    conversation = Conversation(
        id=uuid.uuid4(),
        workspace_id=inbound.workspace_id,
        contact_id=contact.id,
        channel=inbound.channel.value,
        thread_key=inbound.thread_key,
        status=ConversationStatus.QUEUED.value,
        tier=decision.tier,
        priority=decision.priority,
        team_id=team_id,
        required_skills=sorted(decision.skills),
        language=inbound.language,
        intake={
            "matched_rules": list(decision.matched_rules),
            "sentiment": decision.sentiment,
            "team": decision.team,
            "team_found": team_id is not None if decision.team else None,
        },
        created_at=now,
        last_message_at=now,
    )
    ctx.session.add(conversation)
    await ctx.session.flush()
    return conversation


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
