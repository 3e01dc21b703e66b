"""Request and response bodies of agent sign-in and presence."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from shared.db.models import AgentStatus


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workspace: str = Field(min_length=1, max_length=64, description="Workspace slug.")
    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=200)


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - OAuth token type, not a secret
    expires_in: int = Field(description="Seconds until the token expires.")


class AgentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    workspace_id: uuid.UUID
    email: str
    display_name: str
    role: str
    tier: int
    skills: list[str]
    languages: list[str]
    status: AgentStatus
    capacity_units: float
    load_units: float
    status_changed_at: datetime


class StatusUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: AgentStatus
