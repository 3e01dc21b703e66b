"""Event contracts: CloudEvents 1.0 envelopes with pydantic payloads, one place for all topics.

On Kafka every event travels in binary content mode: the record value is the JSON ``data``
and the attributes are ``ce_*`` headers, byte for byte as the ``cloudevents`` package's
Kafka binding writes and reads them (tests/unit/test_events.py checks both directions
against it), so any CloudEvents consumer can read our topics.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Final

from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError

from shared.bus.port import BusRecord, OutgoingRecord
from shared.correlation import current_correlation_id

SPEC_VERSION: Final = "1.0"
JSON_CONTENT_TYPE: Final = "application/json"
_JSON_CONTENT_TYPE: Final = re.compile(JSONFormat.JSON_CONTENT_TYPE_PATTERN)


class Topic(StrEnum):
    INBOUND = "omni.inbound.v1"
    OUTBOUND = "omni.outbound.v1"
    DELIVERY = "omni.delivery.v1"
    EVENTS = "omni.events.v1"
    MEDIA = "omni.media.v1"

    @property
    def dead_letter(self) -> str:
        return f"{self.value}.dlq"


ALL_TOPICS: Final[tuple[str, ...]] = tuple(
    name for topic in Topic for name in (topic.value, topic.dead_letter)
)


class Channel(StrEnum):
    WEBCHAT = "webchat"
    EMAIL = "email"
    SMS = "sms"
    SOCIAL = "social"


class MessageDirection(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"
    NOTE = "note"
    SYSTEM = "system"


class IdentityKind(StrEnum):
    """Kinds of contact identity; one customer may have several, on several channels."""

    EMAIL = "email"
    PHONE = "phone"
    SOCIAL_HANDLE = "social_handle"
    WEBCHAT_SESSION = "webchat_session"


class ThreadingRule(StrEnum):
    """Why an inbound message joined the conversation it did (recorded on the message)."""

    IN_REPLY_TO = "in_reply_to"
    REFERENCES = "references"
    REPLY_TOKEN = "reply_token"  # noqa: S105 - a rule name
    SUBJECT = "subject"
    THREAD_KEY = "thread_key"
    NEW_CONVERSATION = "new_conversation"


def inbound_key(workspace_id: uuid.UUID, channel: Channel, sender_address: str) -> str:
    """Key on ``omni.inbound.v1``: stable without a DB lookup, one customer stays in order."""
    return f"{workspace_id}:{channel.value}:{sender_address}"


def conversation_key(workspace_id: uuid.UUID, conversation_id: uuid.UUID) -> str:
    """Key on ``omni.events.v1`` and ``omni.outbound.v1``."""
    return f"{workspace_id}:{conversation_id}"


class EventPayload(BaseModel):
    """Base of every event's ``data``. Subclasses name their versioned CloudEvents type."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    event_type: ClassVar[str]

    workspace_id: uuid.UUID


class IdentityClaim(BaseModel):
    """Another address of the sender (e.g. the email a web-chat customer gave)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: IdentityKind
    address: str = Field(min_length=1, max_length=320)


class Sender(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str = Field(min_length=1, max_length=320)
    display_name: str | None = Field(None, max_length=200)
    identities: tuple[IdentityClaim, ...] = Field(
        (), description="Further identities of the same customer, resolved to one contact."
    )


class AttachmentInfo(BaseModel):
    """An attachment's metadata; its content lives in the attachment store, not on Kafka."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    filename: str = Field(min_length=1, max_length=255)
    content_type: str = Field(min_length=1, max_length=255)
    size: int = Field(ge=0)
    storage_key: str = Field(min_length=1, max_length=500)
    content_id: str | None = Field(None, max_length=500)
    inline: bool = False

    @property
    def at_provider(self) -> bool:
        """Still at the provider: the webhook put the media URL where a store key goes
        (Twilio MMS), for ingest's media fetcher to store."""
        return self.storage_key.startswith(("https://", "http://"))


class InboundEmail(BaseModel):
    """What threading and display need from an inbound email's headers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    message_id: str | None = Field(None, max_length=998, description="`Message-ID`, if any.")
    in_reply_to: tuple[str, ...] = Field((), description="Message ids of `In-Reply-To`.")
    references: tuple[str, ...] = Field((), description="`References`, oldest first.")
    recipient: str = Field(max_length=320, description="Our address it was sent to.")
    reply_token: str | None = Field(
        None, max_length=64, description="Token of a `support+<token>@…` recipient."
    )
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    original_text: str = Field(
        "", max_length=100_000, description="The full text before quote/signature stripping."
    )
    raw_storage_key: str | None = Field(
        None, max_length=500, description="The raw MIME message in the attachment store."
    )
    auto_submitted: bool = Field(False, description="An auto-reply (RFC 3834), not a person.")


class ConsentChange(StrEnum):
    """A customer's messaging consent, e.g. SMS STOP (opt out) and START (opt in)."""

    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"


