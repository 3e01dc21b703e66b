"""Dependencies of the agent API: state, DB session, the authenticated agent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from services.agent_api.auth import AgentClaims, verify_agent_token
from services.agent_api.realtime.hub import AgentHub
from shared.bus.port import Bus
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

_bearer = HTTPBearer(auto_error=False, description="Agent JWT from POST /v1/auth/token")


def current_agent(
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> AgentClaims:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ProblemError(
            401,
            "Send an agent token as `Authorization: Bearer <token>`.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        return verify_agent_token(credentials.credentials, state.settings)
    except TokenRejectedError as exc:
        raise ProblemError(
            401, str(exc), headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        ) from exc


CurrentAgent = Annotated[AgentClaims, Depends(current_agent)]
