"""Agent capacity: units per channel and the atomic reservation both router and API use.

Reservation is one conditional UPDATE, so the capacity check and the increment happen
in the database atomically and hold with any number of router replicas.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import cast

from sqlalchemy import Float, Table, Uuid, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import Agent, AgentStatus, utcnow

# ``session.info`` key of the online agents a routing transaction has read (see
# ``shared.routing.engine``); any capacity change through this module drops it.
AGENTS_READ_KEY = "omniroute.online_agents"


async def reserve_capacity(
    session: AsyncSession, *, workspace_id: uuid.UUID, agent_id: uuid.UUID, units: float
) -> bool:
    """Add ``units`` to the agent's load if the agent is online and has room; True if so."""
    session.info.pop(AGENTS_READ_KEY, None)
    result = await session.execute(
        update(Agent)
        .where(
            Agent.id == agent_id,
            Agent.workspace_id == workspace_id,
            Agent.status == AgentStatus.ONLINE.value,
            Agent.load_units + units <= Agent.capacity_units,
        )
        .values(load_units=Agent.load_units + units, last_assigned_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


async def reserve_capacity_of_agents(
    session: AsyncSession, *, workspace_id: uuid.UUID, units: Mapping[uuid.UUID, float]
) -> set[uuid.UUID]:
    """:func:`reserve_capacity` for several agents at once (``units`` to add per agent);
    the agents whose reservation succeeded.

    Each agent's check and increment stay one atomic conditional update, all or nothing
    for that agent; on PostgreSQL all agents go in one statement (one round trip), with
    the rows taken in id order, so two routers reserving overlapping agents wait for each
    other instead of deadlocking within the statement."""
    session.info.pop(AGENTS_READ_KEY, None)
    if not units:
        return set()
    if session.get_bind().dialect.name != "postgresql":
        return {
            agent_id
            for agent_id, amount in units.items()
            if await reserve_capacity(
                session, workspace_id=workspace_id, agent_id=agent_id, units=amount
            )
        }
    agents = cast(Table, Agent.__table__)
    ids = sorted(units)
    wanted = (
        func.unnest(
            bindparam("agent_ids", ids, type_=ARRAY(Uuid())),
            bindparam("agent_units", [float(units[i]) for i in ids], type_=ARRAY(Float())),
        )
        .table_valued("agent_id", "units")
        .render_derived()
    )
    # The rows locked first, in id order (a CTE runs before the update reads it).
    locked = (
        select(agents.c.id, wanted.c.units)
        .join(wanted, wanted.c.agent_id == agents.c.id)
        .where(agents.c.workspace_id == workspace_id)
        .order_by(agents.c.id)
        .with_for_update(of=agents)
        .cte("locked")
    )
    result = await session.execute(
        update(agents)
        .where(
            agents.c.id == locked.c.id,
            agents.c.status == AgentStatus.ONLINE.value,
            agents.c.load_units + locked.c.units <= agents.c.capacity_units,
        )
        .values(load_units=agents.c.load_units + locked.c.units, last_assigned_at=utcnow())
        .returning(agents.c.id)
    )
    return set(result.scalars())


async def release_capacity(
    session: AsyncSession, *, workspace_id: uuid.UUID, agent_id: uuid.UUID, units: float
) -> None:
    session.info.pop(AGENTS_READ_KEY, None)
    await session.execute(
        update(Agent)
        .where(Agent.id == agent_id, Agent.workspace_id == workspace_id)
        .values(load_units=Agent.load_units - units)
        .execution_options(synchronize_session=False)
    )
