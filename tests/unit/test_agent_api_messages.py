"""Messages in the agent API: attachments' metadata (never their content or storage key)
and the reason a reply failed, in the conversation's messages and the timeline."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx

from services.router.delivery import DeliveryRouter
from services.router.worker import InboundRouter
from shared.bus.memory import MemoryBus
from shared.db.session import Database
from shared.events import (
    AttachmentInfo,
    Channel,
    DeliveryStatusReported,
    Event,
    Topic,
    encode_event,
)
from tests.unit.test_agent_api import ADA, sign_in
from tests.unit.test_router import as_record, inbound

INVOICE = AttachmentInfo(
    filename="invoice-1234.pdf",
    content_type="application/pdf",
    size=48213,
    storage_key="2026/11/22/9f3c-invoice-1234.pdf",
)
LOGO = AttachmentInfo(
    filename="logo.png",
    content_type="image/png",
    size=1024,
    storage_key="2026/11/22/a1b2-logo.png",
    content_id="<logo@acme.example>",
    inline=True,
)
REFUSAL = "Meta 400 (error 10): This message is sent outside of allowed window."


async def test_messages_show_attachment_metadata_and_why_a_reply_failed(
    api: httpx.AsyncClient, database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    received = inbound(workspace_id, "wcs_att", "p-att", "See the invoice").model_copy(
        update={"attachments": (INVOICE, LOGO)}
    )
    await InboundRouter(database, memory_bus).handle([as_record(received)])
    auth = await sign_in(api, ADA)
    [listed] = (await api.get("/v1/conversations", headers=auth)).json()["items"]
    conversation_id = listed["id"]
    replied = await api.post(
        f"/v1/conversations/{conversation_id}/replies", json={"text": "Got it"}, headers=auth
    )
    assert replied.status_code == 201, replied.text
    reply = replied.json()
    assert (reply["attachments"], reply["delivery_status_reason"]) == ([], None)

    failed = DeliveryStatusReported(
        workspace_id=workspace_id,
        channel=Channel.WEBCHAT,
        message_id=uuid.UUID(reply["id"]),
        conversation_id=uuid.UUID(conversation_id),
        status="failed",
        reason=REFUSAL,
        occurred_at=datetime.now(UTC),
    )
    out = encode_event(Event.of(failed, source="test"), topic=Topic.DELIVERY.value, key="k")
    await memory_bus.publish(out)
    await DeliveryRouter(database, memory_bus).handle(memory_bus.records(Topic.DELIVERY.value))

    for path in ("messages", "timeline"):
        response = await api.get(f"/v1/conversations/{conversation_id}/{path}", headers=auth)
        assert response.status_code == 200, response.text
        customer, answer = response.json()
        assert customer["attachments"] == [
            {
                "filename": "invoice-1234.pdf",
                "content_type": "application/pdf",
                "size": 48213,
                "inline": False,
                "content_id": None,
            },
            {
                "filename": "logo.png",
                "content_type": "image/png",
                "size": 1024,
                "inline": True,
                "content_id": "<logo@acme.example>",
            },
        ]
        assert customer["delivery_status_reason"] is None
        assert "storage_key" not in response.text
        assert (answer["id"], answer["attachments"]) == (reply["id"], [])
        assert (answer["delivery_status"], answer["delivery_status_reason"]) == (
            "failed",
            REFUSAL,
        )
