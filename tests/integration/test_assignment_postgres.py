"""Capacity reserved for many agents in one statement, and new conversations given
owners together, on real PostgreSQL (several routers at once)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import select, update

from devmode.seed import seed_demo
from services.router.routing import batch_lookups, route_inbound, settle_new_conversations
from shared.bus.memory import MemoryBus
from shared.capacity import reserve_capacity_of_agents
from shared.db.models import Agent, AgentStatus, Assignment, Conversation, ConversationStatus
from shared.db.session import Database
from shared.outbox import commit_and_publish
from shared.routing.engine import PolicyCache
from tests.unit.test_router import inbound

pytestmark = pytest.mark.integration


async def online_agents(database: Database, workspace_id: uuid.UUID) -> dict[str, uuid.UUID]:
    """Every demo agent online with capacity 3 and no load; their ids by email."""
    async with database.sessions() as session:
        await session.execute(
            update(Agent)
            .where(Agent.workspace_id == workspace_id)
            .values(status=AgentStatus.ONLINE.value, capacity_units=3.0, load_units=0.0)
        )
        rows = await session.execute(
            select(Agent.email, Agent.id).where(Agent.workspace_id == workspace_id)
        )
        await session.commit()
    return {str(email): agent_id for email, agent_id in rows}


async def loads(database: Database, workspace_id: uuid.UUID) -> dict[uuid.UUID, float]:
    async with database.sessions() as session:
        rows = await session.execute(
            select(Agent.id, Agent.load_units).where(Agent.workspace_id == workspace_id)
        )
        return {agent_id: float(load) for agent_id, load in rows}


async def test_each_agent_is_reserved_all_or_nothing_in_one_statement(
    pg_database: Database,
) -> None:
    workspace_id = await seed_demo(pg_database, slug=f"bulk-{uuid.uuid4().hex[:8]}")
    agents = await online_agents(pg_database, workspace_id)
    ada, ben = agents["ada@demo.omniroute.dev"], agents["ben@demo.omniroute.dev"]
    async with pg_database.sessions() as session:
        await session.execute(update(Agent).where(Agent.id == ben).values(load_units=2.0))
        await session.commit()

    async with pg_database.sessions() as session:
        reserved = await reserve_capacity_of_agents(
            session, workspace_id=workspace_id, units={ada: 3.0, ben: 2.0}
        )
        await session.commit()

    assert reserved == {ada}  # ben has room for 1 only: none of his 2 is taken
    after = await loads(pg_database, workspace_id)
    assert after[ada] == 3.0
    assert after[ben] == 2.0


async def test_concurrent_bulk_reservations_never_exceed_capacity(pg_database: Database) -> None:
    """Several transactions reserving overlapping agents at once: the later ones wait
    for the earlier ones' rows and see their loads; nobody goes over capacity."""
    workspace_id = await seed_demo(pg_database, slug=f"bulkrace-{uuid.uuid4().hex[:8]}")
    agents = list((await online_agents(pg_database, workspace_id)).values())

    async def reserve(offset: int) -> set[uuid.UUID]:
        async with pg_database.sessions() as session:
            # Different orders on purpose: the rows are still taken in id order.
            wanted = dict.fromkeys(agents[offset:] + agents[:offset], 2.0)
            reserved = await reserve_capacity_of_agents(
                session, workspace_id=workspace_id, units=wanted
            )
            await asyncio.sleep(0.05)  # hold the rows a little
            await session.commit()
            return reserved

    results = await asyncio.gather(*(reserve(i % len(agents)) for i in range(4)))

    after = await loads(pg_database, workspace_id)
    assert all(load <= 3.0 for load in after.values()), after
    for agent_id in agents:  # capacity 3 holds one reservation of 2, never two
        assert sum(agent_id in r for r in results) == 1
        assert after[agent_id] == 2.0


async def test_an_agent_filled_by_another_router_after_the_read_is_replaced(
    pg_database: Database,
) -> None:
    """The batch read the agents for its first new conversation; another router then
    filled the agent it would pick next. The second conversation goes to an agent with
    room instead (by its own conditional update), and nobody is over capacity."""
    workspace_id = await seed_demo(pg_database, slug=f"stale-{uuid.uuid4().hex[:8]}")
    agents = await online_agents(pg_database, workspace_id)
    ada, ben = agents["ada@demo.omniroute.dev"], agents["ben@demo.omniroute.dev"]
    async with pg_database.sessions() as session:
        # Only the two tier-1 agents stay online; ben has taken one conversation before.
        await session.execute(
            update(Agent)
            .where(Agent.workspace_id == workspace_id, Agent.id.not_in([ada, ben]))
            .values(status=AgentStatus.OFFLINE.value)
        )
        await session.execute(update(Agent).where(Agent.id == ben).values(load_units=1.0))
        await session.commit()
    bus = MemoryBus()
    policies = PolicyCache()
    first = inbound(workspace_id, "wcs_first", "wcs_first:1")
    # A second message on the first thread settles the first conversation before it.
    again = inbound(workspace_id, "wcs_first", "wcs_first:2")
    second = inbound(workspace_id, "wcs_second", "wcs_second:1")

    async with pg_database.sessions() as session:
        lookups = await batch_lookups(session, [first, again, second])
        await route_inbound(session, first, policies, lookups=lookups)
        await route_inbound(session, again, policies, lookups=lookups)  # settles `first`
        # By the batch's states ada and ben now carry 1 each, and ben has been idle
        # longer: he is next. Another router fills him meanwhile.
        async with pg_database.sessions() as other:
            await other.execute(update(Agent).where(Agent.id == ben).values(load_units=3.0))
            await other.commit()
        await route_inbound(session, second, policies, lookups=lookups)
        await settle_new_conversations(session, lookups)
        await commit_and_publish(session, bus, pg_database.sessions)

    async with pg_database.sessions() as session:
        owners = {
            str(thread): owner
            for thread, owner in await session.execute(
                select(Conversation.thread_key, Conversation.assignee_agent_id).where(
                    Conversation.workspace_id == workspace_id
                )
            )
        }
        statuses = set(
            await session.scalars(
                select(Conversation.status).where(Conversation.workspace_id == workspace_id)
            )
        )
        open_assignments = list(
            await session.scalars(
                select(Assignment.agent_id).where(
                    Assignment.workspace_id == workspace_id, Assignment.closed_at.is_(None)
                )
            )
        )
    after = await loads(pg_database, workspace_id)
    assert owners == {"wcs_first": ada, "wcs_second": ada}
    assert statuses == {ConversationStatus.ASSIGNED.value}
    assert open_assignments == [ada, ada]
    assert after[ada] == 2.0
    assert after[ben] == 3.0  # the other router's; nothing of ours on top
