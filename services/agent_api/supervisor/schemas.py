"""Bodies of the supervisor endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from services.agent_api.queues.schemas import QueueOverview
from shared.db.models import AgentStatus, ConversationStatus
from shared.events import Channel


class AgentLoad(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    display_name: str
    role: str
    tier: int
    status: AgentStatus
    load_units: float = Field(description="Work units the agent carries now.")
    capacity_units: float


class SlaBreach(BaseModel):
    conversation_id: uuid.UUID
    channel: Channel
    status: ConversationStatus
    tier: int
    sla_due_at: datetime
    overdue_seconds: float = Field(ge=0)


class SlaSummary(BaseModel):
    breached: int = Field(description="Open conversations past their first-response due time.")
    at_risk: int = Field(
        description="Open conversations whose first response falls due within `at_risk_seconds`."
    )
    at_risk_seconds: int
    most_overdue: list[SlaBreach] = Field(description="The longest overdue, at most ten.")


class HourVolume(BaseModel):
    hour_start: datetime = Field(description="Start of the hour (UTC).")
    conversations: int = Field(ge=0, description="Conversations opened in that hour.")


class FollowUpSummary(BaseModel):
    open: int = Field(ge=0, description="Low-score CSAT follow-ups not yet closed.")
    oldest_opened_at: datetime | None = Field(
        description="When the oldest open follow-up was opened; null when none is open."
    )
    oldest_open_seconds: float | None = Field(
        description="How long the oldest open follow-up has waited; null when none is open."
    )


class WallSnapshot(BaseModel):
    """What a supervisor wall shows, read in one go."""

    queues: QueueOverview
    agents: list[AgentLoad] = Field(description="Active agents, online first.")
    agents_by_status: dict[AgentStatus, int]
    sla: SlaSummary
    volume_by_hour: list[HourVolume] = Field(
        description="Conversations opened in each of the last 24 hours, oldest hour first."
    )
    generated_at: datetime
    csat_follow_ups: FollowUpSummary = Field(
        description="Open low-score CSAT follow-ups (GET /v1/csat/follow-ups?status=open)."
    )
