"""Agent capacity: units per channel and the atomic reservation both router and API use.

Reservation is one conditional UPDATE, so the capacity check and the increment happen
in the database atomically and hold with any number of router replicas.
"""

from __future__ import annotations

import uuid

from sqlalchemy import update
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
