"""Bodies of the conversation endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.db.models import ConversationStatus
from shared.events import Channel, MessageDirection


class ConversationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    channel: Channel
    status: ConversationStatus
    tier: int
    priority: int
    contact_id: uuid.UUID
    assignee_agent_id: uuid.UUID | None
    first_response_at: datetime | None
    last_message_at: datetime
    created_at: datetime


class ConversationPage(BaseModel):
    items: list[ConversationOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class MessageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    conversation_id: uuid.UUID
    channel: Channel
    direction: MessageDirection
    text: str
    author_agent_id: uuid.UUID | None
    delivery_status: str
    created_at: datetime


class ReplyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=4000, description="The reply to the customer.")


class EscalationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500, description="Why, for the next owner.")
    team: str | None = Field(
        None, min_length=1, max_length=100, description="A team instead of the next tier."
    )


class EscalationOut(BaseModel):
    escalated: bool
    tier: int
    team_id: uuid.UUID | None
    new_owner_agent_id: uuid.UUID | None
    supervisor_alerted: bool


class AssignmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    agent_id: uuid.UUID
    reason: str
    explanation: dict[str, Any]
    created_at: datetime
    closed_at: datetime | None
    closed_reason: str | None


class RoutingOut(BaseModel):
    conversation_id: uuid.UUID
    status: ConversationStatus
    tier: int
    priority: int
    team_id: uuid.UUID | None
    required_skills: list[str]
    sla_due_at: datetime | None
    intake: dict[str, Any] | None
    latest_decision: dict[str, Any] | None
    assignments: list[AssignmentOut]
