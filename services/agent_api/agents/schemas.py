"""Request and response bodies of agent sign-in, presence and administration."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from shared.db.models import AgentRole, AgentStatus


class TokenRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "workspace": "demo",
                    "email": "ada@demo.omniroute.dev",
                    "password": "omniroute-demo",
                }
            ]
        },
    )

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
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"status": "online"}]}
    )

    status: AgentStatus


SkillName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
LanguageCode = Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=16)]
TeamName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class AgentDetail(AgentOut):
    """An agent as admins and supervisors see it, with teams and lifecycle."""

    teams: list[str] = Field(description="Names of the agent's teams.")
    created_at: datetime
    deactivated_at: datetime | None = Field(
        description="Set once the agent was deactivated (cannot sign in any more)."
    )


class AgentPage(BaseModel):
    items: list[AgentDetail]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class AgentCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "email": "dee@acme.example",
                    "display_name": "Dee",
                    "password": "correct horse battery",
                    "role": "agent",
                    "tier": 2,
                    "skills": ["billing"],
                    "languages": ["en", "de"],
                    "capacity_units": 3,
                    "teams": ["billing"],
                }
            ]
        },
    )

    email: str = Field(min_length=3, max_length=320, pattern=EMAIL_PATTERN)
    display_name: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=8, max_length=200)
    role: AgentRole = AgentRole.AGENT
    tier: int = Field(1, ge=1, le=3)
    skills: list[SkillName] = Field(default_factory=list, max_length=50)
    languages: list[LanguageCode] = Field(default_factory=list, max_length=20)
    capacity_units: float = Field(3.0, gt=0, le=100, description="Concurrent work units.")
    teams: list[TeamName] = Field(
        default_factory=list, max_length=50, description="Names of existing teams."
    )


class AgentUpdate(BaseModel):
    """Omitted (or null) fields stay as they are; ``teams`` replaces the membership."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"tier": 2, "capacity_units": 4, "teams": ["billing"]}]},
    )

    email: str | None = Field(None, min_length=3, max_length=320, pattern=EMAIL_PATTERN)
    display_name: str | None = Field(None, min_length=1, max_length=200)
    password: str | None = Field(None, min_length=8, max_length=200)
    role: AgentRole | None = None
    tier: int | None = Field(None, ge=1, le=3)
    skills: list[SkillName] | None = Field(None, max_length=50)
    languages: list[LanguageCode] | None = Field(None, max_length=20)
    capacity_units: float | None = Field(
        None, gt=0, le=100, description="Not below the agent's current load."
    )
    teams: list[TeamName] | None = Field(None, max_length=50)
