"""Bodies of the API key endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class ApiKeyRole(StrEnum):
    SUPERVISOR = "supervisor"
    ADMIN = "admin"


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "CRM sync", "role": "supervisor"}]},
    )

    name: str = Field(min_length=1, max_length=100, description="What the key is for.")
    role: ApiKeyRole = Field(description="What the integration may do, as that role.")


class ApiKeyOut(BaseModel):
    """A key's metadata; the secret itself is never shown again after creation."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    role: ApiKeyRole
    key_prefix: str = Field(description="Identifies the key (`omk_<prefix>_…`), not secret.")
    created_by_agent_id: uuid.UUID | None
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(
        description="The secret key, shown only in this answer. Send it as `X-API-Key` "
        "or `Authorization: Bearer`."
    )


class ApiKeyPage(BaseModel):
    items: list[ApiKeyOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")