class MessageReceived(EventPayload):
    """A customer's message, verified and normalized by a channel adapter."""

    event_type: ClassVar[str] = "omniroute.message.received.v1"

    channel: Channel
    provider_message_id: str = Field(min_length=1, max_length=200)
    thread_key: str = Field(min_length=1, max_length=400)
    sender: Sender
    text: str = Field(max_length=100_000)
    received_at: datetime
    language: str | None = Field(None, max_length=16, description="BCP 47 tag, if known.")
    channel_account_id: uuid.UUID | None = Field(
        None, description="The workspace's channel account (our address) it arrived at."
    )
    subject: str | None = Field(None, max_length=998)
    attachments: tuple[AttachmentInfo, ...] = ()
    email: InboundEmail | None = Field(None, description="Email headers, for email only.")
    consent: ConsentChange | None = Field(
        None, description="The message changes the sender's consent (e.g. SMS STOP/START)."
    )


class MessageCreated(EventPayload):
    """A message stored in a conversation (inbound, outbound, note or system)."""

    event_type: ClassVar[str] = "omniroute.message.created.v1"

    conversation_id: uuid.UUID
    message_id: uuid.UUID
    channel: Channel
    direction: MessageDirection
    text: str
    author_agent_id: uuid.UUID | None = None
    assignee_agent_id: uuid.UUID | None = None
    created_at: datetime
    received_at: datetime | None = Field(
        None, description="For inbound messages: when ingest accepted it."
    )
    subject: str | None = None
    attachments: tuple[AttachmentInfo, ...] = ()


class ConversationAssigned(EventPayload):
    """A conversation got its owning agent."""

    event_type: ClassVar[str] = "omniroute.conversation.assigned.v1"

    conversation_id: uuid.UUID
    assignment_id: uuid.UUID
    agent_id: uuid.UUID
    channel: Channel
    contact_display_name: str | None = None
    reason: str
    assigned_at: datetime


class ConversationQueued(EventPayload):
    """No eligible agent: the conversation waits in the queue."""

    event_type: ClassVar[str] = "omniroute.conversation.queued.v1"

    conversation_id: uuid.UUID
    channel: Channel
    priority: int
    tier: int = 1
    queued_at: datetime


class OutboundEmail(BaseModel):
    """Headers of an outbound email, decided when the reply was stored."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    from_address: str = Field(max_length=320)
    from_name: str | None = Field(None, max_length=200)
    reply_to: str | None = Field(None, max_length=320, description="Carries the reply token.")
    subject: str = Field(max_length=998)
    message_id: str = Field(max_length=998, description="Our own `Message-ID`.")
    in_reply_to: str | None = Field(None, max_length=998)
    references: tuple[str, ...] = ()
    auto_submitted: bool = Field(False, description="A system notice, not a person's reply.")


class OutboundMessageRequested(EventPayload):
    """An agent's reply to deliver to the customer through the conversation's channel."""

    event_type: ClassVar[str] = "omniroute.message.outbound.v1"

    conversation_id: uuid.UUID
    message_id: uuid.UUID
    channel: Channel
    recipient_address: str
    text: str
    agent_display_name: str | None = None
    created_at: datetime
    channel_account_id: uuid.UUID | None = Field(
        None, description="The account (our address) to send from, when the channel has one."
    )
    email: OutboundEmail | None = Field(None, description="Headers of an email reply.")
    reply_to_provider_message_id: str | None = Field(
        None,
        max_length=200,
        description=(
            "The provider's id of the customer message this reply answers, on social "
            "channels (e.g. the comment a reply to a public post is posted under)."
        ),
    )


PAYLOAD_TYPES: Final[dict[str, type[EventPayload]]] = {
    cls.event_type: cls
    for cls in (
        MessageReceived,
        MessageCreated,
        ConversationAssigned,
        ConversationQueued,
        OutboundMessageRequested,
    )
}


class Event(BaseModel):
    """A CloudEvents 1.0 envelope around one payload."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    source: str
    type: str
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    subject: str | None = None
    sequence: int | None = Field(
        None, description="Outbox sequence (CloudEvents `sequence` extension) when known."
    )
    correlationid: str | None = Field(
        None, description="Follows one customer message across services (extension)."
    )
    data: SerializeAsAny[EventPayload]

    @classmethod
    def of(cls, payload: EventPayload, *, source: str, subject: str | None = None) -> Event:
        return cls(
            source=source,
            type=payload.event_type,
            subject=subject,
            correlationid=current_correlation_id(),
            data=payload,
        )

    def with_sequence(self, sequence: int) -> Event:
        return self.model_copy(update={"sequence": sequence})

    def data_json(self) -> dict[str, Any]:
        return self.data.model_dump(mode="json")


