"""The supervisor wall's snapshot."""

from __future__ import annotations

from fastapi import APIRouter

from services.agent_api.deps import CurrentAgent, SessionDep
from services.agent_api.rest import problems
from services.agent_api.supervisor.schemas import WallSnapshot
from services.agent_api.supervisor.service import wall_snapshot
from shared.problems import ProblemError

router = APIRouter(prefix="/v1/supervisor", tags=["supervisor"])


@router.get("/wall", response_model=WallSnapshot, responses=problems(401, 403))
async def supervisor_wall(session: SessionDep, claims: CurrentAgent) -> WallSnapshot:
    """Everything a supervisor wall shows at a glance: every queue's depth and oldest
    wait, active agents with status and load, first-response SLA breaches (and those due
    within 15 minutes), and conversations opened per hour over the last 24 hours.
    Supervisors and admins only."""
    if not claims.is_supervisor:
        raise ProblemError(403, "Only supervisors and admins can read the wall.")
    return await wall_snapshot(session, claims.workspace_id)
