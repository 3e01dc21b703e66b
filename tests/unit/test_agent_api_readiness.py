"""agent_api's readiness follows its database only, and answers within a probe's
timeout whatever the database does (refuses connections, or accepts and never answers).
Kafka's part is in tests/integration/test_agent_api_kafka_outage.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from services.agent_api.app import create_app
from shared.bus.memory import MemoryBus
from shared.db.migrate import upgrade
from shared.db.session import Database
from shared.settings import Environment, Settings
from tests.conftest import free_port, served

# The readinessProbe's timeoutSeconds (k8s/base/agent-api.yaml): an answer that takes
# longer counts as a failed probe, whatever it would have said.
PROBE_TIMEOUT_SECONDS = 3.0


async def readiness(database_url: str) -> httpx.Response:
    settings = Settings(environment=Environment.TEST, database_url=database_url)
    database = Database(database_url)
    try:
        async with (
            served(create_app(settings, bus=MemoryBus(), database=database)) as url,
            httpx.AsyncClient(base_url=url, timeout=PROBE_TIMEOUT_SECONDS) as client,
        ):
            return await client.get("/readyz")
    finally:
        await database.dispose()


@pytest.fixture
async def silent_database() -> AsyncIterator[str]:
    """A PostgreSQL address that accepts connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"postgresql+asyncpg://omniroute:omniroute@127.0.0.1:{port}/omniroute"
    server.close()
    for writer in held:
        writer.close()


async def test_ready_with_the_database(sqlite_url: str) -> None:
    await asyncio.to_thread(upgrade, sqlite_url)

    ready = await readiness(sqlite_url)

    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": True}


async def test_not_ready_while_the_database_refuses_connections() -> None:
    closed = f"postgresql+asyncpg://omniroute:omniroute@127.0.0.1:{free_port()}/omniroute"

    unready = await readiness(closed)

    assert unready.status_code == 503
    assert unready.json()["checks"] == {"database": False}


async def test_not_ready_within_a_probe_timeout_while_the_database_does_not_answer(
    silent_database: str,
) -> None:
    unready = await readiness(silent_database)

    assert unready.status_code == 503
    assert unready.json()["checks"] == {"database": False}
