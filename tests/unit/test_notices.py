"""Proactive notices on SQLite and the in-process bus: each contact on their preferred
channel through the ordinary outbound path, SMS opt-out and the WhatsApp window
honoured (skipped, with the reason), delivery receipts reflected per recipient."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import func, select, update

from services.router.delivery import DeliveryRouter
from services.router.worker import InboundRouter
from shared.bus.port import BusRecord
from shared.db.models import ContactIdentity, Conversation, Message, Notice, utcnow
from shared.db.session import Database
from shared.events import (
    Channel,
    ConsentChange,
    DeliveryStatusReported,
    Event,
    MessageReceived,
    OutboundMessageRequested,
    Sender,
    Topic,
    decode_event,
    encode_event,
)
from tests.integration.test_api_agents import Desk, assert_problem, open_desk
from tests.unit.test_email_threading import demo_account, inbound_email
from tests.unit.test_router import as_record


@pytest.fixture
async def desk(database: Database) -> AsyncIterator[Desk]:
    async with open_desk(database) as opened:
        yield opened


def received(
    workspace_id: uuid.UUID,
    channel: Channel,
    address: str,
    *,
    thread_key: str | None = None,
    text: str = "hello",
    consent: ConsentChange | None = None,
) -> MessageReceived:
    return MessageReceived(
        workspace_id=workspace_id,
        channel=channel,
        provider_message_id=uuid.uuid4().hex,
        thread_key=thread_key or address,
        sender=Sender(address=address),
        text=text,
        received_at=utcnow(),
        consent=consent,
    )


async def customer_writes(desk: Desk, *payloads: MessageReceived) -> uuid.UUID:
    """Route the customer's messages; the contact id they resolved to."""
    router = InboundRouter(desk.database, desk.bus)
    for payload in payloads:
        await router.handle([as_record(payload)])
    async with desk.database.sessions() as session:
        contact_id = await session.scalar(
            select(Conversation.contact_id)
            .where(
                Conversation.workspace_id == payloads[0].workspace_id,
                Conversation.customer_address == payloads[0].sender.address,
            )
            .limit(1)
        )
    assert contact_id is not None
    return contact_id


async def emails_in(desk: Desk, sender: str) -> uuid.UUID:
    account = await demo_account(desk.database, desk.a.workspace_id)
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = account.address
    mail["Subject"] = "Where is my parcel?"
    mail["Message-ID"] = f"<{uuid.uuid4().hex}@example.com>"
    mail.set_content("It has not arrived.")
    payload = await inbound_email(account, mail.as_bytes())
    return await customer_writes(desk, payload)


def outbound(desk: Desk) -> list[OutboundMessageRequested]:
    decoded = [decode_event(r).data for r in desk.bus.records(Topic.OUTBOUND.value)]
    return [d for d in decoded if isinstance(d, OutboundMessageRequested)]


async def receipt(
    desk: Desk, message_id: str, channel: Channel, status: str, reason: str | None = None
) -> None:
    report = DeliveryStatusReported(
        workspace_id=desk.a.workspace_id,
        channel=channel,
        message_id=uuid.UUID(message_id),
        status=status,
        reason=reason,
        occurred_at=utcnow(),
    )
    out = encode_event(Event.of(report, source="test"), topic=Topic.DELIVERY.value, key="k")
    record = BusRecord(out.topic, 0, 0, out.key, out.value, out.headers)
    await DeliveryRouter(desk.database, desk.bus).handle([record])


