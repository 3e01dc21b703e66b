"""Delivery status: ``omni.delivery.v1`` reports (dispatcher's sent, providers' receipts)
applied to the reply's message, and pushed to agents as ``message.delivery_updated``.

A status never goes back (a late "sent" after "delivered" is ignored); the same status
twice changes nothing and tells nobody.

Nothing a provider sends is lost: a receipt that names a provider message id the router
has not learned yet (the dispatcher's "sent" report, which teaches it, travels on
another key and may come later) is kept as a ``pending_receipts`` row. The "sent"
report applies the waiting receipts of its message at once; the router's maintenance
tick (``settle_pending_receipts``) applies any a concurrent transaction left behind and
drops those older than ``OMNI_PENDING_RECEIPT_RETENTION_SECONDS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import structlog
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.bus.consumer import ConsumerLoop, PoisonRecordError
from shared.bus.port import Bus, BusRecord
from shared.correlation import correlation_scope
from shared.db.models import (
    Conversation,
    DeliveryStatus,
    Message,
    PendingDeliveryReceipt,
    utcnow,
)
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
SETTLE_BATCH: Final = 200
DEFAULT_RECEIPT_RETENTION: Final = timedelta(days=2)


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
    """Update the message's status; True when it changed (and an event was recorded).

    A provider receipt for a message not known yet is kept as a pending receipt."""
    if report.status not in _RANK or report.status == DeliveryStatus.RECEIVED.value:
        log.warning("unknown delivery status ignored", status=report.status)
        return False
    message = await _message_of(session, report)
    if message is None:
        if report.message_id is None and report.provider_message_id:
            await _keep_pending(session, report, report.provider_message_id)
        else:
            log.info(
                "delivery report for an unknown message",
                message_id=str(report.message_id),
                provider_message_id=report.provider_message_id,
            )
        return False
    learned = False
    if report.channel is not Channel.EMAIL and report.provider_message_id:
        if message.provider_message_id is None:
            message.provider_message_id = report.provider_message_id
            learned = True
    changed = await _update_status(session, message, report)
    if learned:  # receipts that came first were waiting for this id
        changed = await _apply_pending_of(session, message) or changed
    await session.flush()
    return changed


async def _update_status(
    session: AsyncSession, message: Message, report: DeliveryStatusReported
) -> bool:
    previous = message.delivery_status
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
    return True


async def _keep_pending(
    session: AsyncSession, report: DeliveryStatusReported, provider_message_id: str
) -> None:
    """Keep an early receipt until its message is known (once per message and status)."""
    exists = await session.scalar(
        select(PendingDeliveryReceipt.id).where(
            PendingDeliveryReceipt.workspace_id == report.workspace_id,
            PendingDeliveryReceipt.channel == report.channel.value,
            PendingDeliveryReceipt.provider_message_id == provider_message_id,
            PendingDeliveryReceipt.status == report.status,
        )
    )
    if exists is not None:
        return
    log.info(
        "delivery receipt kept until its message is known",
        provider_message_id=provider_message_id,
        status=report.status,
    )
    session.add(
        PendingDeliveryReceipt(
            workspace_id=report.workspace_id,
            channel=report.channel.value,
            provider_message_id=provider_message_id,
            status=report.status,
            reason=report.reason,
            adapter=report.adapter,
            occurred_at=report.occurred_at,
            received_at=utcnow(),
        )
    )
    await session.flush()


def _as_report(pending: PendingDeliveryReceipt) -> DeliveryStatusReported:
    return DeliveryStatusReported(
        workspace_id=pending.workspace_id,
        channel=Channel(pending.channel),
        provider_message_id=pending.provider_message_id,
        status=pending.status,
        reason=pending.reason,
        adapter=pending.adapter,
        occurred_at=pending.occurred_at,
    )


def _in_order(rows: Sequence[PendingDeliveryReceipt]) -> list[PendingDeliveryReceipt]:
    """Lowest status first (sent before delivered), so agents see the status climb."""
    return sorted(rows, key=lambda row: (_RANK.get(row.status, 0), _aware(row.occurred_at)))


def _aware(moment: datetime) -> datetime:
    """SQLite returns naive UTC datetimes; PostgreSQL aware ones."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def _apply_pending_of(session: AsyncSession, message: Message) -> bool:
    pending = await session.scalars(
        select(PendingDeliveryReceipt)
        .where(
            PendingDeliveryReceipt.workspace_id == message.workspace_id,
            PendingDeliveryReceipt.channel == message.channel,
            PendingDeliveryReceipt.provider_message_id == message.provider_message_id,
        )
        .with_for_update(skip_locked=True)
    )
    changed = False
    for row in _in_order(list(pending)):
        changed = await _update_status(session, message, _as_report(row)) or changed
        await session.delete(row)
    return changed


async def settle_pending_receipts(
    session: AsyncSession,
    *,
    retention: timedelta = DEFAULT_RECEIPT_RETENTION,
    now: datetime | None = None,
) -> tuple[int, int]:
    """Apply pending receipts whose message is known by now (a receipt kept while a
    concurrent "sent" report was committing); drop those kept longer than
    ``retention``. Returns (applied, expired)."""
    applied = 0
    for matches in (
        (
            Message.channel == PendingDeliveryReceipt.channel,
            Message.provider_message_id == PendingDeliveryReceipt.provider_message_id,
        ),
        (
            PendingDeliveryReceipt.channel == Channel.EMAIL.value,
            Message.email_message_id == PendingDeliveryReceipt.provider_message_id,
        ),
    ):
        rows = list(
            await session.execute(
                select(PendingDeliveryReceipt, Message)
                .join(
                    Message,
                    (Message.workspace_id == PendingDeliveryReceipt.workspace_id)
                    & Message.direction.in_(_OUTBOUND)
                    & matches[0]
                    & matches[1],
                )
                .order_by(PendingDeliveryReceipt.received_at)
                .limit(SETTLE_BATCH)
                .with_for_update(skip_locked=True)
            )
        )
        for pending, message in sorted(
            rows, key=lambda row: (_RANK.get(row[0].status, 0), _aware(row[0].occurred_at))
        ):
            await _update_status(session, message, _as_report(pending))
            await session.delete(pending)
            applied += 1
    cutoff = (now or utcnow()) - retention
    expired = await session.execute(
        delete(PendingDeliveryReceipt)
        .where(PendingDeliveryReceipt.received_at < cutoff)
        .returning(PendingDeliveryReceipt.provider_message_id, PendingDeliveryReceipt.status)
    )
    dropped = list(expired)
    for provider_message_id, status in dropped:
        log.warning(
            "delivery receipt dropped: its message never became known",
            provider_message_id=provider_message_id,
            status=status,
        )
    await session.flush()
    return applied, len(dropped)


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
                await commit_and_publish(
                    session, self._bus, self._database.sessions, publish_wait_seconds=None
                )
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
