"""The outbox on PostgreSQL: stream positions taken in the rows' own transaction, the
rows published and marked, and the mark's asynchronous commit confined to its own
statement (the pooled connection keeps synchronous commits)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text

from devmode.seed import seed_demo
from shared.bus.memory import MemoryBus
from shared.db.models import OutboxEvent
from shared.db.session import Database
from shared.events import Channel, ConversationQueued, Topic, decode_event
from shared.outbox import commit_and_publish, record_event, settle_published_marks

pytestmark = pytest.mark.integration


async def test_rows_are_positioned_published_and_marked(pg_database: Database) -> None:
    workspace_id = await seed_demo(pg_database, slug=f"outbox-{uuid.uuid4().hex[:8]}")
    bus = MemoryBus()
    payloads = [
        ConversationQueued(
            workspace_id=workspace_id,
            conversation_id=uuid.uuid4(),
            channel=Channel.WEBCHAT,
            priority=i,
            queued_at=datetime.now(UTC),
        )
        for i in range(3)
    ]
    async with pg_database.sessions() as session:
        rows = [
            record_event(session, payload, topic=Topic.EVENTS, key="k", source="test")
            for payload in payloads
        ]
        await commit_and_publish(session, bus, pg_database.sessions)
    await settle_published_marks(pg_database.sessions)

    async with pg_database.sessions() as session:
        stored = (
            await session.execute(
                select(OutboxEvent.seq, OutboxEvent.published_at)
                .where(OutboxEvent.id.in_([row.id for row in rows]))
                .order_by(OutboxEvent.id)
            )
        ).all()
    positions = [seq for seq, _ in stored if seq is not None]
    assert len(positions) == 3
    assert positions == sorted(positions)
    assert len(set(positions)) == 3
    assert all(published_at is not None for _, published_at in stored)
    published = [decode_event(r) for r in bus.records(Topic.EVENTS.value)]
    assert [event.sequence for event in published] == positions
    assert [event.data for event in published] == payloads

    for _ in range(3):  # every pooled connection, whichever the mark used
        async with pg_database.engine.connect() as connection:
            setting = await connection.scalar(text("SHOW synchronous_commit"))
        assert setting == "on"
