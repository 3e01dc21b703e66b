"""Queues: depth, oldest wait and estimated wait per tier and per team."""

from __future__ import annotations

from fastapi import APIRouter

from services.agent_api.deps import CurrentAgent, SessionDep
from services.agent_api.queues.schemas import QueueOverview
from services.agent_api.queues.service import queue_overview
from services.agent_api.rest import problems

router = APIRouter(prefix="/v1/queues", tags=["queues"])


@router.get("", response_model=QueueOverview, responses=problems(401))
async def list_queues(session: SessionDep, claims: CurrentAgent) -> QueueOverview:
    """Every queue of the workspace: tiers 1-3 (conversations not routed to a team) and
    each team. For each: how many wait, how long the oldest has waited, and the wait a
    customer joining now can expect, from recent handle times and the online agents
    who can serve it (tier at least the queue's tier, or members of the team)."""
    return await queue_overview(session, claims.workspace_id)
