"""Delivery receipts in either order: a provider's receipt that comes before the
dispatcher's "sent" report is kept (pending) and applied when the message becomes
known; a status never goes back; pending receipts never matched expire."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from services.router.delivery import DeliveryRouter, settle_pending_receipts
from services.router.maintenance import RoutingMaintenance
from shared.bus.memory import MemoryBus
from shared.bus.port import BusRecord
from shared.db.models import (
    Contact,
    Conversation,
    ConversationStatus,
    Message,
    PendingDeliveryReceipt,
    Workspace,
)
from shared.db.session import Database
from shared.events import (
    Channel,
    DeliveryStatusReported,
    Event,
    MessageDeliveryUpdated,
    Topic,
    decode_event,
    encode_event,
)
from shared.routing.engine import PolicyCache

WAMID = "wamid.HBgLMTU1NTAwMDExMTEVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"


def as_record(report: DeliveryStatusReported, offset: int = 0) -> BusRecord:
    out = encode_event(
        Event.of(report, source="test"),
        topic=Topic.DELIVERY.value,
        key=f"{report.workspace_id}:{report.message_id or report.provider_message_id}",
    )
    return BusRecord(
        topic=out.topic,
        partition=0,
        offset=offset,
        key=out.key,
        value=out.value,
        headers=out.headers,
    )


def receipt(workspace_id: uuid.UUID, status: str, **extra: object) -> DeliveryStatusReported:
    """What ingest publishes for a provider's status webhook (no id of ours)."""
    fields: dict[str, object] = {
        "workspace_id": workspace_id,
        "channel": Channel.SOCIAL,
        "provider_message_id": WAMID,
        "status": status,
        "adapter": "meta",
        "occurred_at": datetime.now(UTC),
        **extra,
    }
    return DeliveryStatusReported.model_validate(fields)


def sent_report(workspace_id: uuid.UUID, message_id: uuid.UUID) -> DeliveryStatusReported:
    """What the dispatcher publishes once the provider accepted the reply."""
    return receipt(workspace_id, "sent", message_id=message_id)


@pytest.fixture
async def reply_id(database: Database, workspace_id: uuid.UUID) -> uuid.UUID:
    """An agent's reply waiting for the dispatcher (queued, no provider id yet)."""
    async with database.sessions() as session:
        contact = Contact(workspace_id=workspace_id, display_name="Ada")
        session.add(contact)
        await session.flush()
        conversation = Conversation(
            workspace_id=workspace_id,
            contact_id=contact.id,
            channel=Channel.SOCIAL.value,
            thread_key="whatsapp:+15557654321",
            status=ConversationStatus.QUEUED.value,
        )
        session.add(conversation)
        await session.flush()
        reply = Message(
            workspace_id=workspace_id,
            conversation_id=conversation.id,
            channel=Channel.SOCIAL.value,
            direction="outbound",
            text="Your order shipped.",
            delivery_status="queued",
        )
        session.add(reply)
        await session.commit()
        return reply.id


async def deliver(database: Database, bus: MemoryBus, *reports: DeliveryStatusReported) -> None:
    await DeliveryRouter(database, bus).handle(
        [as_record(report, offset) for offset, report in enumerate(reports)]
    )


async def state_of(database: Database, message_id: uuid.UUID) -> tuple[str, str | None]:
    async with database.sessions() as session:
        message = await session.get(Message, message_id)
        assert message is not None
        return message.delivery_status, message.provider_message_id


async def pending_count(database: Database) -> int:
    async with database.sessions() as session:
        count = await session.scalar(select(func.count()).select_from(PendingDeliveryReceipt))
        return int(count or 0)


def updates(bus: MemoryBus) -> list[tuple[str, str | None]]:
    """The delivery updates agents were told about, in order (status, previous)."""
    events = [decode_event(record).data for record in bus.records(Topic.EVENTS.value)]
    return [
        (event.delivery_status, event.previous_status)
        for event in events
        if isinstance(event, MessageDeliveryUpdated)
    ]


async def test_a_receipt_before_the_sent_report_waits_and_is_applied_after_it(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID, reply_id: uuid.UUID
) -> None:
    delivered = receipt(workspace_id, "delivered")
    await deliver(database, memory_bus, delivered)
    await deliver(database, memory_bus, delivered)  # the provider retried its webhook
    assert await state_of(database, reply_id) == ("queued", None)
    assert await pending_count(database) == 1
    assert updates(memory_bus) == []

    await deliver(database, memory_bus, sent_report(workspace_id, reply_id))

    assert await state_of(database, reply_id) == ("delivered", WAMID)
    assert await pending_count(database) == 0
    assert updates(memory_bus) == [("sent", "queued"), ("delivered", "sent")]