async def test_each_contact_is_reached_on_their_channel_or_skipped_with_the_reason(
    desk: Desk,
) -> None:
    ws = desk.a.workspace_id
    sms = await customer_writes(desk, received(ws, Channel.SMS, "+15550100001"))
    stopped = await customer_writes(
        desk,
        received(ws, Channel.SMS, "+15550100002"),
        received(ws, Channel.SMS, "+15550100002", text="STOP", consent=ConsentChange.OPT_OUT),
    )
    whatsapp_open = await customer_writes(
        desk, received(ws, Channel.SOCIAL, "whatsapp:+15550100003")
    )
    whatsapp_closed = await customer_writes(
        desk, received(ws, Channel.SOCIAL, "whatsapp:+15550100004")
    )
    async with desk.database.sessions() as session:
        await session.execute(
            update(Message)
            .where(
                Message.conversation_id.in_(
                    select(Conversation.id).where(
                        Conversation.customer_address == "whatsapp:+15550100004"
                    )
                )
            )
            .values(created_at=utcnow() - timedelta(hours=30))
        )
        await session.commit()
    mailer = await emails_in(desk, "lee@example.com")
    commenter = await customer_writes(
        desk, received(ws, Channel.SOCIAL, "facebook:777", thread_key="post:123_456")
    )
    before = len(outbound(desk))

    response = await desk.call(
        "admin",
        "POST",
        "/v1/notices",
        json={
            "text": "Our store is closed on Monday.",
            "subject": "Holiday opening hours",
            "contact_ids": [
                str(c)
                for c in (sms, stopped, whatsapp_open, whatsapp_closed, mailer, commenter, sms)
            ],
        },
    )
    assert response.status_code == 202, response.text
    notice = response.json()
    assert response.headers["location"] == f"/v1/notices/{notice['id']}"
    by_contact = {r["contact_id"]: r for r in notice["recipients"]}
    assert len(notice["recipients"]) == 6  # the repeated id counts once
    assert (by_contact[str(sms)]["status"], by_contact[str(sms)]["channel"]) == ("queued", "sms")
    assert by_contact[str(stopped)]["status"] == "skipped"
    assert "opted out of SMS" in by_contact[str(stopped)]["reason"]
    assert by_contact[str(whatsapp_open)]["status"] == "queued"
    assert by_contact[str(whatsapp_closed)]["status"] == "skipped"
    assert "24 hours" in by_contact[str(whatsapp_closed)]["reason"]
    assert (by_contact[str(mailer)]["status"], by_contact[str(mailer)]["channel"]) == (
        "queued",
        "email",
    )
    assert by_contact[str(commenter)]["status"] == "skipped"
    assert notice["counts"] == {"queued": 3, "skipped": 3}

    sent = outbound(desk)[before:]
    assert sorted(m.recipient_address for m in sent) == [
        "+15550100001",
        "lee@example.com",
        "whatsapp:+15550100003",
    ]
    assert all(m.text == "Our store is closed on Monday." for m in sent)
    [email] = [m for m in sent if m.channel is Channel.EMAIL]
    assert email.email is not None
    assert email.email.subject == "Holiday opening hours"
    assert email.email.auto_submitted is True
    queued_ids = {r["message_id"] for r in notice["recipients"] if r["status"] == "queued"}
    assert {str(m.message_id) for m in sent} == queued_ids

    await receipt(desk, by_contact[str(sms)]["message_id"], Channel.SMS, "sent")
    await receipt(desk, by_contact[str(sms)]["message_id"], Channel.SMS, "delivered")
    await receipt(
        desk, by_contact[str(mailer)]["message_id"], Channel.EMAIL, "failed", "550 mailbox unknown"
    )
    after = (await desk.call("admin_key", "GET", f"/v1/notices/{notice['id']}")).json()
    statuses = {r["contact_id"]: (r["status"], r["reason"]) for r in after["recipients"]}
    assert statuses[str(sms)] == ("delivered", None)
    assert statuses[str(mailer)] == ("failed", "550 mailbox unknown")
    assert statuses[str(whatsapp_open)] == ("queued", None)
    assert after["counts"] == {"delivered": 1, "failed": 1, "queued": 1, "skipped": 3}
    listed = (await desk.call("admin", "GET", "/v1/notices")).json()["items"]
    assert [n["id"] for n in listed] == [notice["id"]]


