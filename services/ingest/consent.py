"""Messaging consent on outbound: a recipient who opted out (SMS STOP) is not sent to,
and a WhatsApp reply outside the 24-hour customer-service window is not sent."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import func, select

from services.ingest.adapters.social.meta import WHATSAPP, whatsapp_window_refusal
from shared.channels.identities import InvalidIdentityError, normalize_phone
from shared.db.models import ContactIdentity, Conversation, Message
from shared.db.session import Database
from shared.events import Channel, IdentityKind, MessageDirection


class ConsentDirectory:
    """Read on every outbound SMS (uncached, so a STOP takes effect at once)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def refusal(self, workspace_id: uuid.UUID, channel: Channel, address: str) -> str | None:
        """Why a message to ``address`` must not be sent, or None."""
        if channel is Channel.SOCIAL and address.startswith(f"{WHATSAPP}:"):
            return await self._whatsapp_window(workspace_id, address)
        if channel is not Channel.SMS:
            return None
        try:
            number = normalize_phone(address)
        except InvalidIdentityError:
            number = address.strip()
        async with self._database.sessions() as session:
            row = await session.scalar(
                select(ContactIdentity).where(
                    ContactIdentity.workspace_id == workspace_id,
                    ContactIdentity.kind == IdentityKind.PHONE.value,
                    ContactIdentity.address == number,
                    ContactIdentity.opted_out_at.is_not(None),
                )
            )
        if row is None:
            return None
        keyword = row.opt_out_keyword or "STOP"
        return (
            f"Not sent: the recipient opted out of SMS (replied {keyword}"
            f" on {row.opted_out_at:%Y-%m-%d %H:%M} UTC); they can reply START to opt back in."
        )

    async def _whatsapp_window(self, workspace_id: uuid.UUID, address: str) -> str | None:
        """The customer's last inbound message must be at most 24 hours old."""
        async with self._database.sessions() as session:
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
        return whatsapp_window_refusal(last, datetime.now(UTC))
