"""The channel-adapter SDK: what an adapter is and what it is given.

An adapter turns one provider's requests into normalized ``MessageReceived`` payloads
and sends ``OutboundMessageRequested`` payloads back through the provider. It never
touches Kafka or the database: the ingest service verifies, parses and publishes with
it, answers the provider, and runs the outbound dispatcher around ``send``.

    verify(request, ctx)      -> Verification      (or ChannelRequestError 401/403)
    parse(request, ctx)       -> [MessageReceived]   (zero or more; ChannelRequestError 4xx)
    send(message, ctx)        -> SendResult          (ProviderUnavailableError: retry later)
    map_receipt(request, ctx) -> [DeliveryReceipt]
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol, TypeVar, runtime_checkable

from shared.channels.attachments import AttachmentStore
from shared.events import Channel, MessageReceived, OutboundMessageRequested

T = TypeVar("T")


class ChannelRequestError(Exception):
    """A provider request the adapter refuses; nothing of it is published.

    ``status`` is the HTTP status it means (401/403 for authentication, 413 too large,
    415/422 for content); ``smtp_reply`` is the same refusal for the SMTP listener.
    ``permanent`` says whether the provider retrying the same request can ever succeed
    (adapters whose provider has a "stop retrying" status use it, e.g. Mailgun's 406).
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        permanent: bool = True,
        smtp_reply: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.permanent = permanent
        self.smtp_reply = smtp_reply or _default_smtp_reply(status, detail)
        self.headers = dict(headers or {})


def _default_smtp_reply(status: int, detail: str) -> str:
    text = " ".join(detail.split())[:400]
    if status == 413:
        return f"552 5.3.4 {text}"
    if status in (401, 403):
        return f"550 5.7.1 {text}"
    if status >= 500:
        return f"451 4.3.0 {text}"
    return f"550 5.6.0 {text}"


class ProviderUnavailableError(ConnectionError):
    """The provider cannot take the message now (down, throttled, 4xx SMTP): retry later."""


class PermanentDeliveryError(Exception):
    """The provider refused the message for good (e.g. SMTP 5xx); retrying will not help."""


@dataclass(frozen=True)
class SmtpEnvelope:
    """The SMTP envelope of a message that arrived at the listener."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    peer: str | None = None


@dataclass(frozen=True)
class InboundRequest:
    """One delivery from a provider: an HTTP webhook call or an SMTP transaction.

    ``headers`` keys are lower case. ``url`` is the public URL the provider called (what
    signatures over URLs are computed with).
    """

    body: bytes
    method: str = "POST"
    url: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    path_params: Mapping[str, str] = field(default_factory=dict)
    envelope: SmtpEnvelope | None = None

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


@dataclass(frozen=True)
class ChannelAccount:
    """A workspace's address on a channel, with its resolved provider secret."""

    id: uuid.UUID
    workspace_id: uuid.UUID
    channel: Channel
    adapter: str
    address: str
    display_name: str | None = None
    secret: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChannelLimits:
    max_message_bytes: int = 10 * 1024 * 1024
    max_attachments: int = 20
    max_text_chars: int = 50_000
    signature_max_age_seconds: int = 900


@dataclass(frozen=True)
class ChannelContext:
    """What one verify/parse/send call works with.

    ``account`` is the workspace's account the request arrived at (None for channels
    without accounts, e.g. web chat, whose workspace comes from the request itself).
    """

    account: ChannelAccount | None
    attachments: AttachmentStore
    limits: ChannelLimits = field(default_factory=ChannelLimits)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def require_account(self) -> ChannelAccount:
        if self.account is None:
            raise ChannelRequestError(404, "This channel needs an account to receive on.")
        return self.account


@dataclass(frozen=True)
class Verification:
    """A verified request. ``replay_key`` is a one-time token the caller must refuse to
    accept twice (checked before parsing, recorded after the broker acknowledged)."""

    replay_key: str | None = None


class DeliveryState(StrEnum):
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class SendResult:
    provider_message_id: str
    state: DeliveryState = DeliveryState.SENT
    detail: str | None = None


@dataclass(frozen=True)
class DeliveryReceipt:
    """A provider's news about a message we sent (status callback, bounce)."""

    provider_message_id: str
    state: DeliveryState
    reason: str | None = None
    occurred_at: datetime | None = None
    message_id: uuid.UUID | None = None  # ours, when the provider echoes it back


@dataclass(frozen=True)
class ProviderResponse:
    """What the provider is answered when its request was accepted."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain"


@runtime_checkable
class ChannelAdapter(Protocol):
    """One provider's way in and out. Entry points in ``omniroute.channels`` name
    factories ``(ChannelRuntime) -> ChannelAdapter``; ``name`` equals the entry point's."""

    name: str
    channel: Channel

    async def verify(self, request: InboundRequest, ctx: ChannelContext) -> Verification:
        """Authenticate the request (signature, token); raise ChannelRequestError 401/403."""
        ...

    async def parse(self, request: InboundRequest, ctx: ChannelContext) -> list[MessageReceived]:
        """The normalized messages in a verified request (zero or more).

        Deterministic for redeliveries: the same provider message always yields the same
        ``provider_message_id`` (the router dedupes on it). Attachment content goes to
        ``ctx.attachments``; the payloads carry only metadata.
        """
        ...

    async def send(self, message: OutboundMessageRequested, ctx: ChannelContext) -> SendResult:
        """Deliver one reply; ProviderUnavailableError means retry later."""
        ...

    async def map_receipt(
        self, request: InboundRequest, ctx: ChannelContext
    ) -> list[DeliveryReceipt]:
        """Delivery receipts in a provider request (status callbacks, bounces)."""
        ...

    def acknowledge(self, messages: Sequence[MessageReceived]) -> ProviderResponse:
        """The answer for an accepted request (e.g. TwiML for Twilio, 200 for others)."""
        ...

    def refusal_status(self, error: ChannelRequestError) -> int:
        """The HTTP status a refusal is answered with (e.g. 406 = "stop retrying")."""
        ...


class BaseChannelAdapter:
    """Defaults for the optional parts of the protocol; subclass and override."""

    name: str = ""
    channel: Channel = Channel.WEBCHAT

    async def verify(self, request: InboundRequest, ctx: ChannelContext) -> Verification:  # noqa: ARG002
        return Verification()

    async def parse(self, request: InboundRequest, ctx: ChannelContext) -> list[MessageReceived]:  # noqa: ARG002
        return []

    async def send(self, message: OutboundMessageRequested, ctx: ChannelContext) -> SendResult:  # noqa: ARG002
        raise PermanentDeliveryError(f"adapter {self.name!r} cannot send")

    async def map_receipt(
        self,
        request: InboundRequest,  # noqa: ARG002
        ctx: ChannelContext,  # noqa: ARG002
    ) -> list[DeliveryReceipt]:
        return []

    def acknowledge(self, messages: Sequence[MessageReceived]) -> ProviderResponse:  # noqa: ARG002
        return ProviderResponse()

    def refusal_status(self, error: ChannelRequestError) -> int:
        return error.status


@dataclass
class ChannelRuntime:
    """What adapter factories are built with: limits, options and services.

    ``options`` is the adapter's own configuration: ingest fills it with the adapter's
    entry of ``OMNI_CHANNEL_OPTIONS`` (a JSON object keyed by adapter name), ``{}`` when
    there is none. ``services`` holds process-level collaborators by type that ingest
    builds for its built-in adapters (the web-chat socket hub and config, the SMTP relay,
    Twilio and Meta settings); ``service(kind)`` returns the one registered for ``kind``
    and raises LookupError otherwise. No HTTP client is provided: an adapter that calls
    its provider opens its own (e.g. ``httpx.AsyncClient`` per send, or one it keeps).
    """

    limits: ChannelLimits = field(default_factory=ChannelLimits)
    options: Mapping[str, Any] = field(default_factory=dict)
    services: dict[type[Any], Any] = field(default_factory=dict)

    def service(self, kind: type[T]) -> T:
        found = self.services.get(kind)
        if found is None:
            for registered in self.services.values():
                if isinstance(registered, kind):
                    return registered
            raise LookupError(f"no {kind.__name__} in the channel runtime")
        if not isinstance(found, kind):
            raise TypeError(f"the runtime's {kind.__name__} has the wrong type")
        return found