class EventDecodeError(ValueError):
    """A record that is not a valid omniroute CloudEvent (a poison record)."""


def to_cloudevent(event: Event, *, data: dict[str, Any] | None = None) -> CloudEvent:
    """``data``: the payload already dumped in JSON mode, when the caller has it."""
    attributes: dict[str, Any] = {
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "specversion": SPEC_VERSION,
        "time": event.time,
        "datacontenttype": JSON_CONTENT_TYPE,
    }
    if event.subject is not None:
        attributes["subject"] = event.subject
    if event.sequence is not None:
        attributes["sequence"] = str(event.sequence)
    if event.correlationid is not None:
        attributes["correlationid"] = event.correlationid
    return CloudEvent(attributes=attributes, data=data if data is not None else event.data_json())


def _header_time(moment: datetime) -> bytes:
    """``ce_time`` as the ``cloudevents`` Kafka binding writes it (ISO 8601, UTC as Z)."""
    text = moment.isoformat()
    if text.endswith("+00:00"):
        text = text[:-6] + "Z"
    return text.encode()


_SPEC_VERSION_HEADER: Final = ("ce_specversion", SPEC_VERSION.encode())
_CONTENT_TYPE_HEADER: Final = ("content-type", JSON_CONTENT_TYPE.encode())


def encode_event(
    event: Event, *, topic: str, key: str, data: dict[str, Any] | None = None
) -> OutgoingRecord:
    """Kafka binary content mode: the attributes as ``ce_*`` headers, the JSON data as
    the value. ``data``: the payload already dumped in JSON mode (an outbox row's
    envelope has it).

    Written directly, not through the ``cloudevents`` Kafka binding (which builds and
    validates an intermediate event per record): headers, their order and the value's
    bytes are the binding's own, checked against it in tests/unit/test_events.py. What
    the binding would refuse (an empty attribute, a time without its offset) is not
    checked again here: every event is built with ``Event.of`` (UTC time) or decoded
    from a record, and subjects are ids or thread keys, never empty."""
    headers = [
        ("ce_id", event.id.encode()),
        ("ce_source", event.source.encode()),
        ("ce_type", event.type.encode()),
        _SPEC_VERSION_HEADER,
        ("ce_time", _header_time(event.time)),
        _CONTENT_TYPE_HEADER,
    ]
    if event.subject is not None:
        headers.append(("ce_subject", event.subject.encode()))
    if event.sequence is not None:
        headers.append(("ce_sequence", str(event.sequence).encode()))
    if event.correlationid is not None:
        headers.append(("ce_correlationid", event.correlationid.encode()))
    value = json.dumps(data if data is not None else event.data_json()).encode()
    return OutgoingRecord(topic=topic, key=key.encode(), value=value, headers=tuple(headers))


_REQUIRED_ATTRIBUTES: Final = ("id", "source", "type", "specversion")


