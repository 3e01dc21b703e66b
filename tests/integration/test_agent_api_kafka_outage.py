"""agent_api while Kafka is unreachable: REST changes still commit and answer success,
their outbox rows wait for the sweeper, and the API stays ready (it needs the database
only). Real PostgreSQL, real Kafka behind a relay the test cuts (see kafka_outage.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import select

from devmode.seed import DEMO_AGENTS, DEMO_PASSWORD, seed_demo
from services.agent_api.app import create_app
from services.router.worker import InboundRouter
from shared.bus.kafka import KafkaBus
from shared.db.models import OutboxEvent
from shared.db.session import Database
from shared.events import Topic
from shared.outbox import OutboxSweeper, settle_published_marks
from shared.routing.engine import PolicyCache
from shared.settings import Environment, Settings
from tests.conftest import served
from tests.integration.kafka_outage import KafkaRelay, kafka_relay
from tests.unit.test_router import as_record, inbound

pytestmark = pytest.mark.integration

ADA = DEMO_AGENTS[0].email
REQUEST_TIMEOUT_SECONDS = 60.0


@dataclass
class OutageApi:
    client: httpx.AsyncClient
    relay: KafkaRelay
    database: Database
    workspace_id: uuid.UUID
    headers: dict[str, str]


@pytest.fixture
async def outage_api(kafka_bootstrap: str, pg_database: Database) -> AsyncIterator[OutageApi]:
    workspace = f"outage-{uuid.uuid4().hex[:8]}"
    workspace_id = await seed_demo(pg_database, slug=workspace)
    settings = Settings(environment=Environment.TEST, database_url=pg_database.url)
    async with kafka_relay(kafka_bootstrap) as relay:
        bus = KafkaBus(relay.bootstrap, client_id="omniroute-it-outage")
        await bus.ensure_topics([t.value for t in Topic])
        await bus.start()
        try:
            async with (
                served(create_app(settings, bus=bus, database=pg_database)) as url,
                httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_SECONDS) as client,
            ):
                token = await client.post(
                    "/v1/auth/token",
                    json={"workspace": workspace, "email": ADA, "password": DEMO_PASSWORD},
                )
                assert token.status_code == 200, token.text
                headers = {"authorization": f"Bearer {token.json()['access_token']}"}
                yield OutageApi(client, relay, pg_database, workspace_id, headers)
        finally:
            # Its records cannot be delivered any more: do not wait for them.
            await asyncio.wait_for(bus.stop(), timeout=30)


async def conversation_of_ada(api: OutageApi) -> str:
    """A customer writes; the router (publishing through the relay) assigns Ada."""
    router_bus = KafkaBus(api.relay.bootstrap, client_id="omniroute-it-outage-router")
    await router_bus.start()
    try:
        text = f"where is my parcel {uuid.uuid4().hex[:6]}"
        await InboundRouter(api.database, router_bus, PolicyCache(ttl_seconds=0)).handle(
            [as_record(inbound(api.workspace_id, "wcs_outage", "wcs_outage:1", text))]
        )
    finally:
        await router_bus.stop()
    listed = await api.client.get(
        "/v1/conversations", params={"assignee": "me", "q": text}, headers=api.headers
    )
    [conversation] = listed.json()["items"]
    return str(conversation["id"])


async def unpublished_rows(database: Database, workspace_id: uuid.UUID) -> list[OutboxEvent]:
    await settle_published_marks(database.sessions)
    async with database.sessions() as session:
        rows = await session.scalars(
            select(OutboxEvent).where(
                OutboxEvent.workspace_id == workspace_id, OutboxEvent.published_at.is_(None)
            )
        )
        return list(rows)


async def test_a_reply_while_kafka_is_unreachable_commits_answers_and_waits_for_the_sweeper(
    kafka_bootstrap: str, outage_api: OutageApi
) -> None:
    api = outage_api
    conversation = await conversation_of_ada(api)
    assert await unpublished_rows(api.database, api.workspace_id) == []

    await api.relay.cut()
    reply = await api.client.post(
        f"/v1/conversations/{conversation}/replies",
        json={"text": "It ships tomorrow."},
        headers=api.headers,
    )

    assert reply.status_code == 201, reply.text
    messages = await api.client.get(
        f"/v1/conversations/{conversation}/messages", headers=api.headers
    )
    assert "It ships tomorrow." in [m["text"] for m in messages.json()]
    waiting = await unpublished_rows(api.database, api.workspace_id)
    assert Topic.OUTBOUND.value in {row.topic for row in waiting}

    # Kafka is back: the sweeper publishes what the reply left.
    broker = KafkaBus(kafka_bootstrap, client_id="omniroute-it-outage-sweeper")
    await broker.start()
    try:
        await OutboxSweeper(api.database.sessions, broker, min_age_seconds=0).sweep_once()
    finally:
        await broker.stop()
    assert await unpublished_rows(api.database, api.workspace_id) == []


async def test_ready_while_kafka_is_unreachable_and_the_outage_shows_in_metrics(
    outage_api: OutageApi,
) -> None:
    """Every change agent_api makes is committed with its outbox rows (the sweeper
    publishes them later) and the push hub re-reads the stream from the database:
    taking every replica out of the Service for a Kafka outage would only turn agents'
    REST calls into 503s at the ingress."""
    api = outage_api
    before = await api.client.get("/readyz")
    reachable_before = await bus_reachable_until(api.client, "1.0")
    await api.relay.cut()

    during = await api.client.get("/readyz")
    reachable = await bus_reachable_until(api.client, "0.0")

    assert before.status_code == 200, before.text
    assert during.status_code == 200, during.text
    assert during.json()["checks"] == {"database": True}
    assert (reachable_before, reachable) == ("1.0", "0.0")


async def bus_reachable_until(client: httpx.AsyncClient, wanted: str) -> str:
    """The agent API's ``omni_bus_reachable`` sample, polled until it is ``wanted`` or
    the deadline passes (the bus is checked periodically, not per scrape)."""
    deadline = asyncio.get_running_loop().time() + 20
    sample = "absent"
    while asyncio.get_running_loop().time() < deadline:
        metrics = (await client.get("/metrics")).text
        samples = [
            line.rsplit(" ", 1)[1]
            for line in metrics.splitlines()
            if line.startswith('omni_bus_reachable{service="agent_api"}')
        ]
        sample = samples[0] if samples else "absent"
        if sample == wanted:
            break
        await asyncio.sleep(0.2)
    return sample
