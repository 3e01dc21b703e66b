"""Media fetched after the webhook (``MessageAttachmentsStored``) applied to the message
the router stored from the webhook: its attachments now carry attachment-store keys and
real sizes; items that could not be fetched keep the provider's URL and their reason in
``channel_data.media_failures``. The owner's client is told
(``message.attachments_updated``)."""

from __future__ import annotations

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import Conversation, Message, utcnow
from shared.events import (
    MessageAttachmentsStored,
    MessageAttachmentsUpdated,
    MessageDirection,
    Topic,
    conversation_key,
)
from shared.outbox import record_event

EVENT_SOURCE = "omniroute/router"

log = structlog.get_logger(__name__)


async def apply_stored_attachments(session: AsyncSession, stored: MessageAttachmentsStored) -> bool:
    """Update the inbound message's attachments; False when there is no such message."""
    message = await session.scalar(
        select(Message).where(
            Message.workspace_id == stored.workspace_id,
            Message.channel == stored.channel.value,
            Message.provider_message_id == stored.provider_message_id,
            Message.direction == MessageDirection.INBOUND.value,
        )
    )
    if message is None:
        log.warning(
            "fetched media for a message that was not stored",
            provider_message_id=stored.provider_message_id,
        )
        return False
    message.attachments = [a.model_dump(mode="json") for a in stored.attachments] or None
    details = dict(message.channel_data or {})
    details["media_failures"] = [f.model_dump(mode="json") for f in stored.failures]
    message.channel_data = details
    conversation = await session.get(Conversation, message.conversation_id)
    record_event(
        session,
        MessageAttachmentsUpdated(
            workspace_id=message.workspace_id,
            conversation_id=message.conversation_id,
            message_id=message.id,
            channel=stored.channel,
            attachments=stored.attachments,
            failures=stored.failures,
            assignee_agent_id=conversation.assignee_agent_id if conversation else None,
            updated_at=utcnow(),
        ),
        topic=Topic.EVENTS,
        key=conversation_key(message.workspace_id, message.conversation_id),
        source=EVENT_SOURCE,
        subject=str(message.conversation_id),
    )
    await session.flush()
    return True
