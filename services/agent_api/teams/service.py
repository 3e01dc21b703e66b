"""Team use cases; membership changes go through the agent (``PATCH /v1/agents/{id}``)."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.agent_api.rest import keyset, split_page
from services.agent_api.teams.schemas import TeamDetail, TeamMember, TeamOut
from shared.db.models import Agent, AgentTeam, Team, utcnow
from shared.problems import ProblemError


async def _member_counts(
    session: AsyncSession, workspace_id: uuid.UUID, team_ids: list[uuid.UUID]
) -> dict[uuid.UUID, int]:
    if not team_ids:
        return {}
    rows = await session.execute(
        select(AgentTeam.team_id, func.count())
        .join(Agent, Agent.id == AgentTeam.agent_id)
        .where(
            AgentTeam.workspace_id == workspace_id,
            AgentTeam.team_id.in_(team_ids),
            Agent.deactivated_at.is_(None),
        )
        .group_by(AgentTeam.team_id)
    )
    return {team_id: int(count) for team_id, count in rows}


def _out(team: Team, members: int) -> TeamOut:
    return TeamOut(id=team.id, name=team.name, created_at=team.created_at, member_count=members)


async def list_teams(
    session: AsyncSession, workspace_id: uuid.UUID, *, limit: int, cursor: str | None
) -> tuple[list[TeamOut], str | None]:
    rows = list(
        await session.scalars(
            keyset(
                select(Team).where(Team.workspace_id == workspace_id),
                Team.created_at,
                Team.id,
                cursor=cursor,
                limit=limit,
                newest_first=False,
            )
        )
    )
    page, next_cursor = split_page(rows, limit, lambda t: (t.created_at, t.id))
    counts = await _member_counts(session, workspace_id, [t.id for t in page])
    return [_out(t, counts.get(t.id, 0)) for t in page], next_cursor


async def create_team(session: AsyncSession, workspace_id: uuid.UUID, name: str) -> TeamOut:
    taken = await session.scalar(
        select(Team.id).where(Team.workspace_id == workspace_id, Team.name == name)
    )
    if taken is not None:
        raise ProblemError(409, f"A team named {name!r} exists in this workspace.")
    team = Team(id=uuid.uuid4(), workspace_id=workspace_id, name=name, created_at=utcnow())
    session.add(team)
    try:
        await session.commit()
    except IntegrityError as exc:
        raise ProblemError(409, f"A team named {name!r} exists in this workspace.") from exc
    return _out(team, 0)


async def get_team(
    session: AsyncSession, workspace_id: uuid.UUID, team_id: uuid.UUID
) -> TeamDetail:
    team = await session.scalar(
        select(Team).where(Team.id == team_id, Team.workspace_id == workspace_id)
    )
    if team is None:
        raise ProblemError(404, f"No team {team_id} in this workspace.")
    members = list(
        await session.scalars(
            select(Agent)
            .join(AgentTeam, AgentTeam.agent_id == Agent.id)
            .where(
                AgentTeam.team_id == team.id,
                AgentTeam.workspace_id == workspace_id,
                Agent.deactivated_at.is_(None),
            )
            .order_by(Agent.display_name, Agent.id)
        )
    )
    return TeamDetail(
        **_out(team, len(members)).model_dump(),
        members=[TeamMember.model_validate(m) for m in members],
    )