async def test_the_most_recent_lasting_channel_is_preferred_unless_one_is_asked_for(
    desk: Desk,
) -> None:
    ws = desk.a.workspace_id
    mailer = await emails_in(desk, "kim@example.com")
    async with desk.database.sessions() as session:
        identity = ContactIdentity(
            workspace_id=ws, contact_id=mailer, channel="webchat", address="wcs_kim"
        )
        session.add(identity)
        await session.commit()
    chat = received(ws, Channel.WEBCHAT, "wcs_kim")  # later, but a chat session
    assert await customer_writes(desk, chat) == mailer

    default = await desk.call(
        "admin", "POST", "/v1/notices", json={"text": "Hi", "contact_ids": [str(mailer)]}
    )
    assert default.json()["recipients"][0]["channel"] == "email"
    chosen = await desk.call(
        "supervisor_key",
        "POST",
        "/v1/notices",
        json={"text": "Hi", "contact_ids": [str(mailer)], "channel": "webchat"},
    )
    assert chosen.status_code == 202, chosen.text
    assert chosen.json()["recipients"][0]["channel"] == "webchat"
    none = await desk.call(
        "admin",
        "POST",
        "/v1/notices",
        json={"text": "Hi", "contact_ids": [str(mailer)], "channel": "sms"},
    )
    [skipped] = none.json()["recipients"]
    assert skipped["status"] == "skipped"
    assert "never written to us on sms" in skipped["reason"]


async def test_notices_refuse_bad_input_agents_and_other_workspaces(desk: Desk) -> None:
    ws = desk.a.workspace_id
    contact = await customer_writes(desk, received(ws, Channel.SMS, "+15550100009"))
    theirs = await customer_writes(desk, received(desk.b.workspace_id, Channel.SMS, "+15550100010"))
    body = {"text": "Hello", "contact_ids": [str(contact)]}
    before = len(outbound(desk))
    for who in ("agent", "supervisor"):
        assert_problem(await desk.call(who, "POST", "/v1/notices", json=body), 403)
        assert_problem(await desk.call(who, "GET", "/v1/notices"), 403)
    assert_problem(await desk.client.post("/v1/notices", json=body), 401)
    bad_bodies: list[dict[str, Any]] = [
        {"text": ""},
        {"contact_ids": []},
        {"contact_ids": ["not-a-uuid"]},
        {"contact_ids": [str(uuid.uuid4()) for _ in range(501)]},
        {"channel": "pigeon"},
        {"subject": ""},
        {"priority": 1},
    ]
    for bad in bad_bodies:
        assert_problem(await desk.call("admin", "POST", "/v1/notices", json=body | bad), 422)
    other = await desk.call(
        "admin", "POST", "/v1/notices", json=body | {"contact_ids": [str(contact), str(theirs)]}
    )
    problem = assert_problem(other, 404)
    assert problem["missing_contact_ids"] == [str(theirs)]
    async with desk.database.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Notice)) == 0
    assert len(outbound(desk)) == before

    created = await desk.call("admin", "POST", "/v1/notices", json=body)
    path = f"/v1/notices/{created.json()['id']}"
    assert_problem(await desk.client.get(path, headers=desk.b.headers["admin"]), 404)
    listed = await desk.client.get("/v1/notices", headers=desk.b.headers["admin"])
    assert listed.json()["items"] == []
    assert (await desk.call("admin", "GET", path)).status_code == 200


async def test_merged_duplicates_get_one_notice_and_a_retry_sends_nothing_twice(
    desk: Desk,
) -> None:
    ws = desk.a.workspace_id
    keep = await customer_writes(desk, received(ws, Channel.SMS, "+15550100011"))
    duplicate = await emails_in(desk, "dup@example.com")
    merged = await desk.call(
        "admin", "POST", f"/v1/contacts/{keep}/merge", json={"other_contact_id": str(duplicate)}
    )
    assert merged.status_code == 200, merged.text
    before = len(outbound(desk))
    body = {"text": "One notice each.", "contact_ids": [str(keep), str(duplicate)]}
    headers = {**desk.a.headers["admin_key"], "Idempotency-Key": "notice-merged-1"}
    first = await desk.client.post("/v1/notices", json=body, headers=headers)
    again = await desk.client.post("/v1/notices", json=body, headers=headers)
    assert first.status_code == again.status_code == 202, first.text
    assert again.json()["id"] == first.json()["id"]
    statuses = {r["contact_id"]: r for r in first.json()["recipients"]}
    assert statuses[str(keep)]["status"] == "queued"
    assert statuses[str(duplicate)]["status"] == "skipped"
    assert "merged" in statuses[str(duplicate)]["reason"]
    assert len(outbound(desk)) == before + 1
    async with desk.database.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Notice)) == 1
