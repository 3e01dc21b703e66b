"""Bodies of the contact endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from shared.db.models import ConversationStatus


class IdentityOut(BaseModel):
    """One address of the customer on one channel (email, phone, handle, chat session)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    channel: str = Field(examples=["email"])
    address: str = Field(examples=["pat@example.com"])
    created_at: datetime


class ContactOut(BaseModel):
    id: uuid.UUID
    display_name: str | None
    vip: bool
    merged_into_contact_id: uuid.UUID | None = Field(
        description="Set when this contact was merged into another: read that one instead "
        "(this one keeps no identities or conversations)."
    )
    created_at: datetime
    identities: list[IdentityOut]


class ContactConversation(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    channel: str
    status: ConversationStatus
    tier: int
    priority: int
    assignee_agent_id: uuid.UUID | None
    assignee_display_name: str | None = None
    last_message_at: datetime
    created_at: datetime
    resolved_at: datetime | None


class ContactProfile(ContactOut):
    """One customer across every channel: identities, conversations (most recent
    activity first) and whether they are a VIP."""

    conversations: list[ContactConversation]
    conversation_count: int = Field(
        description="All conversations of the contact (`conversations` holds at most 100)."
    )


class ContactPage(BaseModel):
    items: list[ContactOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class ContactUpdate(BaseModel):
    """Omitted fields stay; ``display_name: null`` clears the name."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"display_name": "Pat Doe", "vip": True}]}
    )

    display_name: str | None = Field(None, min_length=1, max_length=200)
    vip: bool | None = Field(None, description="Supervisors and admins only.")


class ContactMerge(BaseModel):
    model_config = ConfigDict(extra="forbid")

    other_contact_id: uuid.UUID = Field(
        description="The duplicate: its identities and conversations move to this contact."
    )
