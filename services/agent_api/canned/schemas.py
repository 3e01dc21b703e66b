"""Bodies of the canned response and outcome code endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

SHORTCUT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class CannedResponseOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    shortcut: str = Field(description="Unique in the workspace, typed as `/shortcut`.")
    title: str
    body: str
    created_at: datetime
    updated_at: datetime


class CannedResponsePage(BaseModel):
    items: list[CannedResponseOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class CannedResponseCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "shortcut": "refund-timeline",
                    "title": "Refund timeline",
                    "body": "Refunds reach your account within 5 business days.",
                }
            ]
        },
    )

    shortcut: str = Field(min_length=1, max_length=64, pattern=SHORTCUT_PATTERN)
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=4000)


class CannedResponseUpdate(BaseModel):
    """Omitted (or null) fields stay as they are."""

    model_config = ConfigDict(extra="forbid")

    shortcut: str | None = Field(None, min_length=1, max_length=64, pattern=SHORTCUT_PATTERN)
    title: str | None = Field(None, min_length=1, max_length=200)
    body: str | None = Field(None, min_length=1, max_length=4000)


class OutcomeCodeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    code: str = Field(description="What `resolve` records, e.g. `solved`.")
    label: str
    created_at: datetime


class OutcomeCodePage(BaseModel):
    items: list[OutcomeCodeOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class OutcomeCodeCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"code": "refunded", "label": "Refund issued"}]},
    )

    code: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    label: str = Field(min_length=1, max_length=200)
