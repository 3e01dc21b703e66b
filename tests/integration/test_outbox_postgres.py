"""The outbox on PostgreSQL: stream positions taken in the rows' own transaction, the
rows published and marked, and the mark's asynchronous commit confined to its own
statement (the pooled connection keeps synchronous commits)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text

from devmode.seed import seed_demo
from shared import outbox
from shared.bus.memory import MemoryBus
from shared.db.models import OutboxEvent
from shared.db.session import Database
from shared.events import Channel, ConversationQueued, Topic, decode_event
from shared.outbox import commit_and_publish, record_event, settle_published_marks
from tests.conftest import queued_payload

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


async def test_concurrent_writers_make_positions_visible_in_order(pg_database: Database) -> None:
    """Whenever position N is visible, every position below it is: the positions are
    taken at the end of each writer's transaction under the lock it holds to its
    commit (one statement on PostgreSQL), however the writers interleave."""
    workspace_id = await seed_demo(pg_database, slug=f"outbox-{uuid.uuid4().hex[:8]}")
    bus = MemoryBus()
    async with pg_database.engine.connect() as connection:
        base = int(await connection.scalar(text("SELECT coalesce(max(seq), 0) FROM outbox_events")))
    writing = True
    holes: list[tuple[int, int]] = []

    async def writer(rows_each: int) -> None:
        for _ in range(15):
            async with pg_database.sessions() as session:
                for _ in range(rows_each):
                    payload = queued_payload(workspace_id)
                    record_event(session, payload, topic=Topic.EVENTS, key="k", source="t")
                await session.flush()
                await asyncio.sleep(0.002)  # others commit meanwhile
                await commit_and_publish(session, bus, pg_database.sessions)

    async def reader() -> None:
        while writing:
            async with pg_database.engine.connect() as connection:
                top, visible = (
                    await connection.execute(
                        text(
                            "SELECT coalesce(max(seq), :base), count(seq)"
                            " FROM outbox_events WHERE seq > :base"
                        ),
                        {"base": base},
                    )
                ).one()
            if top - base != visible:
                holes.append((top, visible))
            await asyncio.sleep(0)

    watching = asyncio.create_task(reader())
    await asyncio.gather(*(writer(rows_each) for rows_each in (1, 2, 3, 1, 2, 3)))
    writing = False
    await watching
    await settle_published_marks(pg_database.sessions)

    async with pg_database.engine.connect() as connection:
        positions = list(
            await connection.scalars(
                text(
                    "SELECT seq FROM outbox_events"
                    " WHERE seq > :base AND workspace_id = :workspace ORDER BY seq"
                ),
                {"base": base, "workspace": workspace_id},
            )
        )
    assert holes == []
    assert len(positions) == 15 * 12
    assert len(set(positions)) == len(positions)


async def test_positions_wait_for_a_holder_of_the_sequencer_lock(pg_database: Database) -> None:
    """The one-statement numbering takes the same advisory lock as the statement the
    previous release (and the sweeper's path) takes: a writer waits for its holder."""
    workspace_id = await seed_demo(pg_database, slug=f"outbox-{uuid.uuid4().hex[:8]}")
    async with pg_database.engine.connect() as holder:
        await holder.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": outbox._SEQUENCER_LOCK_KEY}
        )

        async def write() -> None:
            async with pg_database.sessions() as session:
                payload = queued_payload(workspace_id)
                record_event(session, payload, topic=Topic.EVENTS, key="k", source="t")
                await commit_and_publish(session, MemoryBus(), pg_database.sessions)

        writing = asyncio.create_task(write())
        await asyncio.sleep(0.5)
        assert not writing.done()
        await holder.commit()
        await asyncio.wait_for(writing, 10)
