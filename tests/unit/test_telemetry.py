"""Correlation ids across services, PII kept out of logs, readiness on shutdown."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from services.ingest.app import create_app
from services.router.worker import InboundRouter
from shared.bus.memory import MemoryBus
from shared.db.session import Database
from shared.events import Topic, decode_event
from shared.logging import redact_pii
from shared.settings import Settings
from tests.conftest import served


@pytest.fixture
async def ingest(
    settings: Settings, memory_bus: MemoryBus, database: Database, workspace_id: uuid.UUID
) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        served(create_app(settings, bus=memory_bus, database=database)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        yield client


async def test_a_correlation_id_follows_the_message_into_every_event(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, database: Database
) -> None:
    opened = (await ingest.post("/v1/webchat/demo/sessions", json={})).json()
    response = await ingest.post(
        opened["messages_url"],
        json={"text": "hi"},
        headers={
            "authorization": f"Bearer {opened['session_token']}",
            "x-correlation-id": "req-42",
        },
    )
    await InboundRouter(database, memory_bus).handle(memory_bus.records(Topic.INBOUND.value))

    assert response.headers["x-correlation-id"] == "req-42"
    [inbound] = memory_bus.records(Topic.INBOUND.value)
    assert inbound.header("ce_correlationid") == b"req-42"
    downstream = [decode_event(r) for r in memory_bus.records(Topic.EVENTS.value)]
    assert downstream
    assert {e.correlationid for e in downstream} == {"req-42"}


async def test_a_correlation_id_is_minted_when_none_or_a_bad_one_is_sent(
    ingest: httpx.AsyncClient,
) -> None:
    minted = await ingest.get("/healthz")
    refused = await ingest.get("/healthz", headers={"x-correlation-id": "bad id\twith spaces"})

    assert len(minted.headers["x-correlation-id"]) == 32
    assert refused.headers["x-correlation-id"] != "bad id\twith spaces"


def test_logs_keep_customer_data_out_by_default() -> None:
    line = redact_pii(
        None,
        "info",
        {
            "event": "reply to ann.lee@example.com or +1 (415) 555-0100, order 12345",
            "text": "my card number is ...",
            "authorization": "Bearer abc",
            "count": 3,
        },
    )

    assert line["event"] == "reply to [email] or [phone], order 12345"
    assert line["text"] == "[redacted]"
    assert line["authorization"] == "[redacted]"
    assert line["count"] == 3


async def test_readiness_fails_once_shutdown_begins(
    settings: Settings, memory_bus: MemoryBus, database: Database
) -> None:
    app = create_app(settings, bus=memory_bus, database=database)
    async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
        before = await client.get("/readyz")
        app.state.shutting_down = True  # what GracefulServer does on SIGTERM
        during = await client.get("/readyz")
        alive = await client.get("/healthz")

    assert before.status_code == 200
    assert before.json()["checks"] == {"bus": True, "database": True}
    assert during.status_code == 503
    assert during.json()["shutting_down"] is True
    assert alive.status_code == 200
