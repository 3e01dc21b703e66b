"""Messages to the customer, written once for agents' replies and system notices alike.

The message row and its events (``message.created`` for agents, ``message.outbound``
for the channel) are written in the caller's transaction through the outbox.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import ContactIdentity, Conversation, DeliveryStatus, Message, utcnow
from shared.events import (
    Channel,
    MessageCreated,
    MessageDirection,
    OutboundMessageRequested,
    Topic,
    conversation_key,
)
from shared.outbox import record_event


class NoCustomerAddressError(Exception):
    """The customer has no address on the conversation's channel."""


async def customer_address(session: AsyncSession, conversation: Conversation) -> str:
    address = await session.scalar(
        select(ContactIdentity.address).where(
            ContactIdentity.workspace_id == conversation.workspace_id,
            ContactIdentity.contact_id == conversation.contact_id,
            ContactIdentity.channel == conversation.channel,
        )
    )
    if address is None:
        raise NoCustomerAddressError(str(conversation.id))
    return address


async def send_to_customer(
    session: AsyncSession,
    conversation: Conversation,
    text: str,
    *,
    source: str,
    direction: MessageDirection = MessageDirection.SYSTEM,
    author_agent_id: uuid.UUID | None = None,
    author_display_name: str | None = None,
) -> Message:
    """Store an outbound or system message and queue its delivery on the channel."""
    recipient = await customer_address(session, conversation)
    now = utcnow()
    message = Message(
        id=uuid.uuid4(),
        workspace_id=conversation.workspace_id,
        conversation_id=conversation.id,
        channel=conversation.channel,
        direction=direction.value,
        author_agent_id=author_agent_id,
        text=text,
        delivery_status=DeliveryStatus.QUEUED.value,
        created_at=now,
    )
    session.add(message)
    conversation.last_message_at = now
    channel = Channel(conversation.channel)
    key = conversation_key(conversation.workspace_id, conversation.id)
    record_event(
        session,
        MessageCreated(
            workspace_id=conversation.workspace_id,
            conversation_id=conversation.id,
            message_id=message.id,
            channel=channel,
            direction=direction,
            text=text,
            author_agent_id=author_agent_id,
            assignee_agent_id=conversation.assignee_agent_id,
            created_at=now,
        ),
        topic=Topic.EVENTS,
        key=key,
        source=source,
        subject=str(conversation.id),
    )
    record_event(
        session,
        OutboundMessageRequested(
            workspace_id=conversation.workspace_id,
            conversation_id=conversation.id,
            message_id=message.id,
            channel=channel,
            recipient_address=recipient,
            text=text,
            agent_display_name=author_display_name,
            created_at=now,
        ),
        topic=Topic.OUTBOUND,
        key=key,
        source=source,
        subject=str(conversation.id),
    )
    await session.flush()
    return message
