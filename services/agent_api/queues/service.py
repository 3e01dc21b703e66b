"""Queue depth and waits, from the routing engine's own agent view and wait estimate."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.agent_api.queues.schemas import QueueOverview, QueueStats, TeamQueue, TierQueue
from shared.db.models import Conversation, ConversationStatus, Team, utcnow
from shared.events import Channel
from shared.routing.engine import MAX_TIER, agent_states, average_handle_seconds, load_policy
from shared.routing.policy import RoutingPolicy
from shared.routing.ranking import AgentState, estimate_wait_seconds


@dataclass(frozen=True)
class Waiting:
    conversation_id: uuid.UUID
    tier: int
    team_id: uuid.UUID | None
    channel: str
    waiting_since: datetime


def queue_stats(
    waiting: list[Waiting],
    serving: list[AgentState],
    *,
    now: datetime,
    avg_handle_seconds: float,
    units_of: Callable[[str], float],
) -> QueueStats:
    """Depth, oldest wait and the next customer's estimated wait of one queue (pure)."""
    units = sum(units_of(w.channel) for w in waiting) / len(waiting) if waiting else 1.0
    capacity = sum(a.capacity_units for a in serving) / len(serving) if serving else 0.0
    oldest = min((w.waiting_since for w in waiting), default=None)
    return QueueStats(
        depth=len(waiting),
        oldest_wait_seconds=max(0.0, (now - oldest).total_seconds()) if oldest else None,
        estimated_wait_seconds=estimate_wait_seconds(
            len(waiting) + 1,
            serving_agents=len(serving),
            concurrency=capacity / units if units else capacity,
            avg_handle_seconds=avg_handle_seconds,
        ),
        online_agents=len(serving),
    )


def _units_of(policy: RoutingPolicy) -> Callable[[str], float]:
    def units(channel: str) -> float:
        try:
            return policy.weight(Channel(channel))
        except ValueError:  # a channel this policy does not know weighs one unit
            return 1.0

    return units


def _utc(moment: datetime) -> datetime:
    """SQLite (dev mode) hands back naive datetimes; they are UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def queue_overview(session: AsyncSession, workspace_id: uuid.UUID) -> QueueOverview:
    _, policy = await load_policy(session, workspace_id)
    rows = await session.execute(
        select(
            Conversation.id,
            Conversation.tier,
            Conversation.team_id,
            Conversation.channel,
            Conversation.queued_at,
            Conversation.created_at,
        ).where(
            Conversation.workspace_id == workspace_id,
            Conversation.status == ConversationStatus.QUEUED.value,
        )
    )
    waiting = [
        Waiting(cid, tier, team_id, channel, _utc(queued_at or created_at))
        for cid, tier, team_id, channel, queued_at, created_at in rows
    ]
    agents = await agent_states(session, workspace_id)
    handle = await average_handle_seconds(session, workspace_id, policy.default_handle_seconds)
    teams = list(
        await session.scalars(
            select(Team).where(Team.workspace_id == workspace_id).order_by(Team.name, Team.id)
        )
    )
    now = utcnow()
    units = _units_of(policy)
    tiers = [
        TierQueue(
            tier=tier,
            **queue_stats(
                [w for w in waiting if w.team_id is None and w.tier == tier],
                [a for a in agents if a.tier >= tier],
                now=now,
                avg_handle_seconds=handle,
                units_of=units,
            ).model_dump(),
        )
        for tier in range(1, MAX_TIER + 1)
    ]
    team_queues = [
        TeamQueue(
            team_id=team.id,
            name=team.name,
            **queue_stats(
                [w for w in waiting if w.team_id == team.id],
                [a for a in agents if team.id in a.team_ids],
                now=now,
                avg_handle_seconds=handle,
                units_of=units,
            ).model_dump(),
        )
        for team in teams
    ]
    return QueueOverview(
        tiers=tiers, teams=team_queues, average_handle_seconds=handle, generated_at=now
    )
