"""Agent use cases: presence changes and administration.

Functions work in the caller's transaction; the endpoint commits and publishes the
outbox at the edge.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.agent_api.agents.schemas import AgentCreate, AgentDetail, AgentUpdate
from services.agent_api.auth import hash_password
from services.agent_api.rest import keyset, split_page
from shared.db.models import Agent, AgentRole, AgentStatus, AgentTeam, Team, TimerKind, utcnow
from shared.problems import ProblemError
from shared.routing.engine import (
    RoutingContext,
    drain_queue,
    load_policy,
    lock_conversations_owned_by,
    reassign_absent_owner,
)
from shared.timers import cancel_timers, schedule_timer

EVENT_SOURCE = "omniroute/agent-api"
# Stored in place of the password hash of a deactivated agent: no password matches it.
DEACTIVATED_PASSWORD_HASH = "!deactivated"  # noqa: S105 - a marker, not a secret


async def change_status(session: AsyncSession, agent: Agent, status: AgentStatus) -> bool:
    """Set an agent's presence; False if it already was ``status``.

    Going online pulls waiting conversations at once; away or offline for longer than
    the policy's grace period hands the agent's conversations on (at once when the
    grace period is 0). Shared by ``PUT /v1/me/status`` and ``PUT /v1/agents/{id}/status``.
    """
    if agent.deactivated_at is not None:
        raise ProblemError(409, "The agent is deactivated; their presence cannot change.")
    if agent.status == status.value:
        return False
    _, policy = await load_policy(session, agent.workspace_id)
    ctx = RoutingContext(session=session, policy=policy, source=EVENT_SOURCE)
    if status is not AgentStatus.ONLINE and policy.offline_grace_seconds == 0:
        # Handed on at once: the conversations locked before the agent row changes
        # (the lock order of shared.routing.engine).
        await lock_conversations_owned_by(session, agent)
    agent.status = status.value
    agent.status_changed_at = utcnow()
    if status is AgentStatus.ONLINE:
        await cancel_timers(session, TimerKind.OWNER_OFFLINE_GRACE, agent_id=agent.id)
        await session.flush()
        await drain_queue(ctx, agent.workspace_id)
    elif policy.offline_grace_seconds == 0:
        await reassign_absent_owner(ctx, agent)
    else:
        await schedule_timer(
            session,
            TimerKind.OWNER_OFFLINE_GRACE,
            workspace_id=agent.workspace_id,
            agent_id=agent.id,
            due_at=utcnow() + timedelta(seconds=policy.offline_grace_seconds),
        )
    return True


async def get_agent(
    session: AsyncSession, workspace_id: uuid.UUID, agent_id: uuid.UUID, *, lock: bool = False
) -> Agent:
    """An agent of the workspace; any other id answers 404. ``lock``: the row locked
    ``FOR UPDATE`` and read afresh."""
    query = select(Agent).where(Agent.id == agent_id, Agent.workspace_id == workspace_id)
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    agent = await session.scalar(query)
    if agent is None:
        raise ProblemError(404, f"No agent {agent_id} in this workspace.")
    return agent


async def team_names_of(
    session: AsyncSession, workspace_id: uuid.UUID, agent_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[str]]:
    names: dict[uuid.UUID, list[str]] = defaultdict(list)
    if not agent_ids:
        return names
    rows = await session.execute(
        select(AgentTeam.agent_id, Team.name)
        .join(Team, Team.id == AgentTeam.team_id)
        .where(AgentTeam.workspace_id == workspace_id, AgentTeam.agent_id.in_(agent_ids))
        .order_by(Team.name)
    )
    for agent_id, name in rows:
        names[agent_id].append(name)
    return names


def detail_of(agent: Agent, teams: list[str]) -> AgentDetail:
    return AgentDetail.model_validate(
        {**{k: getattr(agent, k) for k in AgentDetail.model_fields if k != "teams"}, "teams": teams}
    )


async def describe(session: AsyncSession, agent: Agent) -> AgentDetail:
    teams = await team_names_of(session, agent.workspace_id, [agent.id])
    return detail_of(agent, teams[agent.id])


async def list_agents(
    session: AsyncSession,
    workspace_id: uuid.UUID,
    *,
    status: AgentStatus | None,
    tier: int | None,
    team: str | None,
    role: AgentRole | None,
    include_deactivated: bool,
    limit: int,
    cursor: str | None,
) -> tuple[list[AgentDetail], str | None]:
    """Oldest first, keyset-paginated on (created_at, id)."""
    query = select(Agent).where(Agent.workspace_id == workspace_id)
    if status is not None:
        query = query.where(Agent.status == status.value)
    if tier is not None:
        query = query.where(Agent.tier == tier)
    if role is not None:
        query = query.where(Agent.role == role.value)
    if not include_deactivated:
        query = query.where(Agent.deactivated_at.is_(None))
    if team is not None:
        query = query.where(
            Agent.id.in_(
                select(AgentTeam.agent_id)
                .join(Team, Team.id == AgentTeam.team_id)
                .where(Team.workspace_id == workspace_id, Team.name == team)
            )
        )
    rows = list(
        await session.scalars(
            keyset(
                query, Agent.created_at, Agent.id, cursor=cursor, limit=limit, newest_first=False
            )
        )
    )
    page, next_cursor = split_page(rows, limit, lambda a: (a.created_at, a.id))
    teams = await team_names_of(session, workspace_id, [a.id for a in page])
    return [detail_of(a, teams[a.id]) for a in page], next_cursor


async def team_ids_named(
    session: AsyncSession, workspace_id: uuid.UUID, names: list[str]
) -> list[uuid.UUID]:
    """Ids of the named teams of the workspace; 422 naming any that does not exist."""
    wanted = sorted(set(names))
    if not wanted:
        return []
    found = {
        name: team_id
        for team_id, name in await session.execute(
            select(Team.id, Team.name).where(
                Team.workspace_id == workspace_id, Team.name.in_(wanted)
            )
        )
    }
    missing = [name for name in wanted if name not in found]
    if missing:
        raise ProblemError(422, f"No team named {', '.join(map(repr, missing))} in this workspace.")
    return [found[name] for name in wanted]


async def _set_teams(session: AsyncSession, agent: Agent, team_ids: list[uuid.UUID]) -> None:
    await session.execute(
        delete(AgentTeam).where(
            AgentTeam.workspace_id == agent.workspace_id, AgentTeam.agent_id == agent.id
        )
    )
    for team_id in team_ids:
        session.add(AgentTeam(agent_id=agent.id, team_id=team_id, workspace_id=agent.workspace_id))


async def _email_taken(
    session: AsyncSession, workspace_id: uuid.UUID, email: str, *, other_than: uuid.UUID | None
) -> bool:
    query = select(Agent.id).where(Agent.workspace_id == workspace_id, Agent.email == email)
    if other_than is not None:
        query = query.where(Agent.id != other_than)
    return await session.scalar(query.limit(1)) is not None


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


async def create_agent(session: AsyncSession, workspace_id: uuid.UUID, body: AgentCreate) -> Agent:
    email = body.email.lower()
    if await _email_taken(session, workspace_id, email, other_than=None):
        raise ProblemError(409, f"An agent with email {email} exists in this workspace.")
    team_ids = await team_ids_named(session, workspace_id, body.teams)
    agent = Agent(
        id=uuid.uuid4(),
        workspace_id=workspace_id,
        email=email,
        display_name=body.display_name,
        password_hash=await asyncio.to_thread(hash_password, body.password),
        role=body.role.value,
        tier=body.tier,
        skills=_unique(body.skills),
        languages=_unique(body.languages),
        status=AgentStatus.OFFLINE.value,
        capacity_units=body.capacity_units,
        load_units=0.0,
        status_changed_at=utcnow(),
        created_at=utcnow(),
    )
    session.add(agent)
    await session.flush()
    await _set_teams(session, agent, team_ids)
    await _flush_or_conflict(session, f"An agent with email {email} exists in this workspace.")
    return agent


async def _flush_or_conflict(session: AsyncSession, detail: str) -> None:
    try:
        await session.flush()
    except IntegrityError as exc:  # a concurrent writer won the unique constraint
        await session.rollback()
        raise ProblemError(409, detail) from exc


async def _other_active_admins(session: AsyncSession, agent: Agent) -> int:
    count = await session.scalar(
        select(func.count())
        .select_from(Agent)
        .where(
            Agent.workspace_id == agent.workspace_id,
            Agent.role == AgentRole.ADMIN.value,
            Agent.deactivated_at.is_(None),
            Agent.id != agent.id,
        )
    )
    return int(count or 0)


async def update_agent(
    session: AsyncSession, workspace_id: uuid.UUID, agent_id: uuid.UUID, body: AgentUpdate
) -> tuple[Agent, bool]:
    """Apply the changes; also True when the agent may now take more work (drain)."""
    agent = await get_agent(session, workspace_id, agent_id, lock=True)
    if agent.deactivated_at is not None:
        raise ProblemError(409, "The agent is deactivated; deactivated agents are read-only.")
    more_room = False
    if body.email is not None and body.email.lower() != agent.email:
        email = body.email.lower()
        if await _email_taken(session, workspace_id, email, other_than=agent.id):
            raise ProblemError(409, f"An agent with email {email} exists in this workspace.")
        agent.email = email
    if body.display_name is not None:
        agent.display_name = body.display_name
    if body.password is not None:
        agent.password_hash = await asyncio.to_thread(hash_password, body.password)
    if body.role is not None and body.role.value != agent.role:
        if agent.role == AgentRole.ADMIN.value and not await _other_active_admins(session, agent):
            raise ProblemError(409, "The workspace's last admin cannot stop being admin.")
        agent.role = body.role.value
    if body.tier is not None:
        more_room |= body.tier != agent.tier
        agent.tier = body.tier
    if body.skills is not None:
        more_room |= set(body.skills) != set(agent.skills or ())
        agent.skills = _unique(body.skills)
    if body.languages is not None:
        more_room |= set(body.languages) != set(agent.languages or ())
        agent.languages = _unique(body.languages)
    if body.capacity_units is not None:
        # The row is locked, so the load cannot grow between this check and the commit.
        if body.capacity_units < agent.load_units:
            raise ProblemError(
                409,
                f"Capacity {body.capacity_units:g} is below the agent's current load "
                f"{agent.load_units:g}.",
                extra={"load_units": agent.load_units},
            )
        more_room |= body.capacity_units > agent.capacity_units
        agent.capacity_units = body.capacity_units
    if body.teams is not None:
        await _set_teams(session, agent, await team_ids_named(session, workspace_id, body.teams))
        more_room = True
    await _flush_or_conflict(session, "The change conflicts with another agent (email).")
    return agent, more_room and agent.status == AgentStatus.ONLINE.value


async def drain_for(session: AsyncSession, workspace_id: uuid.UUID) -> None:
    """Let waiting conversations reach an agent who just got room or new abilities."""
    _, policy = await load_policy(session, workspace_id)
    await drain_queue(
        RoutingContext(session=session, policy=policy, source=EVENT_SOURCE), workspace_id
    )


async def deactivate_agent(
    session: AsyncSession, workspace_id: uuid.UUID, agent_id: uuid.UUID, *, by: uuid.UUID | None
) -> None:
    """Offline for good: no sign-in, open conversations handed on in this transaction.

    The agent's conversations are locked before the agent row (the lock order of
    ``shared.routing.engine``)."""
    await lock_conversations_owned_by(session, await get_agent(session, workspace_id, agent_id))
    agent = await get_agent(session, workspace_id, agent_id, lock=True)
    if agent.deactivated_at is not None:
        return
    if agent.id == by:
        raise ProblemError(409, "You cannot deactivate yourself.")
    if agent.role == AgentRole.ADMIN.value and not await _other_active_admins(session, agent):
        raise ProblemError(409, "The workspace's last admin cannot be deactivated.")
    now = utcnow()
    agent.status = AgentStatus.OFFLINE.value
    agent.status_changed_at = now
    agent.deactivated_at = now
    agent.password_hash = DEACTIVATED_PASSWORD_HASH
    await cancel_timers(session, TimerKind.OWNER_OFFLINE_GRACE, agent_id=agent.id)
    _, policy = await load_policy(session, workspace_id)
    await reassign_absent_owner(
        RoutingContext(session=session, policy=policy, source=EVENT_SOURCE), agent
    )
