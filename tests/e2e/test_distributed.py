"""The three services as separate processes on real Apache Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import uuid

import httpx
import pytest
from sqlalchemy import func, select

from devmode.seed import seed_demo
from shared.db.models import Message, OutboxEvent
from shared.db.session import Database
from tests.e2e.chat_flow import chat_round_trip
from tests.e2e.conftest import ROUTER_GROUP
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


EXPECTED_SERIES = {
    "ingest": [
        'omni_inbound_messages_total{channel="webchat"}',
        "omni_websocket_connections",
        "omni_outbound_failures_total",
        "omni_rejected_requests_total",
    ],
    "router": [
        "omni_routing_batch_seconds_bucket",
        'omni_routing_decisions_total{outcome="assigned"}',
        "omni_queue_depth",
        "omni_queue_oldest_wait_seconds",
        "omni_sla_breaches_total",
        f'omni_consumer_lag_records{{group="{ROUTER_GROUP}",topic="omni.inbound.v1"}}',
        f'omni_consumer_assigned_partitions{{group="{ROUTER_GROUP}"}}',
        "omni_dead_lettered_records_total",
    ],
    "agent_api": [
        "omni_end_to_end_seconds_bucket",
        'omni_websocket_connections{service="agent_api"}',
        "omni_websocket_slow_clients_dropped_total",
        "omni_events_published_total",
    ],
}


async def test_every_service_exposes_the_metrics_that_matter(
    stack: dict[str, ServiceProcess], postgres_url: str
) -> None:
    database = Database(postgres_url)
    workspace = f"metrics-{uuid.uuid4().hex[:8]}"
    await seed_demo(database, slug=workspace)
    await database.dispose()
    await chat_round_trip(
        stack["ingest"].base_url, stack["agent_api"].base_url, workspace=workspace
    )

    async with httpx.AsyncClient(timeout=5) as client:
        scraped = {
            name: (await client.get(f"{stack[name].base_url}/metrics")).text
            for name in EXPECTED_SERIES
        }

    missing = {
        name: [series for series in expected if series not in scraped[name]]
        for name, expected in EXPECTED_SERIES.items()
    }
    assert missing == {name: [] for name in EXPECTED_SERIES}
    observed = re.search(r"omni_end_to_end_seconds_count ([0-9.]+)", scraped["agent_api"])
    assert observed is not None
    assert float(observed.group(1)) >= 1
