"""The router on SQLite and the in-process bus: threading, idempotency, assignment, DLQ."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import event, func, select, update

from services.router.worker import InboundRouter, inbound_consumer
from shared.bus.memory import MemoryBus
from shared.bus.port import BusRecord, OutgoingRecord
from shared.db.models import (
    Agent,
    AgentStatus,
    Assignment,
    Conversation,
    ConversationStatus,
    Message,
    OutboxEvent,
)
from shared.db.session import Database
from shared.events import (
    Channel,
    ConversationAssigned,
    ConversationQueued,
    Event,
    MessageCreated,
    MessageReceived,
    Sender,
    Topic,
    decode_event,
    encode_event,
    inbound_key,
)
from shared.outbox import event_of, settle_published_marks


def inbound(
    workspace_id: uuid.UUID, session: str, provider_id: str, text: str = "hi"
) -> MessageReceived:
    return MessageReceived(
        workspace_id=workspace_id,
        channel=Channel.WEBCHAT,
        provider_message_id=provider_id,
        thread_key=session,
        sender=Sender(address=session, display_name="Grace"),
        text=text,
        received_at=datetime.now(UTC),
    )


def as_record(payload: MessageReceived, offset: int = 0) -> BusRecord:
    out = encode_event(
        Event.of(payload, source="test"),
        topic=Topic.INBOUND.value,
        key=inbound_key(payload.workspace_id, payload.channel, payload.sender.address),
    )
    return BusRecord(
        topic=out.topic,
        partition=0,
        offset=offset,
        key=out.key,
        value=out.value,
        headers=out.headers,
    )


async def count(database: Database, model: type[object]) -> int:
    async with database.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def set_online(database: Database, workspace_id: uuid.UUID, *emails: str) -> None:
    async with database.sessions() as session:
        await session.execute(
            update(Agent)
            .where(Agent.workspace_id == workspace_id)
            .values(status=AgentStatus.OFFLINE.value)
        )
        await session.execute(
            update(Agent)
            .where(Agent.workspace_id == workspace_id, Agent.email.in_(emails))
            .values(status=AgentStatus.ONLINE.value)
        )
        await session.commit()


def published(bus: MemoryBus, topic: Topic) -> list[Event]:
    return [decode_event(r) for r in bus.records(topic.value)]


async def test_a_new_conversation_is_stored_assigned_and_announced(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    router = InboundRouter(database, memory_bus)

    await router.handle([as_record(inbound(workspace_id, "wcs_a", "wcs_a:1"))])

    async with database.sessions() as session:
        conversation = await session.scalar(select(Conversation))
        ada = await session.scalar(select(Agent).where(Agent.email.startswith("ada@")))
    assert conversation is not None
    assert ada is not None
    assert conversation.status == ConversationStatus.ASSIGNED.value
    assert conversation.assignee_agent_id == ada.id
    assert ada.load_units == 1.0
    events = published(memory_bus, Topic.EVENTS)
    assert [type(e.data) for e in events] == [ConversationAssigned, MessageCreated]
    assert [e.sequence for e in events] == sorted(e.sequence for e in events if e.sequence)
    await settle_published_marks(database.sessions)
    async with database.sessions() as session:
        unpublished = await session.scalar(
            select(func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at.is_(None))
        )
    assert unpublished == 0


async def test_a_redelivered_message_changes_nothing(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    router = InboundRouter(database, memory_bus)
    record = as_record(inbound(workspace_id, "wcs_a", "wcs_a:1"))

    await router.handle([record])
    await router.handle([record])
    await router.handle([record, record])  # also twice within one batch

    assert await count(database, Message) == 1
    assert await count(database, Conversation) == 1
    assert await count(database, Assignment) == 1
    assert len(published(memory_bus, Topic.EVENTS)) == 2


async def test_later_messages_join_the_open_conversation_of_the_thread(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    router = InboundRouter(database, memory_bus)

    await router.handle(
        [
            as_record(inbound(workspace_id, "wcs_a", "wcs_a:1")),
            as_record(inbound(workspace_id, "wcs_a", "wcs_a:2")),
            as_record(inbound(workspace_id, "wcs_b", "wcs_b:1")),
        ]
    )

    async with database.sessions() as session:
        rows = await session.execute(
            select(Conversation.thread_key, func.count(Message.id))
            .join(Message, Message.conversation_id == Conversation.id)
            .group_by(Conversation.thread_key)
        )
        per_thread = {str(thread): int(n) for thread, n in rows}
    assert per_thread == {"wcs_a": 2, "wcs_b": 1}
    assert await count(database, Assignment) == 2


async def test_capacity_is_never_exceeded_and_the_rest_is_queued(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    await set_online(database, workspace_id, "ada@demo.omniroute.dev", "ben@demo.omniroute.dev")
    router = InboundRouter(database, memory_bus)

    await router.handle(
        [as_record(inbound(workspace_id, f"wcs_{i}", f"wcs_{i}:1")) for i in range(8)]
    )

    async with database.sessions() as session:
        loads = sorted(await session.scalars(select(Agent.load_units).where(Agent.load_units > 0)))
        statuses = list(await session.scalars(select(Conversation.status)))
        online = set(
            await session.scalars(select(Agent.id).where(Agent.status == AgentStatus.ONLINE.value))
        )
        queued_decisions = list(
            await session.scalars(
                select(Conversation.routing_explanation).where(
                    Conversation.status == ConversationStatus.QUEUED.value
                )
            )
        )
    assert loads == [3.0, 3.0]  # two online agents with capacity 3, balanced
    assert statuses.count(ConversationStatus.ASSIGNED.value) == 6
    assert statuses.count(ConversationStatus.QUEUED.value) == 2
    for decision in queued_decisions:  # why they wait: each online agent is full
        assert decision is not None
        assert decision["rule"] == "queued_no_eligible_agent"
        assert decision["candidates"] == []
        assert decision["excluded"] == {str(a): "no free capacity" for a in online}
    queued = [
        e for e in published(memory_bus, Topic.EVENTS) if isinstance(e.data, ConversationQueued)
    ]
    assert len(queued) == 2


async def test_a_batch_of_new_conversations_reads_the_agents_once_and_balances_them(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    await set_online(database, workspace_id, "ada@demo.omniroute.dev", "ben@demo.omniroute.dev")
    agent_reads: list[str] = []
    sticky_reads: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if "FROM agents" in statement and "agents.load_units" in statement:
            agent_reads.append(statement)
        if statement.startswith("SELECT assignments.agent_id"):
            sticky_reads.append(statement)

    event.listen(database.engine.sync_engine, "before_cursor_execute", note)
    try:
        await InboundRouter(database, memory_bus).handle(
            [as_record(inbound(workspace_id, f"wcs_{i}", f"wcs_{i}:1")) for i in range(6)]
        )
    finally:
        event.remove(database.engine.sync_engine, "before_cursor_execute", note)

    async with database.sessions() as session:
        loads = sorted(await session.scalars(select(Agent.load_units).where(Agent.load_units > 0)))
        owners = list(await session.scalars(select(Conversation.assignee_agent_id)))
    # The loads the batch itself reserved are kept current without reading them again.
    assert len(agent_reads) == 1
    # Contacts new with these messages have had no agent: no sticky-owner query.
    assert sticky_reads == []
    assert loads == [3.0, 3.0]
    assert len(owners) == 6
    assert None not in owners


async def test_a_batch_records_each_conversation_s_events_in_the_order_of_its_messages(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    """New conversations of a batch get their owners together, yet every event comes as
    if the messages were routed one by one: a later message on a conversation the batch
    opened already names its owner."""
    await set_online(database, workspace_id, "ada@demo.omniroute.dev", "ben@demo.omniroute.dev")
    await InboundRouter(database, memory_bus).handle(
        [
            as_record(inbound(workspace_id, "wcs_a", "wcs_a:1"), offset=0),
            as_record(inbound(workspace_id, "wcs_b", "wcs_b:1"), offset=1),
            as_record(inbound(workspace_id, "wcs_a", "wcs_a:2"), offset=2),
            as_record(inbound(workspace_id, "wcs_c", "wcs_c:1"), offset=3),
        ]
    )

    async with database.sessions() as session:
        threads = {
            conversation_id: str(thread)
            for conversation_id, thread in await session.execute(
                select(Conversation.id, Conversation.thread_key)
            )
        }
        # The stream's order (the bus keeps it per conversation only).
        stream = [
            event_of(row)
            for row in await session.scalars(select(OutboxEvent).order_by(OutboxEvent.seq))
        ]
    events = [
        (type(e.data).__name__, threads[e.data.conversation_id], e.data.assignee_agent_id)
        if isinstance(e.data, MessageCreated)
        else (type(e.data).__name__, threads[e.data.conversation_id], e.data.agent_id)
        for e in stream
        if isinstance(e.data, MessageCreated | ConversationAssigned)
    ]
    owner = {thread: agent for kind, thread, agent in events if kind == "ConversationAssigned"}
    assert [(kind, thread) for kind, thread, _ in events] == [
        ("ConversationAssigned", "wcs_a"),
        ("MessageCreated", "wcs_a"),
        ("ConversationAssigned", "wcs_b"),
        ("MessageCreated", "wcs_b"),
        ("MessageCreated", "wcs_a"),
        ("ConversationAssigned", "wcs_c"),
        ("MessageCreated", "wcs_c"),
    ]
    assert all(agent == owner[thread] for _, thread, agent in events)
    assert owner["wcs_a"] != owner["wcs_b"]  # balanced: each choice saw the one before


async def test_a_customer_s_second_new_conversation_in_the_batch_sticks_to_the_first_s_agent(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    await set_online(database, workspace_id, "ada@demo.omniroute.dev", "ben@demo.omniroute.dev")
    first = inbound(workspace_id, "wcs_same", "wcs_same:1")
    # The same customer (same sender) on a second thread, in the same batch.
    second = first.model_copy(update={"thread_key": "wcs_other", "provider_message_id": "o:1"})
    await InboundRouter(database, memory_bus).handle(
        [as_record(first, offset=0), as_record(second, offset=1)]
    )

    async with database.sessions() as session:
        rows = list(
            await session.execute(
                select(Conversation.thread_key, Assignment.agent_id, Assignment.explanation).join(
                    Assignment, Assignment.conversation_id == Conversation.id
                )
            )
        )
    by_thread = {str(thread): (agent, explanation) for thread, agent, explanation in rows}
    assert by_thread["wcs_other"][0] == by_thread["wcs_same"][0]
    assert by_thread["wcs_other"][1]["rule"] == "sticky_owner"
    assert by_thread["wcs_same"][1]["rule"] == "tier_then_least_loaded_then_longest_idle"


async def test_an_unknown_workspace_is_a_poison_record_sent_to_the_dead_letter_topic(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    good = inbound(workspace_id, "wcs_a", "wcs_a:1")
    stray = inbound(uuid.uuid4(), "wcs_x", "wcs_x:1")
    await memory_bus.publish_many(
        [
            OutgoingRecord(topic=Topic.INBOUND.value, key=b"garbage", value=b"\x00not an event"),
            encode_event(Event.of(stray, source="t"), topic=Topic.INBOUND.value, key="x"),
            encode_event(Event.of(good, source="t"), topic=Topic.INBOUND.value, key="y"),
        ]
    )
    loop = inbound_consumer(database, memory_bus, max_attempts=2)
    loop.retry_backoff_seconds = 0.001
    task = asyncio.create_task(loop.run())
    for _ in range(200):
        if len(memory_bus.records(Topic.INBOUND.dead_letter)) == 2 and await count(
            database, Message
        ):
            break
        await asyncio.sleep(0.02)
    loop.request_stop()
    await asyncio.wait_for(task, 5)

    dead = memory_bus.records(Topic.INBOUND.dead_letter)
    assert len(dead) == 2
    assert all(r.header("omni_dlq_error") for r in dead)
    assert await count(database, Message) == 1


async def test_records_of_unknown_workspaces_leave_the_rest_of_their_batch_routed_together(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    """One handler call routes the known records and dead-letters the strays itself,
    so a stray never sends its whole batch into record-by-record retries."""
    stray_workspace = uuid.uuid4()
    batch = [
        as_record(inbound(workspace_id, "wcs_a", "wcs_a:1"), offset=0),
        as_record(inbound(stray_workspace, "wcs_x", "wcs_x:1"), offset=1),
        as_record(inbound(workspace_id, "wcs_b", "wcs_b:1"), offset=2),
        as_record(inbound(workspace_id, "wcs_a", "wcs_a:1"), offset=3),  # duplicate in batch
    ]
    await InboundRouter(database, memory_bus).handle(batch)

    assert await count(database, Message) == 2
    dead = memory_bus.records(Topic.INBOUND.dead_letter)
    assert len(dead) == 1
    assert dead[0].header("omni_dlq_offset") == b"1"
    assert str(stray_workspace).encode() in (dead[0].header("omni_dlq_error") or b"")


async def test_an_undecodable_record_leaves_the_rest_of_its_batch_routed_together(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    """Like a stray workspace, a record that is no event at all (or not an inbound one)
    is dead-lettered by the handler itself after the rest of the batch committed."""
    garbage = BusRecord(
        topic=Topic.INBOUND.value, partition=0, offset=1, key=b"k", value=b"\x00not an event"
    )
    batch = [
        as_record(inbound(workspace_id, "wcs_a", "wcs_a:1"), offset=0),
        garbage,
        as_record(inbound(workspace_id, "wcs_b", "wcs_b:1"), offset=2),
    ]
    await InboundRouter(database, memory_bus).handle(batch)

    assert await count(database, Message) == 2
    dead = memory_bus.records(Topic.INBOUND.dead_letter)
    assert [r.header("omni_dlq_offset") for r in dead] == [b"1"]
    assert b"CloudEvent" in (dead[0].header("omni_dlq_error") or b"")


@pytest.mark.parametrize("status", [AgentStatus.AWAY, AgentStatus.OFFLINE])
async def test_no_online_agent_queues_the_conversation(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID, status: AgentStatus
) -> None:
    async with database.sessions() as session:
        await session.execute(update(Agent).values(status=status.value))
        await session.commit()

    await InboundRouter(database, memory_bus).handle(
        [as_record(inbound(workspace_id, "wcs_a", "wcs_a:1"))]
    )

    async with database.sessions() as session:
        conversation = await session.scalar(select(Conversation))
    assert conversation is not None
    assert conversation.status == ConversationStatus.QUEUED.value
    assert conversation.assignee_agent_id is None
