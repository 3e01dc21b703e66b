"""The router on real Apache Kafka and PostgreSQL: redelivery changes nothing."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import func, select

from devmode.seed import seed_demo
from services.router.worker import InboundRouter
from shared.bus.kafka import KafkaBus
from shared.bus.port import BusRecord, ConsumerSource
from shared.db.models import Agent, Assignment, Message, OutboxEvent
from shared.db.session import Database
from shared.events import Event, Topic, encode_event, inbound_key
from tests.unit.test_router import inbound

pytestmark = pytest.mark.integration


async def fetch_at_least(source: ConsumerSource, count: int) -> list[BusRecord]:
    records: list[BusRecord] = []
    for _ in range(100):
        records += await source.fetch(max_records=100, timeout_ms=200)
        if len(records) >= count:
            return records
    raise AssertionError(f"only {len(records)} of {count} records arrived")


async def test_a_redelivered_inbound_event_creates_no_second_message_row(
    kafka_bootstrap: str, pg_database: Database
) -> None:
    workspace_id = await seed_demo(pg_database, slug=f"redelivery-{uuid.uuid4().hex[:8]}")
    topic = f"test.inbound.{uuid.uuid4().hex[:8]}"
    group = f"router-{uuid.uuid4().hex[:8]}"
    bus = KafkaBus(kafka_bootstrap, partitions=3)
    await bus.ensure_topics([topic, Topic.EVENTS.value])
    await bus.start()
    try:
        payload = inbound(workspace_id, "wcs_r", "wcs_r:1", text="only once")
        record = encode_event(
            Event.of(payload, source="test"),
            topic=topic,
            key=inbound_key(workspace_id, payload.channel, payload.sender.address),
        )
        # The provider retried: the same message arrives twice on the topic.
        await bus.publish_many([record, record])
        router = InboundRouter(pg_database, bus)

        # First consumer stores the batch, then dies before committing its offsets.
        crashed = bus.consumer([topic], group_id=group)
        await crashed.start()
        first = await fetch_at_least(crashed, 2)
        await router.handle(first)
        await crashed.stop()  # nothing committed: Kafka redelivers both records

        survivor = bus.consumer([topic], group_id=group)
        await survivor.start()
        redelivered = await fetch_at_least(survivor, 2)
        await router.handle(redelivered)
        await survivor.commit(redelivered)
        await survivor.stop()
    finally:
        await bus.stop()

    assert [(r.partition, r.offset) for r in redelivered] == [
        (r.partition, r.offset) for r in first
    ]
    async with pg_database.sessions() as session:
        messages = await session.scalar(
            select(func.count()).select_from(Message).where(Message.workspace_id == workspace_id)
        )
        message_events = await session.scalar(
            select(func.count())
            .select_from(OutboxEvent)
            .where(
                OutboxEvent.workspace_id == workspace_id,
                OutboxEvent.event_type == "omniroute.message.created.v1",
            )
        )
    assert messages == 1
    assert message_events == 1


async def test_concurrent_batches_never_exceed_capacity_on_postgres(
    pg_database: Database, kafka_bootstrap: str
) -> None:
    """Two routers at once over one agent with capacity 3: exactly 3 assigned."""
    workspace_id = await seed_demo(pg_database, slug=f"capacity-{uuid.uuid4().hex[:8]}")
    bus = KafkaBus(kafka_bootstrap, partitions=3)
    await bus.ensure_topics([Topic.EVENTS.value])
    await bus.start()
    try:
        routers = [InboundRouter(pg_database, bus) for _ in range(2)]
        batches = [
            [_record(workspace_id, f"wcs_{router_index}_{i}") for i in range(5)]
            for router_index in range(2)
        ]
        outcomes = await asyncio.gather(
            *(router.handle(batch) for router, batch in zip(routers, batches, strict=True)),
            return_exceptions=True,
        )
    finally:
        await bus.stop()

    async with pg_database.sessions() as session:
        ada_load = await session.scalar(
            select(Agent.load_units).where(
                Agent.workspace_id == workspace_id, Agent.email.startswith("ada@")
            )
        )
        assignments = await session.scalar(
            select(func.count())
            .select_from(Assignment)
            .where(Assignment.workspace_id == workspace_id)
        )
    assert all(not isinstance(o, BaseException) for o in outcomes), outcomes
    assert ada_load == 3.0
    assert assignments == 3


def _record(workspace_id: uuid.UUID, session_id: str) -> BusRecord:
    payload = inbound(workspace_id, session_id, f"{session_id}:1")
    out = encode_event(
        Event.of(payload, source="test"),
        topic=Topic.INBOUND.value,
        key=inbound_key(workspace_id, payload.channel, session_id),
    )
    return BusRecord(
        topic=out.topic, partition=0, offset=0, key=out.key, value=out.value, headers=out.headers
    )
