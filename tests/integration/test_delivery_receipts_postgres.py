"""Early delivery receipts on PostgreSQL: both orders of arrival, and the race of two
router replicas (a receipt stored while the "sent" report commits) settled by the
maintenance sweep with its row locks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from devmode.seed import seed_demo
from services.router.delivery import apply_delivery, settle_pending_receipts
from shared.db.models import Contact, Conversation, Message, PendingDeliveryReceipt
from shared.db.session import Database
from shared.events import Channel, DeliveryStatusReported

pytestmark = pytest.mark.integration


async def reply_in_new_workspace(database: Database) -> tuple[uuid.UUID, uuid.UUID]:
    workspace_id = await seed_demo(database, slug=f"receipts-{uuid.uuid4().hex[:8]}")
    async with database.sessions() as session:
        contact = Contact(workspace_id=workspace_id)
        session.add(contact)
        await session.flush()
        conversation = Conversation(
            workspace_id=workspace_id,
            contact_id=contact.id,
            channel="sms",
            thread_key=f"+1555{uuid.uuid4().int % 10**7:07d}",
        )
        session.add(conversation)
        await session.flush()
        reply = Message(
            workspace_id=workspace_id,
            conversation_id=conversation.id,
            channel="sms",
            direction="outbound",
            text="Shipped",
            delivery_status="queued",
        )
        session.add(reply)
        await session.commit()
    return workspace_id, reply.id


def report(
    workspace_id: uuid.UUID, status: str, sid: str, message_id: uuid.UUID | None = None
) -> DeliveryStatusReported:
    return DeliveryStatusReported(
        workspace_id=workspace_id,
        channel=Channel.SMS,
        message_id=message_id,
        provider_message_id=sid,
        status=status,
        adapter="twilio",
        occurred_at=datetime.now(UTC),
    )


async def apply(database: Database, *reports: DeliveryStatusReported) -> None:
    async with database.sessions() as session:
        for one in reports:
            await apply_delivery(session, one)
        await session.commit()


async def status_and_pending(
    database: Database, workspace_id: uuid.UUID, message_id: uuid.UUID
) -> tuple[str, int]:
    async with database.sessions() as session:
        message = await session.get(Message, message_id)
        assert message is not None
        pending = await session.scalar(
            select(func.count())
            .select_from(PendingDeliveryReceipt)
            .where(PendingDeliveryReceipt.workspace_id == workspace_id)
        )
        return message.delivery_status, int(pending or 0)


async def test_receipt_first_then_sent_on_postgres(pg_database: Database) -> None:
    workspace_id, reply_id = await reply_in_new_workspace(pg_database)
    sid = "SM" + uuid.uuid4().hex
    await apply(pg_database, report(workspace_id, "delivered", sid))
    await apply(pg_database, report(workspace_id, "delivered", sid))
    assert await status_and_pending(pg_database, workspace_id, reply_id) == ("queued", 1)

    await apply(pg_database, report(workspace_id, "sent", sid, reply_id))
    assert await status_and_pending(pg_database, workspace_id, reply_id) == ("delivered", 0)

    await apply(pg_database, report(workspace_id, "sent", sid))  # late
    assert await status_and_pending(pg_database, workspace_id, reply_id) == ("delivered", 0)


async def test_a_receipt_stored_while_the_sent_report_commits_is_settled(
    pg_database: Database,
) -> None:
    workspace_id, reply_id = await reply_in_new_workspace(pg_database)
    sid = "SM" + uuid.uuid4().hex
    async with pg_database.sessions() as sending:
        # Replica A applies the sent report but has not committed yet ...
        await apply_delivery(sending, report(workspace_id, "sent", sid, reply_id))
        # ... while replica B gets the receipt: the message is not known to it yet.
        await apply(pg_database, report(workspace_id, "delivered", sid))
        await sending.commit()
    assert await status_and_pending(pg_database, workspace_id, reply_id) == ("sent", 1)

    async with pg_database.sessions() as session:
        applied, _ = await settle_pending_receipts(session)
        await session.commit()

    assert applied >= 1
    assert await status_and_pending(pg_database, workspace_id, reply_id) == ("delivered", 0)
