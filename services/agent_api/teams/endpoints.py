"""Teams: every role reads, admins create; members are set on the agent."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from services.agent_api.deps import CurrentAgent, SessionDep, require_admin
from services.agent_api.rest import problems
from services.agent_api.teams import service
from services.agent_api.teams.schemas import TeamCreate, TeamDetail, TeamOut, TeamPage

router = APIRouter(prefix="/v1/teams", tags=["teams"])


@router.get("", response_model=TeamPage, responses=problems(400, 401, 422))
async def list_teams(
    session: SessionDep,
    claims: CurrentAgent,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> TeamPage:
    """The workspace's teams, oldest first, with their number of active members."""
    items, next_cursor = await service.list_teams(
        session, claims.workspace_id, limit=limit, cursor=cursor
    )
    return TeamPage(items=items, next_cursor=next_cursor)


@router.post(
    "",
    status_code=201,
    response_model=TeamOut,
    responses=problems(401, 403, 409, 422, s409="A team with this name exists."),
)
async def create_team(
    body: TeamCreate, session: SessionDep, claims: CurrentAgent, response: Response
) -> TeamOut:
    """Create a team (admins only). Add members with `PATCH /v1/agents/{id}` (`teams`);
    conversations reach a team by escalation or an intake rule."""
    require_admin(claims)
    team = await service.create_team(session, claims.workspace_id, body.name)
    response.headers["Location"] = f"/v1/teams/{team.id}"
    return team


@router.get("/{team_id}", response_model=TeamDetail, responses=problems(401, 404, 422))
async def get_team(team_id: uuid.UUID, session: SessionDep, claims: CurrentAgent) -> TeamDetail:
    """One team with its active members."""
    return await service.get_team(session, claims.workspace_id, team_id)
