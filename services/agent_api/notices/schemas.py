"""Bodies of the notice endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from shared.events import Channel

MAX_RECIPIENTS = 500


class NoticeCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "text": "Your order 1042 has shipped and arrives on Thursday.",
                    "subject": "Your order has shipped",
                    "contact_ids": ["5b0e7c1e-4f7a-4d43-9a53-2f1f0f4e8a11"],
                }
            ]
        },
    )

    text: str = Field(min_length=1, max_length=4000)
    subject: str | None = Field(
        None, min_length=1, max_length=200, description="Email subject (other channels: unused)."
    )
    contact_ids: list[uuid.UUID] = Field(
        min_length=1, max_length=MAX_RECIPIENTS, description="Contacts of this workspace."
    )
    channel: Channel | None = Field(
        None,
        description="Send only on this channel. Default: the channel each contact wrote on "
        "most recently (email, SMS and social before web chat).",
    )


class NoticeRecipientOut(BaseModel):
    contact_id: uuid.UUID
    status: str = Field(description="queued, sent, delivered, failed or skipped.")
    reason: str | None = Field(description="Why it was skipped or failed.")
    channel: str | None
    conversation_id: uuid.UUID | None = Field(description="Where the notice was stored.")
    message_id: uuid.UUID | None


class NoticeOut(BaseModel):
    id: uuid.UUID
    subject: str | None
    text: str
    channel: str | None
    created_at: datetime
    counts: dict[str, int] = Field(description="Recipients by status.")
    recipients: list[NoticeRecipientOut]


class NoticeSummary(BaseModel):
    id: uuid.UUID
    subject: str | None
    text: str
    channel: str | None
    created_at: datetime


class NoticePage(BaseModel):
    items: list[NoticeSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")
