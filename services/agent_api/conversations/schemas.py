"""Bodies of the conversation endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


class AttachmentOut(BaseModel):
    """An attachment's metadata (its content stays in the attachment store)."""

    model_config = ConfigDict(extra="ignore")

    filename: str
    content_type: str
    size: int = Field(ge=0, description="Bytes.")
    inline: bool = Field(False, description="Shown in the body (e.g. an email's cid: image).")
    content_id: str | None = Field(None, description="The email `Content-ID`, if any.")


class MessageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    mentions: list[str] | None = None
    conversation_id: uuid.UUID
    channel: Channel
    direction: MessageDirection
    text: str
    author_agent_id: uuid.UUID | None
    delivery_status: str
    created_at: datetime
    delivery_status_reason: str | None = Field(
        None, description="Why a reply failed (e.g. the provider's refusal), when it did."
    )
    attachments: list[AttachmentOut] = Field(
        default_factory=list, description="The message's attachments, metadata only."
    )

    @field_validator("attachments", mode="before")
    @classmethod
    def _no_attachments(cls, value: Any) -> Any:
        return [] if value is None else value


class ReplyRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"text": "Sorry for the wait! Your parcel ships today."}]},
    )

    text: str = Field(min_length=1, max_length=4000, description="The reply to the customer.")


class EscalationRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"reason": "Needs a refund decision", "team": "billing"}]},
    )

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


class NoteRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"text": "@cy@demo.omniroute.dev could you check the invoice?", "mentions": []}
            ]
        },
    )

    text: str = Field(
        min_length=1, max_length=4000, description="Internal note; `@agent@email` mentions."
    )
    mentions: list[uuid.UUID] = Field(
        default_factory=list, max_length=50, description="Agents to notify, besides @mentions."
    )


class ConsultationRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"note": "Is this refundable?", "team": "billing"}]},
    )

    note: str = Field(min_length=1, max_length=4000, description="What you need help with.")
    agent_id: uuid.UUID | None = Field(None, description="Ask this agent ...")
    team: str | None = Field(None, min_length=1, max_length=100, description="... or this team.")


class ConsultationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    conversation_id: uuid.UUID
    consultant_agent_id: uuid.UUID | None
    team_id: uuid.UUID | None
    created_at: datetime


class TransferRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"reason": "Customer asked for a German speaker", "tier": 2}]
        },
    )

    reason: str = Field(min_length=1, max_length=500, description="Why, for the next owner.")
    agent_id: uuid.UUID | None = Field(None, description="An online agent with free capacity ...")
    team: str | None = Field(None, min_length=1, max_length=100, description="... or a team ...")
    tier: int | None = Field(None, ge=1, le=3, description="... or a tier.")


class TransferOut(BaseModel):
    conversation: ConversationOut
    new_owner_agent_id: uuid.UUID | None = Field(description="None: queued for the target.")


class ResolveRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"outcome_code": "answered"}]}
    )

    outcome_code: str | None = Field(
        None, min_length=1, max_length=64, description="One of GET /v1/outcome-codes."
    )


class SnoozeRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"until": "2030-01-06T09:00:00Z"}]}
    )

    until: datetime = Field(description="When it comes back (with a time zone).")
