"""Bodies of the team endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from shared.db.models import AgentStatus


class TeamCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "billing"}]})

    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^\S(.*\S)?$",
        description="Unique in the workspace; no leading or trailing spaces.",
    )


class TeamOut(BaseModel):
    id: uuid.UUID
    name: str
    created_at: datetime
    member_count: int = Field(description="Active (not deactivated) members.")


class TeamMember(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    display_name: str
    tier: int
    status: AgentStatus


class TeamDetail(TeamOut):
    members: list[TeamMember]


class TeamPage(BaseModel):
    items: list[TeamOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")
