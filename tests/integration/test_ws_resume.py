"""WebSocket resume on PostgreSQL while two writers commit concurrently and out of order."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from websockets.asyncio.client import connect

from services.agent_api.app import create_app
from services.agent_api.auth import AgentClaims, issue_agent_token
from shared.bus.memory import MemoryBus
from shared.db.session import Database
from shared.events import Channel, MessageCreated, MessageDirection, Topic, conversation_key
from shared.outbox import commit_and_publish, record_event
from shared.settings import Environment, Settings
from tests.conftest import demo_agent_conversation, served

pytestmark = pytest.mark.integration

EVENTS_PER_WRITER = 40


async def writer(
    database: Database,
    bus: MemoryBus,
    workspace_id: uuid.UUID,
    agent_id: uuid.UUID,
    conversation_id: uuid.UUID,
    name: str,
    written: list[str],
) -> None:
    """Each transaction takes its outbox id early and commits after a random pause, so
    ids and commit order disagree between the two writers."""
    for i in range(EVENTS_PER_WRITER):
        async with database.sessions() as session:
            row = record_event(
                session,
                MessageCreated(
                    workspace_id=workspace_id,
                    conversation_id=conversation_id,
                    message_id=uuid.uuid4(),
                    channel=Channel.WEBCHAT,
                    direction=MessageDirection.INBOUND,
                    text=f"{name}-{i}",
                    assignee_agent_id=agent_id,
                    created_at=datetime.now(UTC),
                ),
                topic=Topic.EVENTS,
                key=conversation_key(workspace_id, conversation_id),
                source="test",
            )
            await session.flush()
            await asyncio.sleep(random.uniform(0, 0.02))  # noqa: S311 - test jitter
            await commit_and_publish(session, bus, database.sessions)
            written.append(row.event_id)


async def read_frames(ws: Any, frames: list[dict[str, Any]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            raw = await asyncio.wait_for(ws.recv(), timeout=0.2)
        except TimeoutError:
            continue
        frame = json.loads(raw)
        if frame["type"] == "message.created":
            frames.append(frame)


async def test_reconnecting_with_the_last_seq_misses_nothing_and_repeats_nothing(
    pg_database: Database,
) -> None:
    workspace_id, agent_id, conversation_id = await demo_agent_conversation(
        pg_database, slug_prefix="resume"
    )
    settings = Settings(
        environment=Environment.TEST,
        database_url=pg_database.url,
        ws_pull_interval_seconds=0.2,
        log_json=False,
    )
    bus = MemoryBus()
    token, _ = issue_agent_token(AgentClaims(agent_id, workspace_id, "agent"), settings)
    app = create_app(settings, bus=bus, database=pg_database)
    written: list[str] = []
    first: list[dict[str, Any]] = []
    second: list[dict[str, Any]] = []
    async with served(app) as url:
        ws_url = url.replace("http://", "ws://") + "/v1/ws"
        async with connect(ws_url, subprotocols=["bearer", token]) as ws:  # type: ignore[list-item]
            assert json.loads(await ws.recv())["type"] == "ready"
            # Writers start once the socket is live: everything they write is for it.
            writers = asyncio.gather(
                *(
                    writer(pg_database, bus, workspace_id, agent_id, conversation_id, name, written)
                    for name in ("a", "b")
                )
            )
            stop = asyncio.Event()
            reading = asyncio.create_task(read_frames(ws, first, stop))
            for _ in range(1000):
                if len(first) >= 15:
                    break
                await asyncio.sleep(0.01)
            stop.set()
            await reading
        # Dropped mid-stream; the writers go on. Reconnect with the last seq received.
        last_seq = first[-1]["seq"]
        async with connect(f"{ws_url}?last_seq={last_seq}") as ws:
            await ws.send(json.dumps({"type": "auth", "token": token}))
            stop = asyncio.Event()
            reading = asyncio.create_task(read_frames(ws, second, stop))
            await writers
            for _ in range(300):
                if len(first) + len(second) >= len(written):
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await reading

    received = [f["event_id"] for f in first + second]
    seqs = [f["seq"] for f in first + second]
    assert len(written) == 2 * EVENTS_PER_WRITER
    assert sorted(received) == sorted(written), "every event exactly once (no gap, no repeat)"
    assert seqs == sorted(seqs), "in stream order across the reconnect"
    assert len(set(seqs)) == len(seqs)
