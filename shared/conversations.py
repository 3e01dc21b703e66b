"""Messages to the customer, written once for agents' replies and system notices alike.

The message row and its events (``message.created`` for agents, ``message.outbound``
for the channel) are written in the caller's transaction through the outbox. For
email the reply's headers are decided here, in the same transaction: our own
``Message-ID`` (stored on the message, so the customer's answer finds its way back),
``In-Reply-To``/``References`` to the customer's latest message, ``Re:`` subject, and a
``Reply-To`` with the conversation's reply token.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.channels.email.headers import (
    address_with_token,
    new_message_id,
    new_reply_token,
    references_for_reply,
    reply_subject,
)
from shared.channels.identities import kind_of_channel
from shared.db.models import (
    ChannelAccount,
    ContactIdentity,
    Conversation,
    DeliveryStatus,
    Message,
    utcnow,
)
from shared.events import (
    Channel,
    MessageCreated,
    MessageDirection,
    OutboundEmail,
    OutboundMessageRequested,
    Topic,
    conversation_key,
)
from shared.outbox import record_event


class NoCustomerAddressError(Exception):
    """The customer has no address on the conversation's channel."""


class NoSenderAddressError(NoCustomerAddressError):
    """The workspace has no account (our address) to write on the conversation's channel."""


async def customer_address(session: AsyncSession, conversation: Conversation) -> str:
    """Where the customer is reached in this conversation: the address they wrote from,
    else their newest identity of the channel's kind."""
    if conversation.customer_address:
        return conversation.customer_address
    address = await session.scalar(
        select(ContactIdentity.address)
        .where(
            ContactIdentity.workspace_id == conversation.workspace_id,
            ContactIdentity.contact_id == conversation.contact_id,
            ContactIdentity.kind == kind_of_channel(Channel(conversation.channel)).value,
        )
        .order_by(ContactIdentity.created_at.desc())
        .limit(1)
    )
    if address is None:
        raise NoCustomerAddressError(str(conversation.id))
    return address


async def _sending_account(session: AsyncSession, conversation: Conversation) -> ChannelAccount:
    account = None
    if conversation.channel_account_id is not None:
        account = await session.get(ChannelAccount, conversation.channel_account_id)
    if account is None or not account.enabled:
        account = await session.scalar(
            select(ChannelAccount)
            .where(
                ChannelAccount.workspace_id == conversation.workspace_id,
                ChannelAccount.channel == conversation.channel,
                ChannelAccount.enabled.is_(True),
            )
            .order_by(ChannelAccount.created_at)
            .limit(1)
        )
    if account is None:
        raise NoSenderAddressError(str(conversation.id))
    return account


async def _email_parent(session: AsyncSession, conversation: Conversation) -> Message | None:
    """The message a reply answers: the customer's latest email, else our latest."""
    for direction in (MessageDirection.INBOUND, MessageDirection.OUTBOUND):
        parent = await session.scalar(
            select(Message)
            .where(
                Message.workspace_id == conversation.workspace_id,
                Message.conversation_id == conversation.id,
                Message.direction == direction.value,
                Message.email_message_id.is_not(None),
            )
            .order_by(Message.created_at.desc(), Message.id.desc())
            .limit(1)
        )
        if parent is not None:
            return parent
    return None


async def _answered_provider_id(session: AsyncSession, conversation: Conversation) -> str | None:
    """The provider's id of the customer's latest message (a reply on a public post is
    posted under the latest comment)."""
    return await session.scalar(
        select(Message.provider_message_id)
        .where(
            Message.workspace_id == conversation.workspace_id,
            Message.conversation_id == conversation.id,
            Message.direction == MessageDirection.INBOUND.value,
            Message.provider_message_id.is_not(None),
        )
        .order_by(Message.created_at.desc(), Message.id.desc())
        .limit(1)
    )


async def outbound_email(
    session: AsyncSession, conversation: Conversation, *, direction: MessageDirection
) -> tuple[ChannelAccount, OutboundEmail]:
    """The headers of the next email in ``conversation`` (threaded to its latest)."""
    account = await _sending_account(session, conversation)
    if conversation.reply_token is None:
        conversation.reply_token = new_reply_token()
    parent = await _email_parent(session, conversation)
    parent_refs: tuple[str, ...] = ()
    if parent is not None and parent.channel_data:
        refs = parent.channel_data.get("references") or []
        parent_refs = tuple(str(r) for r in refs if isinstance(r, str))
    parent_id = parent.email_message_id if parent is not None else None
    return account, OutboundEmail(
        from_address=account.address,
        from_name=account.display_name,
        reply_to=address_with_token(account.address, conversation.reply_token),
        subject=reply_subject(conversation.subject),
        message_id=new_message_id(account.address),
        in_reply_to=parent_id,
        references=references_for_reply(parent_refs, parent_id),
        auto_submitted=direction is MessageDirection.SYSTEM,
    )


async def send_to_customer(
    session: AsyncSession,
    conversation: Conversation,
    text: str,
    *,
    source: str,
    direction: MessageDirection = MessageDirection.SYSTEM,
    author_agent_id: uuid.UUID | None = None,
    author_display_name: str | None = None,
    subject: str | None = None,
    flush: bool = True,
) -> Message:
    """Store an outbound or system message and queue its delivery on the channel.

    ``subject`` replaces an email's ``Re: …`` subject (e.g. a proactive notice's).
    ``flush=False`` leaves the rows to the transaction's next flush (a caller telling
    many customers at once writes them together)."""
    recipient = await customer_address(session, conversation)
    channel = Channel(conversation.channel)
    account_id: uuid.UUID | None = None
    email: OutboundEmail | None = None
    email_columns: dict[str, Any] = {}
    if channel is Channel.EMAIL:
        account, email = await outbound_email(session, conversation, direction=direction)
        if subject is not None:
            email = email.model_copy(update={"subject": subject})
        account_id = account.id
        email_columns = {
            "email_message_id": email.message_id,
            "subject": email.subject,
            "channel_data": {
                "in_reply_to": [email.in_reply_to] if email.in_reply_to else [],
                "references": list(email.references),
                "reply_to": email.reply_to,
                "from": email.from_address,
            },
        }
    elif conversation.channel_account_id is not None:
        account_id = conversation.channel_account_id  # e.g. the SMS number to send from
    reply_to = (
        await _answered_provider_id(session, conversation) if channel is Channel.SOCIAL else None
    )
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
        **email_columns,
    )
    session.add(message)
    conversation.last_message_at = now
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
            subject=email.subject if email else None,
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
            channel_account_id=account_id,
            email=email,
            reply_to_provider_message_id=reply_to,
        ),
        topic=Topic.OUTBOUND,
        key=key,
        source=source,
        subject=str(conversation.id),
    )
    if flush:
        await session.flush()
    return message
