"""The AsyncAPI 3.0 document of every topic, generated from the event contracts.

``python -m shared.asyncapi > docs/asyncapi.json`` rewrites the committed document; a
test fails when the contracts changed and the document was not regenerated.
"""

from __future__ import annotations

import json
from typing import Any

from shared.events import (
    AgentMentioned,
    ConsultationRequested,
    ConversationAssigned,
    ConversationEscalated,
    ConversationQueued,
    ConversationStatusChanged,
    ConversationUnassigned,
    CsatFollowUpClosed,
    CsatFollowUpOpened,
    CsatRecorded,
    DeliveryStatusReported,
    EventPayload,
    MessageAttachmentsStored,
    MessageAttachmentsUpdated,
    MessageCreated,
    MessageDeliveryUpdated,
    MessageReceived,
    OutboundMessageRequested,
    SupervisorAlert,
    Topic,
)

TOPIC_EVENTS: dict[Topic, tuple[type[EventPayload], ...]] = {
    Topic.INBOUND: (MessageReceived, MessageAttachmentsStored),
    Topic.EVENTS: (
        MessageCreated,
        ConversationAssigned,
        ConversationQueued,
        ConversationUnassigned,
        ConversationEscalated,
        SupervisorAlert,
        ConversationStatusChanged,
        ConsultationRequested,
        AgentMentioned,
        MessageDeliveryUpdated,
        MessageAttachmentsUpdated,
        CsatRecorded,
        CsatFollowUpOpened,
        CsatFollowUpClosed,
    ),
    Topic.OUTBOUND: (OutboundMessageRequested,),
    Topic.DELIVERY: (DeliveryStatusReported,),
    Topic.MEDIA: (MessageReceived,),
}

TOPIC_KEYS: dict[Topic, str] = {
    Topic.INBOUND: "{workspace_id}:{channel}:{sender_address}",
    Topic.EVENTS: "{workspace_id}:{conversation_id}",
    Topic.OUTBOUND: "{workspace_id}:{conversation_id}",
    Topic.DELIVERY: "{workspace_id}:{message_id}",
    Topic.MEDIA: "{workspace_id}:{channel}:{sender_address}",
}

TOPIC_DESCRIPTIONS: dict[Topic, str] = {
    Topic.INBOUND: "Normalized customer messages from ingest, consumed by the router.",
    Topic.EVENTS: "Changes to conversations (from the outbox), pushed to agents live.",
    Topic.OUTBOUND: "Replies to deliver through the customer's channel (ingest dispatcher).",
    Topic.DELIVERY: "Delivery status of replies: sent (ingest dispatcher), delivered or "
    "failed (provider receipts); the router applies it to the message.",
    Topic.MEDIA: "Received messages whose media is still at the provider (Twilio MMS), "
    "published by the router's outbox once it stored the message; ingest's media fetcher "
    "stores the media and publishes omniroute.message.attachments_stored.v1 on "
    "omni.inbound.v1.",
}

CLOUDEVENT_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "CloudEvents 1.0 Kafka binary content mode: attributes as headers.",
    "required": ["ce_id", "ce_source", "ce_specversion", "ce_type", "content-type"],
    "properties": {
        "ce_id": {"type": "string"},
        "ce_source": {"type": "string"},
        "ce_specversion": {"const": "1.0"},
        "ce_type": {"type": "string"},
        "ce_time": {"type": "string", "format": "date-time"},
        "ce_subject": {"type": "string"},
        "ce_sequence": {
            "type": "string",
            "description": "Outbox sequence; the `seq` agents resume from.",
        },
        "ce_correlationid": {
            "type": "string",
            "description": "Correlation id following one customer message across services.",
        },
        "content-type": {"const": "application/json"},
    },
}


def _message_name(payload: type[EventPayload]) -> str:
    return payload.event_type.removeprefix("omniroute.").replace(".", "_")


