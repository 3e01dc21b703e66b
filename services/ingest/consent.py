"""Messaging consent on outbound: a recipient who opted out (SMS STOP) is not sent to,
and a WhatsApp reply outside the 24-hour customer-service window is not sent.

The rules live in ``shared.consent`` (agent_api's proactive notices apply them too)."""

from __future__ import annotations

import uuid

from shared.consent import messaging_refusal
from shared.db.session import Database
from shared.events import Channel


class ConsentDirectory:
    """Read on every outbound SMS (uncached, so a STOP takes effect at once)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def refusal(self, workspace_id: uuid.UUID, channel: Channel, address: str) -> str | None:
        """Why a message to ``address`` must not be sent, or None."""
        if channel not in (Channel.SMS, Channel.SOCIAL):
            return None
        async with self._database.sessions() as session:
            return await messaging_refusal(session, workspace_id, channel, address)
