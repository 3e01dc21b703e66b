"""Agent administration: every role reads, admins write, supervisors set presence."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from services.agent_api.agents import service
from services.agent_api.agents.schemas import (
    AgentCreate,
    AgentDetail,
    AgentPage,
    AgentUpdate,
    StatusUpdate,
)
from services.agent_api.deps import (
    CurrentAgent,
    SessionDep,
    StateDep,
    require_admin,
    require_supervisor,
)
from services.agent_api.rest import problems
from shared.db.models import AgentRole, AgentStatus
from shared.outbox import commit_and_publish

router = APIRouter(prefix="/v1/agents", tags=["agents"])


@router.get("", response_model=AgentPage, responses=problems(400, 401, 422))
async def list_agents(
    session: SessionDep,
    claims: CurrentAgent,
    status: AgentStatus | None = None,
    tier: Annotated[int | None, Query(ge=1, le=3)] = None,
    team: Annotated[
        str | None, Query(min_length=1, max_length=100, description="Team name.")
    ] = None,
    role: AgentRole | None = None,
    include_deactivated: Annotated[
        bool, Query(description="Also list deactivated agents.")
    ] = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> AgentPage:
    """The workspace's agents, oldest first, filtered by presence, tier, team and role.
    Deactivated agents are left out unless `include_deactivated` is set."""
    items, next_cursor = await service.list_agents(
        session,
        claims.workspace_id,
        status=status,
        tier=tier,
        team=team,
        role=role,
        include_deactivated=include_deactivated,
        limit=limit,
        cursor=cursor,
    )
    return AgentPage(items=items, next_cursor=next_cursor)


@router.post(
    "",
    status_code=201,
    response_model=AgentDetail,
    responses=problems(
        401,
        403,
        409,
        422,
        s409="An agent with this email exists in the workspace.",
        s422="Invalid body, or a team name that does not exist.",
    ),
)
async def create_agent(
    body: AgentCreate, session: SessionDep, claims: CurrentAgent, response: Response
) -> AgentDetail:
    """Create an agent (admins only). The agent starts offline and signs in with the
    email and password given here; `teams` are names of existing teams."""
    require_admin(claims)
    agent = await service.create_agent(session, claims.workspace_id, body)
    detail = await service.describe(session, agent)
    await session.commit()
    response.headers["Location"] = f"/v1/agents/{agent.id}"
    return detail


@router.get("/{agent_id}", response_model=AgentDetail, responses=problems(401, 404, 422))
async def get_agent(agent_id: uuid.UUID, session: SessionDep, claims: CurrentAgent) -> AgentDetail:
    """One agent of the caller's workspace, with teams, load and presence."""
    agent = await service.get_agent(session, claims.workspace_id, agent_id)
    return await service.describe(session, agent)


@router.patch(
    "/{agent_id}",
    response_model=AgentDetail,
    responses=problems(
        401,
        403,
        404,
        409,
        422,
        s409="Capacity below the current load, email taken, the last admin's role, or the "
        "agent is deactivated.",
    ),
)
async def update_agent(
    agent_id: uuid.UUID,
    body: AgentUpdate,
    session: SessionDep,
    claims: CurrentAgent,
    state: StateDep,
) -> AgentDetail:
    """Change an agent (admins only). `teams` replaces the memberships. Capacity cannot
    go below the agent's current load. An online agent who gains room, tier, skills,
    languages or teams is offered waiting conversations at once. A changed role takes
    effect at the agent's next sign-in."""
    require_admin(claims)
    agent, drain = await service.update_agent(session, claims.workspace_id, agent_id, body)
    if drain:
        await service.drain_for(session, claims.workspace_id)
    await commit_and_publish(session, state.bus, state.database.sessions)
    await session.refresh(agent)
    return await service.describe(session, agent)


@router.delete(
    "/{agent_id}",
    status_code=204,
    responses=problems(
        401, 403, 404, 422, 409, s409="Deactivating yourself or the workspace's last admin."
    ),
)
async def deactivate_agent(
    agent_id: uuid.UUID, session: SessionDep, claims: CurrentAgent, state: StateDep
) -> Response:
    """Deactivate an agent (admins only): offline for good, cannot sign in any more, and
    their open conversations are handed on to other agents or queued. The agent and
    their history stay readable (`include_deactivated`). Repeating it changes nothing."""
    require_admin(claims)
    await service.deactivate_agent(session, claims.workspace_id, agent_id, by=claims.agent_id)
    await commit_and_publish(session, state.bus, state.database.sessions)
    return Response(status_code=204)


@router.put(
    "/{agent_id}/status",
    response_model=AgentDetail,
    responses=problems(401, 403, 404, 422, 409, s409="The agent is deactivated."),
)
async def set_agent_status(
    agent_id: uuid.UUID,
    body: StatusUpdate,
    session: SessionDep,
    claims: CurrentAgent,
    state: StateDep,
) -> AgentDetail:
    """Set another agent's presence (supervisors and admins), with the same effects as
    `PUT /v1/me/status`: online pulls waiting conversations; away or offline past the
    policy's grace period hands their conversations on."""
    require_supervisor(claims)
    agent = await service.get_agent(session, claims.workspace_id, agent_id)
    if await service.change_status(session, agent, body.status):
        await commit_and_publish(session, state.bus, state.database.sessions)
        await session.refresh(agent)
    return await service.describe(session, agent)
