"""Delivery status: ``omni.delivery.v1`` reports (dispatcher's sent, providers' receipts)
applied to the reply's message, and pushed to agents as ``message.delivery_updated``.

A status never goes back (a late "sent" after "delivered" is ignored); the same status
twice changes nothing and tells nobody.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.bus.consumer import ConsumerLoop, PoisonRecordError
from shared.bus.port import Bus, BusRecord
from shared.correlation import correlation_scope
from shared.db.models import Conversation, DeliveryStatus, Message
from shared.db.session import Database
from shared.events import (
    Channel,
    DeliveryStatusReported,
    EventDecodeError,
    MessageDeliveryUpdated,
    MessageDirection,
    Topic,
    conversation_key,
    decode_event,
)
from shared.outbox import commit_and_publish, discard_pending, record_event

log = structlog.get_logger(__name__)

EVENT_SOURCE: Final = "omniroute/router/delivery"
_RANK: Final = {
    DeliveryStatus.RECEIVED.value: 0,
    DeliveryStatus.QUEUED.value: 1,
    DeliveryStatus.SENT.value: 2,
    DeliveryStatus.DELIVERED.value: 3,
    DeliveryStatus.FAILED.value: 3,
}
_OUTBOUND: Final = (MessageDirection.OUTBOUND.value, MessageDirection.SYSTEM.value)


async def _message_of(session: AsyncSession, report: DeliveryStatusReported) -> Message | None:
    query = select(Message).where(
        Message.workspace_id == report.workspace_id, Message.direction.in_(_OUTBOUND)
    )
    if report.message_id is not None:
        return await session.scalar(query.where(Message.id == report.message_id))
    if not report.provider_message_id:
        return None
    if report.channel is Channel.EMAIL:  # bounces name our Message-ID
        return await session.scalar(
            query.where(Message.email_message_id == report.provider_message_id).limit(1)
        )
    return await session.scalar(
        query.where(
            Message.channel == report.channel.value,
            Message.provider_message_id == report.provider_message_id,
        )
    )


async def apply_delivery(session: AsyncSession, report: DeliveryStatusReported) -> bool:
    """Update the message's status; True when it changed (and an event was recorded)."""
    if report.status not in _RANK or report.status == DeliveryStatus.RECEIVED.value:
        log.warning("unknown delivery status ignored", status=report.status)
        return False
    message = await _message_of(session, report)
    if message is None:
        log.info(
            "delivery report for an unknown message",
            message_id=str(report.message_id),
            provider_message_id=report.provider_message_id,
        )
        return False
    previous = message.delivery_status
    if report.channel is not Channel.EMAIL and report.provider_message_id:
        if message.provider_message_id is None:
            message.provider_message_id = report.provider_message_id
    if _RANK.get(report.status, 0) < _RANK.get(previous, 0):
        return False  # a late report; never go back
    if previous == report.status and message.delivery_status_reason == report.reason:
        return False
    message.delivery_status = report.status
    message.delivery_status_reason = report.reason
    conversation = await session.get(Conversation, message.conversation_id)
    record_event(
        session,
        MessageDeliveryUpdated(
            workspace_id=message.workspace_id,
            conversation_id=message.conversation_id,
            message_id=message.id,
            channel=report.channel,
            delivery_status=report.status,
            reason=report.reason,
            previous_status=previous,
            provider_message_id=message.provider_message_id,
            assignee_agent_id=conversation.assignee_agent_id if conversation else None,
            updated_at=report.occurred_at,
        ),
        topic=Topic.EVENTS,
        key=conversation_key(message.workspace_id, message.conversation_id),
        source=EVENT_SOURCE,
        subject=str(message.conversation_id),
    )
    await session.flush()
    return True


class DeliveryRouter:
    """Batch handler for ``omni.delivery.v1``: one transaction per batch."""

    def __init__(self, database: Database, bus: Bus) -> None:
        self._database = database
        self._bus = bus

    async def handle(self, records: Sequence[BusRecord]) -> None:
        reports: list[tuple[DeliveryStatusReported, str | None]] = []
        for record in records:
            try:
                event = decode_event(record)
            except EventDecodeError as exc:
                raise PoisonRecordError(str(exc)) from exc
            if not isinstance(event.data, DeliveryStatusReported):
                raise PoisonRecordError(f"unexpected event type {event.type} on delivery topic")
            reports.append((event.data, event.correlationid))
        async with self._database.sessions() as session:
            try:
                for report, correlation_id in reports:
                    with correlation_scope(correlation_id):
                        await apply_delivery(session, report)
                await commit_and_publish(session, self._bus, self._database.sessions)
            except BaseException:
                discard_pending(session)
                raise


def delivery_consumer(
    database: Database,
    bus: Bus,
    *,
    group_id: str,
    from_latest: bool = False,
    max_attempts: int = 3,
) -> ConsumerLoop:
    return ConsumerLoop(
        name="router-delivery",
        source=bus.consumer([Topic.DELIVERY.value], group_id=group_id, from_latest=from_latest),
        handler=DeliveryRouter(database, bus).handle,
        bus=bus,
        max_attempts=max_attempts,
    )
