"""The three services as separate processes on real Apache Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from devmode.seed import seed_demo
from shared.db.models import Message, OutboxEvent
from shared.db.session import Database
from tests.conftest import free_port
from tests.e2e.chat_flow import chat_round_trip
from tests.e2e.processes import ServiceProcess, running, wait_ready

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(
    postgres_url: str, kafka_bootstrap: str, tmp_path: Path
) -> Iterator[dict[str, ServiceProcess]]:
    ports = {"ingest": free_port(), "router": free_port(), "agent_api": free_port()}
    env = {
        "OMNI_ENVIRONMENT": "test",
        "OMNI_DATABASE_URL": postgres_url,
        "OMNI_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "OMNI_INGEST_PORT": str(ports["ingest"]),
        "OMNI_ROUTER_PORT": str(ports["router"]),
        "OMNI_AGENT_API_PORT": str(ports["agent_api"]),
    }
    with contextlib.ExitStack() as stack:
        services = {
            name: stack.enter_context(
                running(f"services.{name}", env=env, port=port, log_dir=tmp_path)
            )
            for name, port in ports.items()
        }
        for service in services.values():
            wait_ready(service)
        yield services


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
