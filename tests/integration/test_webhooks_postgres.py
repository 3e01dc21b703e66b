"""Webhook deliveries on PostgreSQL: the fan-out is idempotent (ON CONFLICT DO NOTHING)
and concurrent senders never claim the same due delivery (FOR UPDATE SKIP LOCKED)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import select

from devmode.seed import seed_demo
from services.ingest.webhooks import WebhookFanOut, WebhookSender
from shared.bus.port import BusRecord
from shared.db.models import WebhookDelivery, WebhookSubscription, utcnow
from shared.db.session import Database
from shared.events import ConversationQueued, Event, Topic, encode_event
from shared.settings import Environment, Settings

pytestmark = pytest.mark.integration


def queued_record(workspace_id: uuid.UUID, offset: int) -> tuple[Event, BusRecord]:
    event = Event.of(
        ConversationQueued(
            workspace_id=workspace_id,
            conversation_id=uuid.uuid4(),
            channel="email",
            priority=0,
            queued_at=utcnow(),
        ),
        source="omniroute/test",
    )
    out = encode_event(event, topic=Topic.EVENTS.value, key=str(workspace_id))
    return event, BusRecord(
        topic=out.topic,
        partition=0,
        offset=offset,
        key=out.key,
        value=out.value,
        headers=out.headers,
    )


async def test_fan_out_is_idempotent_and_claims_are_disjoint(pg_database: Database) -> None:
    workspace_id = await seed_demo(pg_database, slug=f"hooks-{uuid.uuid4().hex[:8]}")
    async with pg_database.sessions() as session:
        session.add(
            WebhookSubscription(
                workspace_id=workspace_id,
                url="http://127.0.0.1:9/hook",
                event_types=[ConversationQueued.event_type],
                secret="whsec_pg",
            )
        )
        await session.commit()
    records = [queued_record(workspace_id, offset) for offset in range(30)]
    fan_out = WebhookFanOut(pg_database, max_attempts=5)
    await fan_out.handle([record for _, record in records])
    await fan_out.handle([record for _, record in records])  # redelivered batch
    async with pg_database.sessions() as session:
        stored = list(
            await session.scalars(
                select(WebhookDelivery.event_id).where(WebhookDelivery.workspace_id == workspace_id)
            )
        )
    assert sorted(stored) == sorted(event.id for event, _ in records)

    settings = Settings(
        environment=Environment.TEST, database_url=pg_database.url, webhook_batch_size=7
    )
    senders = [WebhookSender(pg_database, settings) for _ in range(4)]
    claims = await asyncio.gather(*(sender._claim() for sender in senders))
    claimed = [c.delivery_id for batch in claims for c in batch]
    assert len(claimed) == len(set(claimed)) == 28  # 4 x 7, no delivery twice
    assert all(c.attempt == 1 for batch in claims for c in batch)
    async with pg_database.sessions() as session:
        leased = list(
            await session.scalars(select(WebhookDelivery).where(WebhookDelivery.id.in_(claimed)))
        )
    assert all(row.next_attempt_at is not None and row.next_attempt_at > utcnow() for row in leased)
