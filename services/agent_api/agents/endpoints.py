"""Sign-in and the signed-in agent's own profile and presence (administration of all
agents lives in ``admin_endpoints``)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from services.agent_api.agents import service
from services.agent_api.agents.schemas import AgentOut, StatusUpdate, TokenRequest, TokenResponse
from services.agent_api.auth import AgentClaims, issue_agent_token, verify_password
from services.agent_api.deps import CurrentAgent, SessionDep, StateDep
from shared.db.models import Agent, Workspace
from shared.outbox import commit_and_publish
from shared.problems import ProblemError

router = APIRouter(prefix="/v1", tags=["agents"])


@router.post("/auth/token", response_model=TokenResponse)
async def sign_in(body: TokenRequest, session: SessionDep, state: StateDep) -> TokenResponse:
    """Exchange an agent's workspace, email and password for a bearer token."""
    agent = await session.scalar(
        select(Agent)
        .join(Workspace, Workspace.id == Agent.workspace_id)
        .where(Workspace.slug == body.workspace, Agent.email == body.email.lower())
    )
    if agent is None or not verify_password(body.password, agent.password_hash):
        raise ProblemError(401, "Unknown workspace, email or password.")
    token, ttl = issue_agent_token(
        AgentClaims(agent_id=agent.id, workspace_id=agent.workspace_id, role=agent.role),
        state.settings,
    )
    return TokenResponse(access_token=token, expires_in=ttl)


async def _load_self(session: SessionDep, claims: AgentClaims) -> Agent:
    agent = await session.scalar(
        select(Agent).where(Agent.id == claims.agent_id, Agent.workspace_id == claims.workspace_id)
    )
    if agent is None:
        raise ProblemError(401, "The agent of this token no longer exists.")
    return agent


@router.get("/me", response_model=AgentOut)
async def me(session: SessionDep, claims: CurrentAgent) -> Agent:
    """The signed-in agent."""
    return await _load_self(session, claims)


@router.put("/me/status", response_model=AgentOut)
async def set_status(
    body: StatusUpdate, session: SessionDep, claims: CurrentAgent, state: StateDep
) -> Agent:
    """Set presence. Going online pulls waiting conversations at once; away or offline
    for longer than the policy's grace period hands the agent's conversations on."""
    agent = await _load_self(session, claims)
    if not await service.change_status(session, agent, body.status):
        return agent
    await commit_and_publish(session, state.bus, state.database.sessions)
    await session.refresh(agent)
    return agent