def build_document() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for topic, payloads in TOPIC_EVENTS.items():
        channel_id = topic.value.replace(".", "_")
        channel_messages = {}
        for payload in payloads:
            name = _message_name(payload)
            schema = payload.model_json_schema(ref_template="#/components/schemas/{model}")
            for def_name, definition in schema.pop("$defs", {}).items():
                schemas[def_name] = definition
            schemas[payload.__name__] = schema
            messages[name] = {
                "name": payload.event_type,
                "title": payload.__name__,
                "summary": (payload.__doc__ or "").strip(),
                "contentType": "application/json",
                "headers": CLOUDEVENT_HEADERS,
                "payload": {"$ref": f"#/components/schemas/{payload.__name__}"},
                "bindings": {"kafka": {"key": {"type": "string"}, "bindingVersion": "0.5.0"}},
            }
            channel_messages[name] = {"$ref": f"#/components/messages/{name}"}
        for address, description in (
            (topic.value, TOPIC_DESCRIPTIONS[topic]),
            (topic.dead_letter, f"Records of {topic.value} that failed repeatedly."),
        ):
            cid = address.replace(".", "_")
            channels[cid] = {
                "address": address,
                "description": f"{description} Record key: {TOPIC_KEYS[topic]}.",
                "messages": channel_messages,
            }
        if payloads:
            operations[f"publish_{channel_id}"] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{channel_id}"},
            }
    _add_agent_websocket(channels, operations, messages, schemas)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "omniroute events",
            "version": "1.0.0",
            "description": (
                "Every Kafka topic of omniroute with its CloudEvents payloads, and the "
                "frames of the agent WebSocket `/v1/ws`."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def render() -> str:
    return json.dumps(build_document(), indent=2, sort_keys=True) + "\n"


# Frame type on /v1/ws → the event whose data the frame carries.
WEBSOCKET_FRAMES: dict[str, type[EventPayload]] = {
    "conversation.assigned": ConversationAssigned,
    "conversation.unassigned": ConversationUnassigned,
    "conversation.escalated": ConversationEscalated,
    "conversation.queued": ConversationQueued,
    "conversation.status_changed": ConversationStatusChanged,
    "message.created": MessageCreated,
    "message.delivery_updated": MessageDeliveryUpdated,
    "consultation.requested": ConsultationRequested,
    "agent.mentioned": AgentMentioned,
    "supervisor.alert": SupervisorAlert,
    "message.attachments_updated": MessageAttachmentsUpdated,
    "csat.recorded": CsatRecorded,
    "csat.follow_up_opened": CsatFollowUpOpened,
    "csat.follow_up_closed": CsatFollowUpClosed,
}


def _frame(kind: str, payload_ref: str | None, description: str) -> dict[str, Any]:
    properties: dict[str, Any] = {"type": {"const": kind}}
    required = ["type"]
    if payload_ref is not None:
        properties |= {
            "seq": {"type": "integer", "description": "Stream position; resume after it."},
            "event_id": {"type": "string"},
            "time": {"type": "string", "format": "date-time"},
            "correlation_id": {"type": ["string", "null"]},
            "data": {"$ref": payload_ref},
        }
        required += ["seq", "event_id", "data"]
    return {
        "name": kind,
        "summary": description,
        "contentType": "application/json",
        "payload": {"type": "object", "required": required, "properties": properties},
    }


def _add_agent_websocket(
    channels: dict[str, Any],
    operations: dict[str, Any],
    messages: dict[str, Any],
    schemas: dict[str, Any],
) -> None:
    frames: dict[str, Any] = {}
    for kind, payload in WEBSOCKET_FRAMES.items():
        if payload.__name__ not in schemas:
            schemas[payload.__name__] = payload.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
        name = "ws_" + kind.replace(".", "_")
        messages[name] = _frame(
            kind, f"#/components/schemas/{payload.__name__}", (payload.__doc__ or "").strip()
        )
        frames[name] = {"$ref": f"#/components/messages/{name}"}
    for kind, description in (
        ("ready", "Caught up: live frames follow. Carries the current `seq`."),
        ("heartbeat", "Periodic; carries the connection's current `seq`."),
        (
            "reset",
            "Cannot resume from `last_seq` (too far behind, or beyond the stream): "
            "refetch state over REST; live frames follow.",
        ),
    ):
        name = f"ws_{kind}"
        messages[name] = _frame(kind, None, description)
        frames[name] = {"$ref": f"#/components/messages/{name}"}
    channels["agent_websocket"] = {
        "address": "/v1/ws",
        "title": "Agent and supervisor live events",
        "description": (
            "Authenticate with the subprotocols `bearer, <jwt>` or a first frame "
            '`{"type": "auth", "token": "<jwt>"}` (4401 when invalid). Resume with '
            "`?last_seq=N`: missed events first, in `seq` order, then live, no gaps or "
            "repeats (a `last_seq` that is not an integer from 0 to 2^63-1 refuses the "
            "handshake with 400). `seq` is the workspace stream's position: it only "
            "grows, and skips the positions of events that are not for this client. "
            "Client frames: `ping`; supervisors `subscribe`/`unsubscribe` with "
            "`conversation_id`. Close codes: 4401 auth, 4008 too slow, 1012 restarting."
        ),
        "messages": frames,
        "bindings": {"ws": {"bindingVersion": "0.1.0"}},
    }
    operations["receive_agent_websocket"] = {
        "action": "receive",
        "channel": {"$ref": "#/channels/agent_websocket"},
    }


if __name__ == "__main__":
    print(render(), end="")  # noqa: T201
