"""The wall's snapshot: queue figures, agents and their load, SLA breaches, hourly volume.

Every query is scoped by workspace and served by an index: agents by
``ix_agents_workspace_status``, open conversations by ``ix_conversations_queue``
(workspace, status, …), the last day's volume by ``ix_conversations_workspace_created``
and open CSAT follow-ups by ``ix_csat_follow_ups_open`` (workspace, closed_at, opened_at).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.agent_api.queues.service import queue_overview
from services.agent_api.supervisor.schemas import (
    AgentLoad,
    FollowUpSummary,
    HourVolume,
    SlaBreach,
    SlaSummary,
    WallSnapshot,
)
from shared.db.models import (
    Agent,
    AgentStatus,
    Conversation,
    ConversationStatus,
    CsatFollowUp,
    utcnow,
)
from shared.events import Channel

HOURS: Final = 24
AT_RISK_SECONDS: Final = 15 * 60
MOST_OVERDUE: Final = 10
# Waiting for a first response: the only states the first-response clock runs in.
OPEN_STATUSES: Final = (ConversationStatus.QUEUED.value, ConversationStatus.ASSIGNED.value)
_STATUS_ORDER: Final = {AgentStatus.ONLINE: 0, AgentStatus.AWAY: 1, AgentStatus.OFFLINE: 2}


@dataclass(frozen=True)
class OpenConversation:
    conversation_id: uuid.UUID
    channel: str
    status: str
    tier: int
    sla_due_at: datetime


def hour_floor(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def volume_by_hour(
    created: Iterable[datetime], *, now: datetime, hours: int = HOURS
) -> list[HourVolume]:
    """Counts per hour for the ``hours`` hours up to and including ``now``'s (pure)."""
    first = hour_floor(now) - timedelta(hours=hours - 1)
    counts = Counter(hour_floor(moment) for moment in created if moment >= first)
    return [
        HourVolume(hour_start=start, conversations=counts.get(start, 0))
        for start in (first + timedelta(hours=i) for i in range(hours))
    ]


def sla_summary(
    open_conversations: Iterable[OpenConversation],
    *,
    now: datetime,
    at_risk_seconds: int = AT_RISK_SECONDS,
    keep: int = MOST_OVERDUE,
) -> SlaSummary:
    """Breached and soon-due first responses (pure)."""
    breaches: list[SlaBreach] = []
    at_risk = 0
    for row in open_conversations:
        left = (row.sla_due_at - now).total_seconds()
        if left < 0:
            breaches.append(
                SlaBreach(
                    conversation_id=row.conversation_id,
                    channel=Channel(row.channel),
                    status=ConversationStatus(row.status),
                    tier=row.tier,
                    sla_due_at=row.sla_due_at,
                    overdue_seconds=-left,
                )
            )
        elif left <= at_risk_seconds:
            at_risk += 1
    breaches.sort(key=lambda b: b.overdue_seconds, reverse=True)
    return SlaSummary(
        breached=len(breaches),
        at_risk=at_risk,
        at_risk_seconds=at_risk_seconds,
        most_overdue=breaches[:keep],
    )


def _aware(moment: datetime) -> datetime:
    """SQLite (dev mode) hands back naive datetimes; they are UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def wall_snapshot(session: AsyncSession, workspace_id: uuid.UUID) -> WallSnapshot:
    now = utcnow()
    queues = await queue_overview(session, workspace_id)
    agents = list(
        await session.scalars(
            select(Agent).where(Agent.workspace_id == workspace_id, Agent.deactivated_at.is_(None))
        )
    )
    agents.sort(key=lambda a: (_STATUS_ORDER.get(AgentStatus(a.status), 3), a.display_name))
    by_status = Counter(AgentStatus(a.status) for a in agents)
    open_rows = await session.execute(
        select(
            Conversation.id,
            Conversation.channel,
            Conversation.status,
            Conversation.tier,
            Conversation.sla_due_at,
        ).where(
            Conversation.workspace_id == workspace_id,
            Conversation.status.in_(OPEN_STATUSES),
            Conversation.first_response_at.is_(None),
            Conversation.sla_due_at.is_not(None),
            Conversation.sla_due_at <= now + timedelta(seconds=AT_RISK_SECONDS),
        )
    )
    since = hour_floor(now) - timedelta(hours=HOURS - 1)
    created = await session.scalars(
        select(Conversation.created_at).where(
            Conversation.workspace_id == workspace_id, Conversation.created_at >= since
        )
    )
    open_count, oldest = (
        await session.execute(
            select(func.count(), func.min(CsatFollowUp.opened_at)).where(
                CsatFollowUp.workspace_id == workspace_id, CsatFollowUp.closed_at.is_(None)
            )
        )
    ).one()
    oldest_at = _aware(oldest) if oldest is not None else None
    return WallSnapshot(
        queues=queues,
        agents=[AgentLoad.model_validate(a) for a in agents],
        agents_by_status={status: by_status.get(status, 0) for status in AgentStatus},
        sla=sla_summary(
            (
                OpenConversation(cid, channel, status, tier, _aware(due))
                for cid, channel, status, tier, due in open_rows
                if due is not None
            ),
            now=now,
        ),
        volume_by_hour=volume_by_hour((_aware(c) for c in created), now=now),
        generated_at=now,
        csat_follow_ups=FollowUpSummary(
            open=open_count,
            oldest_opened_at=oldest_at,
            oldest_open_seconds=(
                max(0.0, (now - oldest_at).total_seconds()) if oldest_at is not None else None
            ),
        ),
    )
