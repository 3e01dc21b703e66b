"""Outbound dispatcher: agents' replies from ``omni.outbound.v1`` to the customer's channel.

Web chat replies go to the customer's WebSocket. Every ingest replica reads the topic
without a consumer group and delivers to the sockets it holds; a customer who was not
connected reads the history on reconnect.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from services.ingest.webchat_hub import WebChatHub
from shared.bus.port import BusRecord
from shared.events import Channel, EventDecodeError, OutboundMessageRequested, decode_event
from shared.metrics import OUTBOUND_FAILURES

log = structlog.get_logger(__name__)


class OutboundDispatcher:
    def __init__(self, webchat: WebChatHub) -> None:
        self._webchat = webchat

    async def handle(self, records: Sequence[BusRecord]) -> None:
        for record in records:
            try:
                event = decode_event(record)
            except EventDecodeError as exc:
                log.error("undecodable outbound record skipped", error=str(exc))
                continue
            payload = event.data
            if not isinstance(payload, OutboundMessageRequested):
                continue
            if payload.channel is Channel.WEBCHAT:
                self._webchat.deliver(
                    payload.recipient_address,
                    {
                        "type": "message",
                        "message_id": str(payload.message_id),
                        "conversation_id": str(payload.conversation_id),
                        "direction": "outbound",
                        "text": payload.text,
                        "agent_name": payload.agent_display_name,
                        "created_at": payload.created_at.isoformat(),
                    },
                )
            else:
                OUTBOUND_FAILURES.labels(channel=payload.channel.value, provider="none").inc()
                log.warning("no outbound adapter for channel yet", channel=payload.channel.value)
