"""Bodies of the channel account endpoints."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from shared.channels.accounts import (
    InvalidAccountError,
    check_adapter,
    check_settings,
    normalize_account_address,
)
from shared.events import Channel

_REFERENCE_HELP = (
    "Names the provider secret, never holds it: `file:<name>`, a file the operator placed "
    "in this workspace's directory under `OMNI_CHANNEL_SECRETS_DIR` "
    "(`<dir>/<workspace id>/<name>`; an absolute path inside that directory is accepted "
    "too), stored as the absolute `file:/…` reference ingest reads (a regular file of at "
    "most 64 KiB, trailing whitespace stripped). `env:` references and paths outside the "
    "workspace's directory are refused; without `OMNI_CHANNEL_SECRETS_DIR` every "
    "reference is. What the file must hold depends on the adapter (e.g. Twilio "
    "`AccountSid:AuthToken`, Meta `<app secret>:<access token>`). Null: no secret."
)
_SETTINGS_HELP = "The adapter's per-account settings, a JSON object of at most 16 KiB."


def _checked(rule: Callable[[Channel, str], str], channel: Channel, value: str) -> str:
    try:
        return rule(channel, value)
    except InvalidAccountError as exc:
        raise ValueError(str(exc)) from exc


def _settings(value: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else check_settings(value)


class ChannelAccountCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "channel": "sms",
                    "adapter": "twilio",
                    "address": "+1 415 555 0100",
                    "display_name": "Acme SMS",
                    "secret_ref": "file:twilio-acme",
                    "settings": {"messaging_service_sid": "MG0123456789abcdef0123456789abcdef"},
                }
            ]
        },
    )

    channel: Channel = Field(description="The product channel the account is on.")
    adapter: str = Field(
        min_length=1,
        max_length=64,
        description="An installed channel adapter (entry point `omniroute.channels`); a "
        "built-in one must serve `channel`: `email`, `sendgrid`, `mailgun` (email), "
        "`twilio` (sms), `meta` (social), `webchat` (webchat).",
    )
    address: str = Field(
        min_length=1,
        max_length=320,
        description="Our address on the channel, stored normalized: email lower case, SMS "
        "E.164 (or a short code), a page or partner id otherwise (lower case). Unique per "
        "channel across all workspaces; cannot be changed later.",
    )
    display_name: str | None = Field(None, min_length=1, max_length=200)
    secret_ref: str | None = Field(None, max_length=500, description=_REFERENCE_HELP)
    settings: dict[str, Any] = Field(default_factory=dict, description=_SETTINGS_HELP)
    enabled: bool = True

    _check_settings = field_validator("settings")(_settings)

    # Fields are validated in order, so `channel` is in `info.data` once it is valid.
    @field_validator("adapter")
    @classmethod
    def _check_adapter(cls, value: str, info: ValidationInfo) -> str:
        channel = info.data.get("channel")
        return value if channel is None else _checked(check_adapter, channel, value)

    @field_validator("address")
    @classmethod
    def _normalize_address(cls, value: str, info: ValidationInfo) -> str:
        channel = info.data.get("channel")
        return value if channel is None else _checked(normalize_account_address, channel, value)


class ChannelAccountUpdate(BaseModel):
    """Omitted fields stay as they are; `display_name` and `secret_ref` may be set to
    null. `channel` and `address` are the account's identity and cannot change."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"secret_ref": "file:twilio-acme"}]},
    )

    adapter: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Switch provider for the same address (e.g. `sendgrid` → `mailgun`); "
        "the webhook path changes with it.",
    )
    display_name: str | None = Field(None, min_length=1, max_length=200)
    secret_ref: str | None = Field(None, max_length=500, description=_REFERENCE_HELP)
    settings: dict[str, Any] | None = Field(None, description=_SETTINGS_HELP + " Replaces them.")
    enabled: bool | None = Field(None, description="False disables the account.")

    _check_settings = field_validator("settings")(_settings)


class ChannelAccountOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    channel: Channel
    adapter: str
    address: str
    display_name: str | None
    secret_ref: str | None = Field(description="The reference, never the secret.")
    settings: dict[str, Any]
    enabled: bool = Field(
        description="A disabled account is unknown to ingest (its webhook answers 404, "
        "the SMTP listener refuses its address) and replies are sent from the workspace's "
        "oldest enabled account of the channel."
    )
    created_at: datetime
    webhook_path: str | None = Field(
        description="Where the provider must deliver, on ingest's public URL "
        "(`OMNI_PUBLIC_BASE_URL`): `POST /v1/channels/{adapter}/{id}` (Mailgun raw MIME: "
        "`…/mime`; Meta's verification `GET` on the same path; Twilio status callbacks "
        "`…/status`, set by ingest). Null for adapters without a webhook: `email` (the "
        "SMTP listener takes mail addressed to `address`) and `webchat` (the widget "
        "opens sessions at `/v1/webchat/{workspace slug}/sessions`)."
    )


class ChannelAccountPage(BaseModel):
    items: list[ChannelAccountOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")
