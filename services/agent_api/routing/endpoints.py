"""The workspace's routing policy: read, replace (versioned), list versions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from services.agent_api.deps import CurrentAgent, SessionDep
from shared.db.models import AgentRole, RoutingPolicyVersion
from shared.problems import ProblemError
from shared.routing.engine import load_policy
from shared.routing.policy import RoutingPolicy

router = APIRouter(prefix="/v1/routing", tags=["routing"])


class PolicyOut(BaseModel):
    version: int
    policy: RoutingPolicy
    created_at: datetime | None = None


class PolicyVersionOut(BaseModel):
    version: int
    created_at: datetime
    created_by_agent_id: str | None


@router.get("/policy", response_model=PolicyOut)
async def get_policy(session: SessionDep, claims: CurrentAgent) -> PolicyOut:
    """The policy in force (version 0 is the built-in default)."""
    version, policy = await load_policy(session, claims.workspace_id)
    return PolicyOut(version=version, policy=policy)


@router.put("/policy", response_model=PolicyOut)
async def put_policy(body: RoutingPolicy, session: SessionDep, claims: CurrentAgent) -> PolicyOut:
    """Replace the policy. Invalid documents get 422 naming the bad field and change
    nothing; a valid one becomes a new version, in force within seconds, no restart."""
    if claims.role not in (AgentRole.ADMIN.value, AgentRole.SUPERVISOR.value):
        raise ProblemError(403, "Only supervisors and admins can change the routing policy.")
    current, _ = await load_policy(session, claims.workspace_id)
    row = RoutingPolicyVersion(
        workspace_id=claims.workspace_id,
        version=current + 1,
        document=body.model_dump(mode="json"),
        created_by_agent_id=claims.agent_id,
    )
    session.add(row)
    try:
        await session.commit()
    except IntegrityError as exc:
        raise ProblemError(409, "The policy changed meanwhile; read it and try again.") from exc
    return PolicyOut(version=row.version, policy=body, created_at=row.created_at)


@router.get("/policy/versions", response_model=list[PolicyVersionOut])
async def policy_versions(session: SessionDep, claims: CurrentAgent) -> list[dict[str, Any]]:
    """Every stored version, newest first."""
    rows = await session.scalars(
        select(RoutingPolicyVersion)
        .where(RoutingPolicyVersion.workspace_id == claims.workspace_id)
        .order_by(RoutingPolicyVersion.version.desc())
    )
    return [
        {
            "version": row.version,
            "created_at": row.created_at,
            "created_by_agent_id": str(row.created_by_agent_id)
            if row.created_by_agent_id
            else None,
        }
        for row in rows
    ]
