"""Dependencies of the agent API: state, DB session, the authenticated agent."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.agent_api.auth import AgentClaims, api_key_prefix, hash_api_key, verify_agent_token
from services.agent_api.realtime.hub import AgentHub
from shared.bus.port import Bus
from shared.db.models import Agent, ApiKey
from shared.db.session import Database
from shared.problems import ProblemError
from shared.settings import Settings
from shared.websocket import TokenRejectedError


@dataclass
class AgentApiState:
    settings: Settings
    bus: Bus
    database: Database
    hub: AgentHub


def api_state(request: Request) -> AgentApiState:
    state: AgentApiState = request.app.state.agent_api
    return state


StateDep = Annotated[AgentApiState, Depends(api_state)]


async def db_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    async with state.database.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(db_session)]

_bearer = HTTPBearer(
    auto_error=False, description="Agent JWT from POST /v1/auth/token, or an API key"
)
_api_key = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="Integration API key (omk_…)"
)


async def current_agent(
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> AgentClaims:
    """The caller: an agent's JWT, or an integration's API key (header or bearer)."""
    presented = api_key or (credentials.credentials if credentials else None)
    if presented and api_key_prefix(presented):
        return await _api_key_claims(state, presented)
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ProblemError(
            401,
            "Send an agent token as `Authorization: Bearer <token>` or an API key.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        claims = verify_agent_token(credentials.credentials, state.settings)
    except TokenRejectedError as exc:
        raise ProblemError(
            401, str(exc), headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        ) from exc
    async with state.database.sessions() as session:
        role = await session.scalar(
            select(Agent.role).where(
                Agent.id == claims.agent_id,
                Agent.workspace_id == claims.workspace_id,
                Agent.deactivated_at.is_(None),
            )
        )
    if role is None:
        # A deactivated (or deleted) agent's tokens stop working at once, not at expiry.
        raise ProblemError(
            401,
            "The agent of this token is deactivated.",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    # The role is the agent's as it is now, not as it was when the token was issued: a
    # demoted admin loses the admin endpoints at once, not at the token's expiry.
    return replace(claims, role=role)


async def _api_key_claims(state: AgentApiState, key: str) -> AgentClaims:
    prefix = api_key_prefix(key)
    async with state.database.sessions() as session:
        row = await session.scalar(select(ApiKey).where(ApiKey.key_prefix == prefix))
    if (
        row is None
        or row.revoked_at is not None
        or not hmac.compare_digest(row.key_hash, hash_api_key(key))
    ):
        raise ProblemError(401, "Unknown or revoked API key.")
    return AgentClaims(
        agent_id=None, workspace_id=row.workspace_id, role=row.role, api_key_id=row.id
    )


CurrentAgent = Annotated[AgentClaims, Depends(current_agent)]


def require_agent(claims: AgentClaims) -> uuid.UUID:
    """The agent behind the call; integrations (API keys) get 403 here."""
    if claims.agent_id is None:
        raise ProblemError(403, "This endpoint acts as an agent; use an agent token.")
    return claims.agent_id


def require_supervisor(claims: AgentClaims) -> None:
    if not claims.is_supervisor:
        raise ProblemError(403, "Only supervisors and admins can do this.")


def require_admin(claims: AgentClaims) -> None:
    if claims.role != "admin":
        raise ProblemError(403, "Only admins can do this.")
