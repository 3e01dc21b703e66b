"""Fixtures shared by every test layer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from devmode.seed import DEMO_AGENTS, seed_demo
from shared.bus.memory import MemoryBus
from shared.db.migrate import upgrade
from shared.db.models import Agent, Contact, Conversation
from shared.db.session import Database
from shared.events import Channel, ConversationQueued
from shared.outbox import settle_published_marks
from shared.settings import Environment, Settings
from shared.websocket import WebSocketProtocol


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'omniroute.db'}"


@pytest.fixture
def settings(sqlite_url: str) -> Settings:
    return Settings(environment=Environment.TEST, database_url=sqlite_url, log_json=False)


@pytest.fixture
async def database(sqlite_url: str) -> AsyncIterator[Database]:
    """A migrated SQLite database (the migrations themselves, never create_all)."""
    await asyncio.to_thread(upgrade, sqlite_url)
    db = Database(sqlite_url)
    yield db
    # As the services do before closing: no mark of published outbox rows still running
    # on a connection when the test's event loop closes.
    await settle_published_marks(db.sessions)
    await db.dispose()


@pytest.fixture
async def workspace_id(database: Database) -> uuid.UUID:
    return await seed_demo(database)


@pytest.fixture
def memory_bus() -> MemoryBus:
    return MemoryBus(partitions=3)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    servers = os.environ.get("OMNI_TEST_KAFKA_BOOTSTRAP_SERVERS")
    if not servers:
        pytest.skip("OMNI_TEST_KAFKA_BOOTSTRAP_SERVERS not set (run through `make test`)")
    return servers


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    url = os.environ.get("OMNI_TEST_DATABASE_URL")
    if not url:
        pytest.skip("OMNI_TEST_DATABASE_URL not set (run through `make test`)")
    return url


@pytest.fixture(scope="session")
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session, dropped afterwards."""
    import asyncpg

    base, _, _ = postgres_admin_url.rpartition("/")
    name = f"omniroute_test_{uuid.uuid4().hex[:12]}"
    plain_admin = postgres_admin_url.replace("postgresql+asyncpg://", "postgresql://")

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(plain_admin)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = f"{base}/{name}"
    upgrade(url)
    yield url
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def pg_database(postgres_url: str) -> AsyncIterator[Database]:
    db = Database(postgres_url)
    yield db
    await settle_published_marks(db.sessions)
    await db.dispose()


@contextlib.asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port (lifespan included), with the
    services' WebSocket protocol."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            lifespan="on",
            ws=WebSocketProtocol,
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


async def add_conversation(
    session: AsyncSession, workspace_id: uuid.UUID, **fields: Any
) -> Conversation:
    """A conversation with a contact of its own, flushed (not committed); ``fields``
    override the web-chat defaults (status, channel, owner, …)."""
    contact = Contact(id=uuid.uuid4(), workspace_id=workspace_id)
    session.add(contact)
    await session.flush()
    conversation = Conversation(
        **{
            "id": uuid.uuid4(),
            "workspace_id": workspace_id,
            "contact_id": contact.id,
            "channel": "webchat",
            "thread_key": f"wcs_{uuid.uuid4().hex}",
            **fields,
        }
    )
    session.add(conversation)
    await session.flush()
    return conversation


async def demo_agent_conversation(
    database: Database, *, slug_prefix: str
) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """A seeded demo workspace, its first agent, and a web-chat conversation that agent
    owns: (workspace, agent, conversation)."""
    workspace_id = await seed_demo(database, slug=f"{slug_prefix}-{uuid.uuid4().hex[:8]}")
    async with database.sessions() as session:
        agent_id = await session.scalar(
            select(Agent.id).where(
                Agent.workspace_id == workspace_id, Agent.email == DEMO_AGENTS[0].email
            )
        )
        assert agent_id is not None
        conversation = await add_conversation(
            session, workspace_id, status="assigned", assignee_agent_id=agent_id
        )
        await session.commit()
    return workspace_id, agent_id, conversation.id


def queued_payload(workspace_id: uuid.UUID) -> ConversationQueued:
    """An event payload to write outbox rows with (a web-chat conversation queued)."""
    return ConversationQueued(
        workspace_id=workspace_id,
        conversation_id=uuid.uuid4(),
        channel=Channel.WEBCHAT,
        priority=0,
        queued_at=datetime.now(UTC),
    )
