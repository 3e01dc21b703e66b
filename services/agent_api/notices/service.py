"""Proactive notices: each contact gets the text on their preferred channel through the
ordinary outbound path (``send_to_customer`` → ``omni.outbound.v1`` → ingest's
dispatcher → delivery receipts), unless consent or the channel's rules forbid it."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Final

from sqlalchemy import case, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.agent_api.auth import AgentClaims
from services.agent_api.notices.schemas import NoticeCreate, NoticeRecipientOut
from services.agent_api.rest import keyset, split_page
from shared.consent import messaging_refusal
from shared.conversations import (
    NoCustomerAddressError,
    NoSenderAddressError,
    customer_address,
    send_to_customer,
)
from shared.db.models import (
    Contact,
    Conversation,
    Message,
    Notice,
    NoticeRecipient,
    NoticeRecipientStatus,
    utcnow,
)
from shared.events import Channel, MessageDirection
from shared.problems import ProblemError

EVENT_SOURCE: Final = "omniroute/agent-api/notices"
# A comment thread's customer is a public commenter, not someone to message privately.
_POST_THREAD_PREFIX: Final = "post:"


def require_notice_sender(claims: AgentClaims) -> None:
    """Admins and integrations (API keys) send notices."""
    if claims.role != "admin" and claims.api_key_id is None:
        raise ProblemError(403, "Only admins and integrations (API keys) can send notices.")


@dataclass(frozen=True)
class Outcome:
    status: NoticeRecipientStatus
    reason: str | None = None
    conversation: Conversation | None = None
    message: Message | None = None


async def _contacts(
    session: AsyncSession, workspace_id: uuid.UUID, contact_ids: list[uuid.UUID]
) -> dict[uuid.UUID, Contact]:
    rows = await session.scalars(
        select(Contact).where(Contact.workspace_id == workspace_id, Contact.id.in_(contact_ids))
    )
    found = {row.id: row for row in rows}
    missing = [str(c) for c in contact_ids if c not in found]
    if missing:
        raise ProblemError(
            404,
            f"No contact {', '.join(missing[:10])} in this workspace; nothing was sent.",
            extra={"missing_contact_ids": missing},
        )
    return found


async def preferred_conversation(
    session: AsyncSession, workspace_id: uuid.UUID, contact_id: uuid.UUID, channel: Channel | None
) -> Conversation | None:
    """Where the contact wrote most recently: their newest inbound message's conversation,
    email/SMS/social before web chat (a chat session ends when the tab closes)."""
    query = (
        select(Conversation)
        .join(Message, Message.conversation_id == Conversation.id)
        .where(
            Conversation.workspace_id == workspace_id,
            Conversation.contact_id == contact_id,
            Message.workspace_id == workspace_id,
            Message.direction == MessageDirection.INBOUND.value,
            ~Conversation.thread_key.startswith(_POST_THREAD_PREFIX),
        )
        .order_by(
            case((Conversation.channel == Channel.WEBCHAT.value, 1), else_=0),
            Message.created_at.desc(),
        )
        .limit(1)
    )
    if channel is not None:
        query = query.where(Conversation.channel == channel.value)
    return await session.scalar(query)


async def _notify(
    session: AsyncSession, notice: Notice, contact: Contact, channel: Channel | None
) -> Outcome:
    conversation = await preferred_conversation(session, notice.workspace_id, contact.id, channel)
    if conversation is None:
        where = f"on {channel.value}" if channel else "on a channel we can write back on"
        return Outcome(
            NoticeRecipientStatus.SKIPPED,
            f"Not sent: the contact has never written to us {where}, so there is no "
            "address to reach them.",
        )
    try:
        address = await customer_address(session, conversation)
    except NoCustomerAddressError:
        return Outcome(
            NoticeRecipientStatus.SKIPPED,
            f"Not sent: the contact has no {conversation.channel} address.",
            conversation,
        )
    refusal = await messaging_refusal(
        session, notice.workspace_id, Channel(conversation.channel), address
    )
    if refusal is not None:
        return Outcome(NoticeRecipientStatus.SKIPPED, refusal, conversation)
    try:
        message = await send_to_customer(
            session,
            conversation,
            notice.text,
            source=EVENT_SOURCE,
            direction=MessageDirection.SYSTEM,
            subject=notice.subject,
        )
    except NoSenderAddressError:
        return Outcome(
            NoticeRecipientStatus.SKIPPED,
            f"Not sent: the workspace has no {conversation.channel} account to send from.",
            conversation,
        )
    return Outcome(NoticeRecipientStatus.QUEUED, None, conversation, message)


async def create_notice(
    session: AsyncSession, claims: AgentClaims, body: NoticeCreate
) -> tuple[Notice, list[NoticeRecipient]]:
    """Store the notice and, in the same transaction, one message per reachable contact
    (with its outbox events); the caller commits and publishes."""
    requested = list(dict.fromkeys(body.contact_ids))
    contacts = await _contacts(session, claims.workspace_id, requested)
    notice = Notice(
        id=uuid.uuid4(),
        workspace_id=claims.workspace_id,
        subject=body.subject,
        text=body.text,
        channel=body.channel.value if body.channel else None,
        created_by_agent_id=claims.agent_id,
        created_by_api_key_id=claims.api_key_id,
        created_at=utcnow(),
    )
    session.add(notice)
    recipients: list[NoticeRecipient] = []
    reached: dict[uuid.UUID, uuid.UUID] = {}  # the person (after merges) -> first contact id
    for contact_id in requested:
        contact = contacts[contact_id]
        person = contact.merged_into_contact_id or contact.id
        if person in reached:
            outcome = Outcome(
                NoticeRecipientStatus.SKIPPED,
                f"Not sent twice: this contact was merged into the same person as "
                f"{reached[person]}.",
            )
        else:
            reached[person] = contact_id
            target = contact if person == contact.id else await session.get(Contact, person)
            outcome = await _notify(session, notice, target or contact, body.channel)
        recipient = NoticeRecipient(
            id=uuid.uuid4(),
            workspace_id=claims.workspace_id,
            notice_id=notice.id,
            contact_id=contact_id,
            status=outcome.status.value,
            reason=outcome.reason[:500] if outcome.reason else None,
            channel=outcome.conversation.channel if outcome.conversation else None,
            conversation_id=outcome.conversation.id if outcome.conversation else None,
            message_id=outcome.message.id if outcome.message else None,
            created_at=notice.created_at,
        )
        session.add(recipient)
        recipients.append(recipient)
    await session.flush()
    return notice, recipients


async def get_notice(
    session: AsyncSession, workspace_id: uuid.UUID, notice_id: uuid.UUID
) -> tuple[Notice, list[NoticeRecipientOut]]:
    notice = await session.scalar(
        select(Notice).where(Notice.id == notice_id, Notice.workspace_id == workspace_id)
    )
    if notice is None:
        raise ProblemError(404, f"No notice {notice_id} in this workspace.")
    rows = (
        await session.execute(
            select(NoticeRecipient, Message.delivery_status, Message.delivery_status_reason)
            .outerjoin(
                Message,
                (Message.id == NoticeRecipient.message_id)
                & (Message.workspace_id == NoticeRecipient.workspace_id),
            )
            .where(
                NoticeRecipient.workspace_id == workspace_id,
                NoticeRecipient.notice_id == notice.id,
            )
            .order_by(NoticeRecipient.created_at, NoticeRecipient.id)
        )
    ).all()
    return notice, [
        NoticeRecipientOut(
            contact_id=recipient.contact_id,
            status=delivery_status or recipient.status,
            reason=recipient.reason or reason,
            channel=recipient.channel,
            conversation_id=recipient.conversation_id,
            message_id=recipient.message_id,
        )
        for recipient, delivery_status, reason in rows
    ]


def counts(recipients: list[NoticeRecipientOut]) -> dict[str, int]:
    return dict(Counter(r.status for r in recipients))


async def list_notices(
    session: AsyncSession, workspace_id: uuid.UUID, *, limit: int, cursor: str | None
) -> tuple[list[Notice], str | None]:
    rows = list(
        await session.scalars(
            keyset(
                select(Notice).where(Notice.workspace_id == workspace_id),
                Notice.created_at,
                Notice.id,
                cursor=cursor,
                limit=limit,
                newest_first=True,
            )
        )
    )
    return split_page(rows, limit, lambda n: (n.created_at, n.id))
