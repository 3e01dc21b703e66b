"""The three services as separate processes on real Apache Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import func, select

from devmode.seed import seed_demo
from shared.db.models import Message, OutboxEvent
from shared.db.session import Database
from tests.e2e.chat_flow import chat_round_trip
from tests.e2e.processes import ServiceProcess

pytestmark = pytest.mark.e2e


async def test_a_chat_message_reaches_the_agent_and_the_reply_reaches_the_customer(
    stack: dict[str, ServiceProcess], postgres_url: str
) -> None:
    database = Database(postgres_url)
    workspace = f"e2e-{uuid.uuid4().hex[:8]}"
    workspace_id = await seed_demo(database, slug=workspace)

    try:
        result = await chat_round_trip(
            stack["ingest"].base_url, stack["agent_api"].base_url, workspace=workspace
        )
    except Exception:
        for service in stack.values():
            print(f"--- {service.name} ---\n{service.log_tail()}")  # noqa: T201
        raise

    assert result.customer_frames[0]["text"] == result.reply_text
    assert result.agent_frames[0]["type"] == "conversation.assigned"
    seqs = [frame["seq"] for frame in result.agent_frames]
    assert seqs == sorted(seqs)
    async with database.sessions() as session:
        stored = await session.scalar(
            select(func.count()).select_from(Message).where(Message.workspace_id == workspace_id)
        )
        # Everything the services wrote to the outbox was published (no leftovers).
        for _ in range(50):
            unpublished = await session.scalar(
                select(func.count())
                .select_from(OutboxEvent)
                .where(OutboxEvent.workspace_id == workspace_id, OutboxEvent.published_at.is_(None))
            )
            if unpublished == 0:
                break
            await asyncio.sleep(0.1)
    await database.dispose()
    assert stored == 2
    assert unpublished == 0
