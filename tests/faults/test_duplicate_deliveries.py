"""F4 — every webhook delivered three times, and every inbound record consumed more than once:
exactly one message row and one ``message.created`` event per provider message id."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select

from services.router.worker import InboundRouter
from shared.bus.memory import MemoryBus
from shared.db.models import Assignment, Conversation, Message, OutboxEvent
from shared.db.session import Database
from shared.events import MessageCreated, Topic
from tests.faults.channels import EXPECTED_PROVIDER_IDS, Ingest, genuine_deliveries

DELIVERIES_PER_MESSAGE = 3


async def test_every_surface_delivered_three_times_is_one_row_and_one_event(
    ingest: Ingest, memory_bus: MemoryBus, database: Database
) -> None:
    answers: dict[str, list[int]] = {}
    for name, deliver in genuine_deliveries().items():
        answers[name] = [await deliver(ingest) for _ in range(DELIVERIES_PER_MESSAGE)]
    session_id, auth = await ingest.chat_session()
    chat = [
        (
            await ingest.client.post(
                f"/v1/webchat/sessions/{session_id}/messages",
                json={"text": "hi", "client_message_id": "f4"},
                headers=auth,
            )
        ).status_code
        for _ in range(DELIVERIES_PER_MESSAGE)
    ]
    records = memory_bus.records(Topic.INBOUND.value)
    router = InboundRouter(database, memory_bus)
    await router.handle(records)
    # The broker redelivers after a crash: the whole stream once more, then in halves.
    await router.handle(records)
    await router.handle(records[: len(records) // 2])
    await router.handle(records[len(records) // 2 :])

    async with database.sessions() as session:
        messages = (await session.execute(select(Message.id, Message.provider_message_id))).all()
        events = (
            await session.scalars(
                select(OutboxEvent.envelope).where(
                    OutboxEvent.event_type == MessageCreated.event_type
                )
            )
        ).all()
        conversations = (await session.scalars(select(Conversation.thread_key))).all()
        open_assignments = Counter(
            (
                await session.scalars(
                    select(Assignment.conversation_id).where(Assignment.closed_at.is_(None))
                )
            ).all()
        )

    expected = {**EXPECTED_PROVIDER_IDS, "webchat": f"{session_id}:f4"}
    assert answers == {name: [200] * 3 if name != "smtp" else [250] * 3 for name in answers}
    assert chat == [202] * DELIVERIES_PER_MESSAGE
    assert len(ingest.published()) == DELIVERIES_PER_MESSAGE * len(expected)
    assert Counter(pid for _, pid in messages) == Counter(expected.values())
    per_message = Counter(str(envelope["data"]["message_id"]) for envelope in events)
    assert per_message == Counter(str(message_id) for message_id, _ in messages)
    assert len(conversations) == len(set(conversations))
    assert all(count == 1 for count in open_assignments.values())
