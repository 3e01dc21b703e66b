"""The outbox: rows committed with the business change, published once, swept after crashes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import outbox
from shared.bus.memory import MemoryBus
from shared.bus.port import OutgoingRecord
from shared.db.models import OutboxEvent
from shared.db.session import Database
from shared.events import EventPayload, Topic, decode_event
from shared.outbox import (
    OutboxSweeper,
    commit_and_publish,
    record_event,
    settle_published_marks,
)
from tests.conftest import queued_payload


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


class SlowBus(MemoryBus):
    """A broker that takes records only once ``released`` is set (never, unless a test
    sets it): an outage the producer has not noticed yet, or a slow broker."""

    def __init__(self) -> None:
        super().__init__()
        self.released = asyncio.Event()

    async def publish_many(self, records: Sequence[OutgoingRecord]) -> None:
        await self.released.wait()
        await super().publish_many(records)


async def commit_one_event(
    database: Database, bus: MemoryBus, workspace_id: uuid.UUID
) -> EventPayload:
    payload = queued_payload(workspace_id)
    async with database.sessions() as session:
        record_event(session, payload, topic=Topic.EVENTS, key="k", source="test")
        await asyncio.wait_for(
            commit_and_publish(session, bus, database.sessions, publish_wait_seconds=0.05),
            timeout=30,  # a guard against hanging the suite; the bound under test is 0.05
        )
    return payload


async def test_a_commit_answers_when_the_broker_does_not_and_leaves_its_rows_to_the_sweeper(
    database: Database, workspace_id: uuid.UUID
) -> None:
    stalled = SlowBus()
    payload = await commit_one_event(database, stalled, workspace_id)
    assert await unpublished(database) == 1

    recovered = MemoryBus()
    swept = await OutboxSweeper(database.sessions, recovered, min_age_seconds=0).sweep_once()
    assert swept == 1
    assert [decode_event(r).data for r in recovered.records(Topic.EVENTS.value)] == [payload]
    for publishing in list(outbox._publishing):  # the stalled publish, as at shutdown
        publishing.cancel()


async def test_a_publish_that_outlives_the_wait_still_marks_its_rows(
    database: Database, workspace_id: uuid.UUID
) -> None:
    slow = SlowBus()
    payload = await commit_one_event(database, slow, workspace_id)
    assert await unpublished(database) == 1  # answered before the broker took it

    slow.released.set()
    await asyncio.wait_for(asyncio.gather(*outbox._publishing), timeout=30)
    await settle_published_marks(database.sessions)

    assert [decode_event(r).data for r in slow.records(Topic.EVENTS.value)] == [payload]
    assert await unpublished(database) == 0
    assert await OutboxSweeper(database.sessions, slow, min_age_seconds=0).sweep_once() == 0


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


async def test_marks_wait_for_no_writer_and_gather_into_few_statements(
    database: Database,
    memory_bus: MemoryBus,
    workspace_id: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A writer goes on once its rows are published; the marks follow in the
    background, those of several commits in one statement."""
    marking_may_go_on = asyncio.Event()
    statements: list[list[int]] = []
    real_mark = outbox._mark_published

    async def slow_mark(engine: AsyncEngine, row_ids: list[int]) -> None:
        await marking_may_go_on.wait()
        statements.append(row_ids)
        await real_mark(engine, row_ids)

    monkeypatch.setattr(outbox, "_mark_published", slow_mark)
    for _ in range(3):
        async with database.sessions() as session:
            record_event(
                session, queued_payload(workspace_id), topic=Topic.EVENTS, key="k", source="t"
            )
            await commit_and_publish(session, memory_bus, database.sessions)

    assert len(memory_bus.records(Topic.EVENTS.value)) == 3  # published, none marked yet
    assert await unpublished(database) == 3
    marking_may_go_on.set()
    await settle_published_marks(database.sessions)

    assert await unpublished(database) == 0
    assert [len(ids) for ids in statements] == [1, 2]  # the first, then the two that waited


async def test_the_sweeper_waits_for_pending_marks_instead_of_publishing_again(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    async with database.sessions() as session:
        record_event(session, queued_payload(workspace_id), topic=Topic.EVENTS, key="k", source="t")
        await commit_and_publish(session, memory_bus, database.sessions)

    swept = await OutboxSweeper(database.sessions, memory_bus, min_age_seconds=0).sweep_once()

    assert swept == 0
    assert len(memory_bus.records(Topic.EVENTS.value)) == 1


async def test_settling_waits_only_for_marks_added_before_it(
    database: Database,
    memory_bus: MemoryBus,
    workspace_id: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A steady stream of writes keeps the marking task busy; the sweeper, which settles
    the marks before it sweeps, must not wait for that stream to end."""
    real_mark = outbox._mark_published
    writes_go_on = True

    async def slow_mark(engine: AsyncEngine, row_ids: list[int]) -> None:
        await asyncio.sleep(0.02)
        await real_mark(engine, row_ids)

    async def steady_writer() -> None:
        while writes_go_on:
            async with database.sessions() as session:
                record_event(
                    session, queued_payload(workspace_id), topic=Topic.EVENTS, key="k", source="t"
                )
                await commit_and_publish(session, memory_bus, database.sessions)
            await asyncio.sleep(0.005)

    monkeypatch.setattr(outbox, "_mark_published", slow_mark)
    writer = asyncio.create_task(steady_writer())
    await asyncio.sleep(0.1)
    try:
        swept = await asyncio.wait_for(
            OutboxSweeper(database.sessions, memory_bus, min_age_seconds=60).sweep_once(), 5
        )
    finally:
        writes_go_on = False
        await writer
    assert swept == 0