def decode_event(record: BusRecord) -> Event:
    """Parse a record in binary content mode; raise EventDecodeError for anything invalid.

    Read as the ``cloudevents`` Kafka binding reads it (``ce_*`` headers are the
    attributes, ``content-type`` the data's content type, ``ce_time`` as ISO 8601),
    without building its intermediate event: the JSON value goes
    straight into the payload model (pydantic's own JSON parser). Both directions are
    checked against the binding in tests/unit/test_events.py."""
    attributes: dict[str, str] = {}
    content_type = JSON_CONTENT_TYPE
    try:
        for name, raw in record.headers:
            lowered = name.lower()
            if lowered.startswith("ce_"):
                attributes[lowered[3:]] = raw.decode("utf-8")
            elif lowered == "content-type":
                content_type = raw.decode("utf-8")
        stamp = attributes.get("time")
        time = datetime.fromisoformat(stamp) if stamp is not None else datetime.now(UTC)
        sequence = int(attributes["sequence"]) if "sequence" in attributes else None
    except ValueError as exc:  # UnicodeDecodeError included
        raise EventDecodeError(f"not a CloudEvent in Kafka binary mode: {exc}") from exc
    missing = [name for name in _REQUIRED_ATTRIBUTES if not attributes.get(name)]
    if missing:
        raise EventDecodeError(f"not a CloudEvent in Kafka binary mode: no {', '.join(missing)}")
    if attributes["specversion"] != SPEC_VERSION:
        raise EventDecodeError(f"unsupported CloudEvents version {attributes['specversion']!r}")
    payload_type = PAYLOAD_TYPES.get(attributes["type"])
    if payload_type is None:
        raise EventDecodeError(f"unknown event type {attributes['type']!r}")
    if not _JSON_CONTENT_TYPE.match(content_type):
        raise EventDecodeError("event data is not a JSON object")
    try:
        payload = payload_type.model_validate_json(record.value)
    except ValidationError as exc:
        raise EventDecodeError(f"invalid {payload_type.event_type} data: {exc}") from exc
    return Event(
        id=attributes["id"],
        source=attributes["source"],
        type=attributes["type"],
        time=time,
        subject=attributes.get("subject"),
        sequence=sequence,
        correlationid=attributes.get("correlationid"),
        data=payload,
    )


class ConversationEscalated(EventPayload):
    """The conversation moved up a tier or to a team (by an agent, SLA, rule or absence)."""

    event_type: ClassVar[str] = "omniroute.conversation.escalated.v1"

    conversation_id: uuid.UUID
    from_tier: int
    to_tier: int
    team_id: uuid.UUID | None = None
    trigger: str = Field(description="agent, sla, intake_rule or owner_offline")
    reason: str
    by_agent_id: uuid.UUID | None = None
    escalated_at: datetime


class ConversationUnassigned(EventPayload):
    """The owner no longer owns the conversation (escalation, transfer, absence)."""

    event_type: ClassVar[str] = "omniroute.conversation.unassigned.v1"

    conversation_id: uuid.UUID
    agent_id: uuid.UUID
    reason: str
    unassigned_at: datetime


class SupervisorAlert(EventPayload):
    """Something needs a supervisor (e.g. the SLA breached at the top tier)."""

    event_type: ClassVar[str] = "omniroute.supervisor.alert.v1"

    conversation_id: uuid.UUID | None = None
    kind: str
    detail: str
    raised_at: datetime


PAYLOAD_TYPES.update(
    {
        cls.event_type: cls
        for cls in (ConversationEscalated, ConversationUnassigned, SupervisorAlert)
    }
)


class ConversationStatusChanged(EventPayload):
    """Resolved, reopened, snoozed or woken; ``outcome_code`` on resolve."""

    event_type: ClassVar[str] = "omniroute.conversation.status_changed.v1"

    conversation_id: uuid.UUID
    status: str
    previous_status: str
    assignee_agent_id: uuid.UUID | None = None
    by_agent_id: uuid.UUID | None = None
    outcome_code: str | None = None
    snoozed_until: datetime | None = None
    changed_at: datetime


class ConsultationRequested(EventPayload):
    """The owner asked a colleague or team for help; ownership is unchanged."""

    event_type: ClassVar[str] = "omniroute.conversation.consultation_requested.v1"

    conversation_id: uuid.UUID
    consultation_id: uuid.UUID
    requested_by_agent_id: uuid.UUID | None = None
    consultant_agent_ids: list[uuid.UUID]
    team_id: uuid.UUID | None = None
    note: str
    requested_at: datetime


class AgentMentioned(EventPayload):
    """An internal note @mentions agents."""

    event_type: ClassVar[str] = "omniroute.agent.mentioned.v1"

    conversation_id: uuid.UUID
    message_id: uuid.UUID
    mentioned_agent_ids: list[uuid.UUID]
    by_agent_id: uuid.UUID | None = None
    text: str
    mentioned_at: datetime


PAYLOAD_TYPES.update(
    {
        cls.event_type: cls
        for cls in (ConversationStatusChanged, ConsultationRequested, AgentMentioned)
    }
)


