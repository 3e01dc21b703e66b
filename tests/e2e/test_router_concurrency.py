"""Two router processes on real Kafka and PostgreSQL under a burst of new conversations."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from services.agent_api.auth import hash_password
from shared.bus.kafka import KafkaBus
from shared.db.models import Agent, AgentStatus, Assignment, Conversation, Message, Workspace
from shared.db.session import Database
from shared.events import (
    Channel,
    Event,
    MessageDirection,
    MessageReceived,
    Sender,
    Topic,
    encode_event,
    inbound_key,
)
from tests.conftest import free_port
from tests.e2e.conftest import FAST_ROUTING, ROUTER_GROUP
from tests.e2e.processes import ServiceProcess, running, wait_ready

pytestmark = pytest.mark.e2e

AGENTS = 10
CAPACITY = 3.0
CONVERSATIONS = 120


async def seed_workspace(database: Database) -> uuid.UUID:
    async with database.sessions() as session:
        workspace = Workspace(id=uuid.uuid4(), slug=f"burst-{uuid.uuid4().hex[:8]}", name="Burst")
        session.add(workspace)
        await session.flush()
        password = hash_password("unused-password")
        for i in range(AGENTS):
            session.add(
                Agent(
                    workspace_id=workspace.id,
                    email=f"agent{i}@burst.example",
                    display_name=f"Agent {i}",
                    password_hash=password,
                    status=AgentStatus.ONLINE.value,
                    capacity_units=CAPACITY,
                    skills=[],
                    languages=["en"],
                )
            )
        await session.commit()
        return workspace.id


def consumed(metrics_text: str) -> float:
    match = re.search(
        r'omni_consumed_records_total\{consumer="router-inbound"\} ([0-9.e+]+)', metrics_text
    )
    return float(match.group(1)) if match else 0.0


def assigned_partitions(metrics_text: str) -> float:
    match = re.search(
        rf'omni_consumer_assigned_partitions\{{group="{ROUTER_GROUP}"\}} ([0-9.e+]+)',
        metrics_text,
    )
    return float(match.group(1)) if match else 0.0


async def wait_until_group_settles(urls: list[str]) -> None:
    """Every router of the group owns partitions, unchanged over a second (rebalance done),
    so the burst meets several routers at once."""
    previous: list[float] = []
    held: list[float] = []
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(300):
            held = [assigned_partitions((await client.get(f"{u}/metrics")).text) for u in urls]
            if all(held) and held == previous:
                return
            previous = held
            await asyncio.sleep(0.5)
    raise AssertionError(f"the router group never settled: {held}")


async def test_a_burst_on_two_routers_never_exceeds_capacity_or_doubles_an_owner(
    stack: dict[str, ServiceProcess], postgres_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    # The stack's router is in the same consumer group: three routers share the burst.
    database = Database(postgres_url)
    workspace_id = await seed_workspace(database)
    env = {
        "OMNI_ENVIRONMENT": "test",
        "OMNI_DATABASE_URL": postgres_url,
        "OMNI_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        **FAST_ROUTING,
    }
    ports = [free_port(), free_port()]
    with contextlib.ExitStack() as processes:
        routers = [
            processes.enter_context(
                running(
                    "services.router",
                    env={**env, "OMNI_ROUTER_PORT": str(port)},
                    port=port,
                    log_dir=tmp_path,
                    name=f"router{i}",
                )
            )
            for i, port in enumerate(ports)
        ]
        for router in routers:
            wait_ready(router)
        group = [*routers, stack["router"]]
        await wait_until_group_settles([r.base_url for r in group])

        bus = KafkaBus(kafka_bootstrap)
        await bus.start()
        records = []
        for i in range(CONVERSATIONS):
            chat = f"wcs_burst_{i}"
            payload = MessageReceived(
                workspace_id=workspace_id,
                channel=Channel.WEBCHAT,
                provider_message_id=f"{chat}:1",
                thread_key=chat,
                sender=Sender(address=chat),
                text="hello",
                received_at=datetime.now(UTC),
            )
            records.append(
                encode_event(
                    Event.of(payload, source="burst"),
                    topic=Topic.INBOUND.value,
                    key=inbound_key(workspace_id, Channel.WEBCHAT, chat),
                )
            )
        await bus.publish_many(records)
        await bus.stop()

        stored = 0
        for _ in range(600):
            async with database.sessions() as session:
                stored = int(
                    await session.scalar(
                        select(func.count())
                        .select_from(Message)
                        .where(
                            Message.workspace_id == workspace_id,
                            Message.direction == MessageDirection.INBOUND.value,
                        )
                    )
                    or 0
                )
            if stored >= CONVERSATIONS:
                break
            await asyncio.sleep(0.1)
        async with httpx.AsyncClient(timeout=5) as client:
            per_router = [
                consumed((await client.get(f"{router.base_url}/metrics")).text) for router in group
            ]

    async with database.sessions() as session:
        loads = dict(
            (
                await session.execute(
                    select(Agent.id, Agent.load_units).where(Agent.workspace_id == workspace_id)
                )
            ).all()
        )
        open_per_agent = dict(
            (
                await session.execute(
                    select(Assignment.agent_id, func.count())
                    .where(Assignment.workspace_id == workspace_id, Assignment.closed_at.is_(None))
                    .group_by(Assignment.agent_id)
                )
            ).all()
        )
        open_per_conversation = list(
            await session.scalars(
                select(func.count())
                .select_from(Assignment)
                .where(Assignment.workspace_id == workspace_id, Assignment.closed_at.is_(None))
                .group_by(Assignment.conversation_id)
            )
        )
        statuses = dict(
            (
                await session.execute(
                    select(Conversation.status, func.count())
                    .where(Conversation.workspace_id == workspace_id)
                    .group_by(Conversation.status)
                )
            ).all()
        )
    await database.dispose()

    assert stored == CONVERSATIONS
    assert sum(count > 0 for count in per_router) >= 2, f"routers that worked: {per_router}"
    capacity_violations = sum(1 for load in loads.values() if load > CAPACITY)
    double_owners = sum(1 for count in open_per_conversation if count > 1)
    assert capacity_violations == 0
    assert double_owners == 0
    # Every reserved unit belongs to exactly one open assignment, and every slot is used.
    assert {a: float(n) for a, n in open_per_agent.items()} == {
        a: load for a, load in loads.items() if load
    }
    assert statuses == {"assigned": AGENTS * CAPACITY, "queued": CONVERSATIONS - AGENTS * CAPACITY}