async def test_early_receipts_arriving_in_one_batch_with_the_sent_report(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID, reply_id: uuid.UUID
) -> None:
    await deliver(
        database,
        memory_bus,
        receipt(workspace_id, "delivered"),
        receipt(workspace_id, "sent"),
        sent_report(workspace_id, reply_id),
    )
    assert await state_of(database, reply_id) == ("delivered", WAMID)
    assert await pending_count(database) == 0


async def test_the_usual_order_keeps_nothing_pending_and_never_goes_back(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID, reply_id: uuid.UUID
) -> None:
    await deliver(database, memory_bus, sent_report(workspace_id, reply_id))
    await deliver(database, memory_bus, receipt(workspace_id, "delivered"))
    await deliver(database, memory_bus, receipt(workspace_id, "sent"))  # a late one
    await deliver(database, memory_bus, sent_report(workspace_id, reply_id))  # redelivered

    assert await state_of(database, reply_id) == ("delivered", WAMID)
    assert await pending_count(database) == 0
    assert updates(memory_bus) == [("sent", "queued"), ("delivered", "sent")]


async def test_a_failure_reported_first_is_not_overwritten_by_the_sent_report(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID, reply_id: uuid.UUID
) -> None:
    failed = receipt(workspace_id, "failed", reason="131047: re-engagement window closed")
    await deliver(database, memory_bus, failed)
    await deliver(database, memory_bus, sent_report(workspace_id, reply_id))
    await deliver(database, memory_bus, sent_report(workspace_id, reply_id))

    assert await state_of(database, reply_id) == ("failed", WAMID)
    async with database.sessions() as session:
        message = await session.get(Message, reply_id)
        assert message is not None
        assert message.delivery_status_reason == "131047: re-engagement window closed"
    assert updates(memory_bus)[-1] == ("failed", "sent")


async def test_a_receipt_left_pending_by_a_concurrent_sent_report_is_settled_by_maintenance(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID, reply_id: uuid.UUID
) -> None:
    await deliver(database, memory_bus, sent_report(workspace_id, reply_id))
    # Another replica stored the receipt while the sent report was committing: neither
    # transaction saw the other's row.
    async with database.sessions() as session:
        session.add(
            PendingDeliveryReceipt(
                workspace_id=workspace_id,
                channel=Channel.SOCIAL.value,
                provider_message_id=WAMID,
                status="delivered",
                occurred_at=datetime.now(UTC),
            )
        )
        await session.commit()

    await RoutingMaintenance(database, memory_bus, PolicyCache(0), interval_seconds=1).tick()

    assert await state_of(database, reply_id) == ("delivered", WAMID)
    assert await pending_count(database) == 0
    assert updates(memory_bus)[-1] == ("delivered", "sent")


async def test_receipts_never_matched_expire_after_the_retention(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID, reply_id: uuid.UUID
) -> None:
    await deliver(database, memory_bus, receipt(workspace_id, "delivered"))
    await deliver(
        database, memory_bus, receipt(workspace_id, "delivered", provider_message_id="wamid.other")
    )
    async with database.sessions() as session:
        kept = await session.scalar(
            select(PendingDeliveryReceipt).where(
                PendingDeliveryReceipt.provider_message_id == "wamid.other"
            )
        )
        assert kept is not None
        kept.received_at = datetime.now(UTC) - timedelta(days=3)
        await session.commit()

    async with database.sessions() as session:
        applied, expired = await settle_pending_receipts(session, retention=timedelta(days=2))
        await session.commit()

    assert (applied, expired) == (0, 1)
    assert await pending_count(database) == 1  # the recent one still waits
    await deliver(database, memory_bus, sent_report(workspace_id, reply_id))
    assert await state_of(database, reply_id) == ("delivered", WAMID)


async def test_pending_receipts_are_kept_per_workspace(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID, reply_id: uuid.UUID
) -> None:
    other = uuid.uuid4()
    async with database.sessions() as session:
        session.add(Workspace(id=other, slug="other", name="Other"))
        await session.commit()
    # The same provider id in another workspace must not touch this workspace's reply.
    await deliver(database, memory_bus, receipt(other, "failed", reason="not ours"))
    await deliver(database, memory_bus, sent_report(workspace_id, reply_id))

    assert await state_of(database, reply_id) == ("sent", WAMID)
    assert await pending_count(database) == 1
