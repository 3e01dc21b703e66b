"""Bodies of the CSAT endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class FollowUpStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    ALL = "all"


class FollowUpOut(BaseModel):
    """A low score a supervisor follows up."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    conversation_id: uuid.UUID
    survey_id: uuid.UUID
    agent_id: uuid.UUID | None = Field(description="The conversation's owner at resolve.")
    score: int
    opened_at: datetime
    closed_at: datetime | None
    closed_by_agent_id: uuid.UUID | None
    note: str | None


class FollowUpPage(BaseModel):
    items: list[FollowUpOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class CloseFollowUp(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str = Field(min_length=1, max_length=5000, description="What was done.")


class SurveyAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    score: int = Field(ge=1, le=5, description="1 = poor … 5 = great.")


class SurveyRecorded(BaseModel):
    score: int
    recorded_at: datetime
