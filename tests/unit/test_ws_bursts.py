"""A fast client is never taken for a slow one because a burst or a resume is larger
than its send queue: catch-up waits for the client, live pulls come in slices."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.client import connect

from services.agent_api.app import create_app
from services.agent_api.auth import AgentClaims, issue_agent_token
from shared.bus.memory import MemoryBus
from shared.db.session import Database
from shared.events import Channel, MessageCreated, MessageDirection, Topic, conversation_key
from shared.outbox import commit_and_publish, record_event
from shared.settings import Environment, Settings
from tests.conftest import demo_agent_conversation, served

SEND_QUEUE = 16
BURST = 120  # several times the send queue, in one transaction


async def burst(
    database: Database,
    bus: MemoryBus,
    ids: tuple[uuid.UUID, uuid.UUID, uuid.UUID],
    label: str,
) -> None:
    workspace_id, agent_id, conversation_id = ids
    async with database.sessions() as session:
        for i in range(BURST):
            record_event(
                session,
                MessageCreated(
                    workspace_id=workspace_id,
                    conversation_id=conversation_id,
                    message_id=uuid.uuid4(),
                    channel=Channel.WEBCHAT,
                    direction=MessageDirection.INBOUND,
                    text=f"{label}-{i}",
                    assignee_agent_id=agent_id,
                    created_at=datetime.now(UTC),
                ),
                topic=Topic.EVENTS,
                key=conversation_key(workspace_id, conversation_id),
                source="test",
            )
        await commit_and_publish(session, bus, database.sessions)


async def messages_until(ws: Any, count: int) -> list[str]:
    texts: list[str] = []
    while len(texts) < count:
        frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
        if frame["type"] == "message.created":
            texts.append(frame["data"]["text"])
    return texts


async def test_a_resume_and_a_burst_larger_than_the_send_queue_reach_a_reading_client(
    database: Database,
) -> None:
    ids = await demo_agent_conversation(database, slug_prefix="burst")
    workspace_id, agent_id, _ = ids
    settings = Settings(
        environment=Environment.TEST,
        database_url=database.url,
        ws_send_queue_size=SEND_QUEUE,
        log_json=False,
    )
    bus = MemoryBus()
    token, _ = issue_agent_token(AgentClaims(agent_id, workspace_id, "agent"), settings)
    app = create_app(settings, bus=bus, database=database)
    async with served(app) as url:
        ws_url = url.replace("http://", "ws://") + "/v1/ws"
        await burst(database, bus, ids, "before")  # waiting in the stream before we connect
        async with connect(f"{ws_url}?last_seq=0", subprotocols=["bearer", token]) as ws:  # type: ignore[list-item]
            assert await messages_until(ws, BURST) == [f"before-{i}" for i in range(BURST)]
            await burst(database, bus, ids, "live")  # one commit, one doorbell
            assert await messages_until(ws, BURST) == [f"live-{i}" for i in range(BURST)]
