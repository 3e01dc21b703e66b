"""The outbox: rows committed with the business change, published once, swept after crashes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import func, select

from shared.bus.memory import MemoryBus
from shared.db.models import OutboxEvent
from shared.db.session import Database
from shared.events import Channel, ConversationQueued, Topic, decode_event
from shared.outbox import OutboxSweeper, commit_and_publish, record_event


def queued_payload(workspace_id: uuid.UUID) -> ConversationQueued:
    return ConversationQueued(
        workspace_id=workspace_id,
        conversation_id=uuid.uuid4(),
        channel=Channel.WEBCHAT,
        priority=0,
        queued_at=datetime.now(UTC),
    )


async def unpublished(database: Database) -> int:
    async with database.sessions() as session:
        return int(
            await session.scalar(
                select(func.count())
                .select_from(OutboxEvent)
                .where(OutboxEvent.published_at.is_(None))
            )
            or 0
        )


async def test_rows_left_by_a_crash_are_published_by_the_sweeper(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    payloads = [queued_payload(workspace_id) for _ in range(3)]
    async with database.sessions() as session:
        for payload in payloads:
            record_event(session, payload, topic=Topic.EVENTS, key="k", source="test")
        await session.commit()  # committed, then the process "died" before publishing
    assert memory_bus.records(Topic.EVENTS.value) == []

    sweeper = OutboxSweeper(database.sessions, memory_bus, min_age_seconds=0)
    swept = await sweeper.sweep_once()
    swept_again = await sweeper.sweep_once()

    events = [decode_event(r) for r in memory_bus.records(Topic.EVENTS.value)]
    assert swept == 3
    assert swept_again == 0
    assert [e.data for e in events] == payloads
    assert [e.sequence for e in events] == sorted(e.sequence for e in events if e.sequence)
    assert await unpublished(database) == 0


async def test_commit_and_publish_marks_rows_so_the_sweeper_skips_them(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    payload = queued_payload(workspace_id)
    async with database.sessions() as session:
        row = record_event(session, payload, topic=Topic.EVENTS, key="k", source="test")
        await commit_and_publish(session, memory_bus, database.sessions)

    swept = await OutboxSweeper(database.sessions, memory_bus, min_age_seconds=0).sweep_once()

    assert swept == 0
    [published] = [decode_event(r) for r in memory_bus.records(Topic.EVENTS.value)]
    assert published.data == payload
    assert published.id == row.event_id
    assert row.seq is not None
    assert published.sequence == row.seq


async def test_a_rolled_back_transaction_publishes_nothing(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    async with database.sessions() as session:
        record_event(
            session, queued_payload(workspace_id), topic=Topic.EVENTS, key="k", source="test"
        )
        await session.rollback()

    swept = await OutboxSweeper(database.sessions, memory_bus, min_age_seconds=0).sweep_once()

    assert swept == 0
    assert memory_bus.records(Topic.EVENTS.value) == []
