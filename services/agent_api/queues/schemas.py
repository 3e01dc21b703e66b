"""Bodies of the queue endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field


class QueueStats(BaseModel):
    depth: int = Field(description="Conversations waiting.")
    oldest_wait_seconds: float | None = Field(
        description="How long the longest-waiting conversation has waited; null when empty."
    )
    estimated_wait_seconds: float | None = Field(
        description="Expected wait of the next customer to join (behind everyone waiting), "
        "from recent handle times and the online agents who can serve this queue; null "
        "when no online agent can."
    )
    online_agents: int = Field(description="Online agents who can serve this queue.")


class TierQueue(QueueStats):
    tier: int = Field(ge=1, le=3)


class TeamQueue(QueueStats):
    team_id: uuid.UUID
    name: str


class QueueOverview(BaseModel):
    """Every queue of the workspace. A waiting conversation counts in exactly one queue:
    its team's when it was routed to a team, otherwise its tier's."""

    tiers: list[TierQueue]
    teams: list[TeamQueue]
    average_handle_seconds: float = Field(
        description="Mean of the last 50 finished assignments (the policy's default until "
        "there are any)."
    )
    generated_at: datetime
