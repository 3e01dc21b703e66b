"""Bodies of the webhook endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.webhooks import webhook_event_types


def _known_event_types(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    known = webhook_event_types()
    unknown = sorted({t for t in value if t not in known})
    if unknown:
        raise ValueError(
            f"unknown event types {unknown}; valid: {sorted(known)} (GET /v1/webhooks/event-types)"
        )
    return sorted(set(value))


class WebhookCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://crm.example.com/hooks/omniroute",
                    "event_types": [
                        "omniroute.conversation.assigned.v1",
                        "omniroute.message.created.v1",
                    ],
                    "description": "CRM sync",
                }
            ]
        },
    )

    url: str = Field(
        min_length=1,
        max_length=2000,
        description="Receives a POST per event; https (and a public host) outside dev/test.",
    )
    event_types: list[str] = Field(
        min_length=1, max_length=50, description="Event types to receive (see `event-types`)."
    )
    description: str | None = Field(None, max_length=200)
    enabled: bool = True

    _check_types = field_validator("event_types")(_known_event_types)


class WebhookUpdate(BaseModel):
    """Omitted (or null) fields stay as they are."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, min_length=1, max_length=2000)
    event_types: list[str] | None = Field(None, min_length=1, max_length=50)
    description: str | None = Field(None, max_length=200)
    enabled: bool | None = None

    _check_types = field_validator("event_types")(_known_event_types)


class WebhookOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    url: str
    event_types: list[str]
    description: str | None
    enabled: bool = Field(description="Disabled subscriptions get no new deliveries.")
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="Signing secret (`whsec_…`), shown only in this answer: keep it to "
        "verify `Omni-Webhook-Signature`."
    )


class WebhookPage(BaseModel):
    items: list[WebhookOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class WebhookEventTypes(BaseModel):
    items: list[str] = Field(description="Event types a subscription may name.")


class WebhookAttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    number: int = Field(description="1 for the first attempt.")
    attempted_at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status; null if none.")
    error: str | None = Field(description="Why the attempt failed (HTTP status, timeout, …).")
    duration_ms: float


class WebhookDeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID = Field(description="Sent as `Omni-Webhook-Id`; the same on every retry.")
    subscription_id: uuid.UUID
    event_id: str = Field(description="The CloudEvents `id` of the event.")
    event_type: str
    status: str = Field(description="pending, delivered or failed (gave up; replayable).")
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    completed_at: datetime | None


class WebhookDeliveryDetail(WebhookDeliveryOut):
    attempt_log: list[WebhookAttemptOut] = Field(description="Every attempt, oldest first.")
    payload: dict[str, Any] = Field(description="The JSON body sent (a CloudEvent).")


class WebhookDeliveryPage(BaseModel):
    items: list[WebhookDeliveryOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")
