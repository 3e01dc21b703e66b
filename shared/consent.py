"""Whether a message may be sent to a customer now: SMS opt-out (STOP) and WhatsApp's
24-hour customer-service window.

Shared by ingest's outbound dispatcher (the last check before a provider is called) and
agent_api's proactive notices (which skip such recipients up front, with the reason).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.channels.identities import InvalidIdentityError, normalize_phone
from shared.db.models import ContactIdentity, Conversation, Message
from shared.events import Channel, IdentityKind, MessageDirection

WHATSAPP_ADDRESS_PREFIX: Final = "whatsapp:"
WHATSAPP_WINDOW: Final = timedelta(hours=24)


def whatsapp_window_refusal(last_inbound: datetime | None, now: datetime) -> str | None:
    """Why a free-form WhatsApp reply may not be sent now (24 h customer-service window)."""
    if last_inbound is None:
        return (
            "Not sent: WhatsApp allows free-form replies only within 24 hours of the "
            "customer's last message, and there is no message from this customer."
        )
    if last_inbound.tzinfo is None:
        last_inbound = last_inbound.replace(tzinfo=UTC)
    if now - last_inbound <= WHATSAPP_WINDOW:
        return None
    return (
        "Not sent: WhatsApp allows free-form replies only within 24 hours of the customer's "
        f"last message (received {last_inbound:%Y-%m-%d %H:%M} UTC); the customer has to "
        "write again first."
    )


def sms_opt_out_refusal(opted_out: ContactIdentity | None) -> str | None:
    """Why an SMS may not be sent to a number whose identity opted out, or None."""
    if opted_out is None or opted_out.opted_out_at is None:
        return None
    keyword = opted_out.opt_out_keyword or "STOP"
    return (
        f"Not sent: the recipient opted out of SMS (replied {keyword}"
        f" on {opted_out.opted_out_at:%Y-%m-%d %H:%M} UTC); they can reply START to opt back in."
    )


async def messaging_refusal(
    session: AsyncSession,
    workspace_id: uuid.UUID,
    channel: Channel,
    address: str,
    *,
    now: datetime | None = None,
) -> str | None:
    """Why a message to ``address`` on ``channel`` must not be sent now, or None."""
    if channel is Channel.SOCIAL and address.startswith(WHATSAPP_ADDRESS_PREFIX):
        last = await session.scalar(
            select(func.max(Message.created_at))
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(
                Message.workspace_id == workspace_id,
                Message.channel == Channel.SOCIAL.value,
                Message.direction == MessageDirection.INBOUND.value,
                Conversation.customer_address == address,
            )
        )
        return whatsapp_window_refusal(last, now or datetime.now(UTC))
    if channel is not Channel.SMS:
        return None
    try:
        number = normalize_phone(address)
    except InvalidIdentityError:
        number = address.strip()
    row = await session.scalar(
        select(ContactIdentity).where(
            ContactIdentity.workspace_id == workspace_id,
            ContactIdentity.kind == IdentityKind.PHONE.value,
            ContactIdentity.address == number,
            ContactIdentity.opted_out_at.is_not(None),
        )
    )
    return sms_opt_out_refusal(row)