class DeliveryStatusReported(EventPayload):
    """News about a reply's delivery: sent by ingest's dispatcher, then the provider's
    receipts (status callbacks, bounces). ``message_id`` is ours when known, else the
    provider's id names the message."""

    event_type: ClassVar[str] = "omniroute.delivery.reported.v1"

    channel: Channel
    message_id: uuid.UUID | None = None
    conversation_id: uuid.UUID | None = None
    provider_message_id: str | None = Field(None, max_length=998)
    status: str = Field(description="sent, delivered or failed")
    reason: str | None = Field(None, max_length=500, description="The provider's reason.")
    adapter: str | None = Field(None, max_length=64)
    occurred_at: datetime


class MessageDeliveryUpdated(EventPayload):
    """A reply's delivery status changed (sent, delivered, failed with the reason)."""

    event_type: ClassVar[str] = "omniroute.message.delivery_updated.v1"

    conversation_id: uuid.UUID
    message_id: uuid.UUID
    channel: Channel
    delivery_status: str
    reason: str | None = None
    previous_status: str | None = None
    provider_message_id: str | None = None
    assignee_agent_id: uuid.UUID | None = None
    updated_at: datetime


PAYLOAD_TYPES.update(
    {cls.event_type: cls for cls in (DeliveryStatusReported, MessageDeliveryUpdated)}
)


class CsatRecorded(EventPayload):
    """A customer scored a resolved conversation (1 = poor … 5 = great)."""

    event_type: ClassVar[str] = "omniroute.csat.recorded.v1"

    conversation_id: uuid.UUID
    survey_id: uuid.UUID
    score: int = Field(ge=1, le=5)
    answered_via: str = Field(description="link or reply")
    channel: Channel
    tier: int
    agent_id: uuid.UUID | None = Field(None, description="The owner at resolve.")
    team_id: uuid.UUID | None = None
    recorded_at: datetime


class CsatFollowUpOpened(EventPayload):
    """A low score (2 or less) needs a supervisor's follow-up."""

    event_type: ClassVar[str] = "omniroute.csat.follow_up_opened.v1"

    follow_up_id: uuid.UUID
    conversation_id: uuid.UUID
    survey_id: uuid.UUID
    score: int = Field(ge=1, le=5)
    channel: Channel
    agent_id: uuid.UUID | None = None
    opened_at: datetime


class CsatFollowUpClosed(EventPayload):
    """A supervisor closed a low-score follow-up with a note."""

    event_type: ClassVar[str] = "omniroute.csat.follow_up_closed.v1"

    follow_up_id: uuid.UUID
    conversation_id: uuid.UUID
    closed_by_agent_id: uuid.UUID | None = None
    note: str
    closed_at: datetime


PAYLOAD_TYPES.update(
    {cls.event_type: cls for cls in (CsatRecorded, CsatFollowUpOpened, CsatFollowUpClosed)}
)


class MediaFetchFailure(BaseModel):
    """Provider-hosted media that could not be fetched; it stays at the provider's URL."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(max_length=500)
    reason: str = Field(max_length=500)


class MessageAttachmentsStored(EventPayload):
    """An inbound message's provider-hosted media (Twilio MMS ``MediaUrl{N}``) fetched by
    ingest after the webhook was answered: the message's attachments as they are now
    (stored ones with their attachment-store key and real size), and what could not be
    fetched and why. Keyed like the message on ``omni.inbound.v1``, so it follows it."""

    event_type: ClassVar[str] = "omniroute.message.attachments_stored.v1"

    channel: Channel
    provider_message_id: str = Field(min_length=1, max_length=200)
    attachments: tuple[AttachmentInfo, ...] = Field(max_length=100)
    failures: tuple[MediaFetchFailure, ...] = Field((), max_length=100)
    stored_at: datetime


PAYLOAD_TYPES.update({MessageAttachmentsStored.event_type: MessageAttachmentsStored})


class MessageAttachmentsUpdated(EventPayload):
    """A message's attachments changed after it was shown: provider-hosted media (Twilio
    MMS) were fetched into the attachment store, with their real size and type."""

    event_type: ClassVar[str] = "omniroute.message.attachments_updated.v1"

    conversation_id: uuid.UUID
    message_id: uuid.UUID
    channel: Channel
    attachments: tuple[AttachmentInfo, ...] = Field(max_length=100)
    failures: tuple[MediaFetchFailure, ...] = Field((), max_length=100)
    assignee_agent_id: uuid.UUID | None = None
    updated_at: datetime


PAYLOAD_TYPES.update({MessageAttachmentsUpdated.event_type: MessageAttachmentsUpdated})
