"""Twilio SMS: signed webhooks through ingest, MMS, STOP/START honoured on outbound,
dedupe, status callbacks → delivery status, retries, and the contract kit."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest
from sqlalchemy import func, select

from services.ingest.adapters.sms.twilio import (
    TwilioConfig,
    TwilioSmsAdapter,
    signed_request_headers,
)
from services.ingest.app import create_app
from services.ingest.consent import ConsentDirectory
from services.ingest.dispatcher import OutboundDispatcher
from services.router.delivery import DeliveryRouter
from services.router.worker import InboundRouter
from shared.bus.memory import MemoryBus
from shared.channels.attachments import MemoryAttachmentStore
from shared.channels.contract import ChannelAdapterContract, Recorder, with_header
from shared.channels.protocol import (
    ChannelAccount,
    ChannelAdapter,
    ChannelContext,
    ChannelLimits,
    ChannelRuntime,
    InboundRequest,
)
from shared.channels.sending import SendAttemptsExhaustedError
from shared.db.models import ChannelAccount as ChannelAccountRow
from shared.db.models import ContactIdentity, Message
from shared.db.session import Database
from shared.events import (
    Channel,
    ConsentChange,
    DeliveryStatusReported,
    Event,
    MessageReceived,
    OutboundMessageRequested,
    Topic,
    decode_event,
    encode_event,
)
from shared.settings import Settings
from tests.conftest import served
from tests.twilio_stand_in import TwilioCall, twilio_stand_in

ACCOUNT_SID = "AC" + "1" * 32
AUTH_TOKEN = "twilio-auth-token-0123456789abcdef"
OUR_NUMBER = "+15550001111"
CUSTOMER = "+15557654321"
PUBLIC = "https://ingest.acme.example"
WORKSPACE = uuid.UUID("00000000-0000-4000-8000-0000000005a5")


def sms_fields(
    sid: str = "SM" + "a" * 32, body: str = "Where is my order?", **extra: str
) -> dict[str, str]:
    return {
        "MessageSid": sid,
        "SmsMessageSid": sid,
        "AccountSid": ACCOUNT_SID,
        "From": CUSTOMER,
        "To": OUR_NUMBER,
        "Body": body,
        "NumMedia": "0",
        "FromCountry": "US",
        "SomethingTwilioAddsLater": "x",
        **extra,
    }


def signed(path: str, fields: dict[str, str], *, url: str | None = None) -> dict[str, str]:
    return signed_request_headers(AUTH_TOKEN, url or PUBLIC + path, fields)


@pytest.fixture
async def account_id(
    database: Database, workspace_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> uuid.UUID:
    monkeypatch.setenv("TEST_TWILIO_SECRET", f"{ACCOUNT_SID}:{AUTH_TOKEN}")
    new_id = uuid.uuid4()
    async with database.sessions() as session:
        session.add(
            ChannelAccountRow(
                id=new_id,
                workspace_id=workspace_id,
                channel="sms",
                adapter="twilio",
                address=OUR_NUMBER,
                secret_ref="env:TEST_TWILIO_SECRET",
            )
        )
        await session.commit()
    return new_id


@pytest.fixture
async def ingest(
    settings: Settings,
    memory_bus: MemoryBus,
    database: Database,
    account_id: uuid.UUID,
    tmp_path: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    tuned = settings.model_copy(
        update={
            "attachment_store_dir": tmp_path / "attachments",
            "smtp_listen_port": 0,
            "public_base_url": PUBLIC,
            # No Twilio here: the media fetcher refuses api.twilio.com URLs unfetched.
            "twilio_api_base_url": "https://twilio-api.invalid",
        }
    )
    app = create_app(tuned, bus=memory_bus, database=database)
    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield client


def inbound(bus: MemoryBus) -> list[MessageReceived]:
    return [
        e.data
        for e in (decode_event(r) for r in bus.records(Topic.INBOUND.value))
        if isinstance(e.data, MessageReceived)
    ]


async def post(
    client: httpx.AsyncClient, path: str, fields: dict[str, str], headers: dict[str, str]
) -> httpx.Response:
    return await client.post(path, content=urlencode(fields).encode(), headers=headers)


async def test_a_signed_sms_is_published_and_answered_with_twiml(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, account_id: uuid.UUID
) -> None:
    path = f"/v1/channels/twilio/{account_id}"
    fields = sms_fields()
    response = await post(ingest, path, fields, signed(path, fields))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/xml")
    assert b"<Response/>" in response.content
    [message] = inbound(memory_bus)
    assert message.channel is Channel.SMS
    assert message.provider_message_id == fields["MessageSid"]
    assert message.sender.address == CUSTOMER
    assert message.channel_account_id == account_id
    assert message.consent is None


async def test_signature_negatives_are_refused_and_publish_nothing(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, account_id: uuid.UUID
) -> None:
    path = f"/v1/channels/twilio/{account_id}"
    fields = sms_fields()
    good = signed(path, fields)
    tampered = {**fields, "Body": "Send me a refund"}
    no_header = {k: v for k, v in good.items() if k != "X-Twilio-Signature"}
    cases = {
        "tampered body": (tampered, good),
        "wrong URL": (fields, signed(path, fields, url=f"https://evil.example{path}")),
        "missing header": (fields, no_header),
        "wrong token": (fields, signed_request_headers("other-token", PUBLIC + path, fields)),
        "other account": (
            {**fields, "AccountSid": "AC" + "2" * 32},
            signed(path, {**fields, "AccountSid": "AC" + "2" * 32}),
        ),
    }
    statuses = {}
    for label, (body, headers) in cases.items():
        statuses[label] = (await post(ingest, path, body, headers)).status_code
    assert statuses == {
        "tampered body": 403,
        "wrong URL": 403,
        "missing header": 401,
        "wrong token": 403,
        "other account": 403,
    }
    assert memory_bus.records(Topic.INBOUND.value) == []
    assert memory_bus.records(Topic.DELIVERY.value) == []


async def test_mms_media_become_attachment_metadata(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, account_id: uuid.UUID
) -> None:
    path = f"/v1/channels/twilio/{account_id}"
    media = f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/MM1/Media/ME1"
    fields = sms_fields(
        sid="MM" + "b" * 32,
        body="Photo of the damage",
        NumMedia="2",
        MediaUrl0=media,
        MediaContentType0="image/jpeg",
        MediaUrl1=media + "2",
        MediaContentType1="video/mp4",
    )
    response = await post(ingest, path, fields, signed(path, fields))
    assert response.status_code == 200, response.text
    [message] = inbound(memory_bus)
    assert [(a.content_type, a.storage_key) for a in message.attachments] == [
        ("image/jpeg", media),
        ("video/mp4", media + "2"),
    ]
    bad = sms_fields(sid="MM" + "c" * 32, NumMedia="1")
    assert (await post(ingest, path, bad, signed(path, bad))).status_code == 422


async def test_the_same_webhook_three_times_is_one_message(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, database: Database, account_id: uuid.UUID
) -> None:
    path = f"/v1/channels/twilio/{account_id}"
    fields = sms_fields()
    for _ in range(3):
        assert (await post(ingest, path, fields, signed(path, fields))).status_code == 200
    await InboundRouter(database, memory_bus).handle(memory_bus.records(Topic.INBOUND.value))
    async with database.sessions() as session:
        count = await session.scalar(select(func.count()).select_from(Message))
        identity = await session.scalar(select(ContactIdentity))
    assert len(inbound(memory_bus)) == 3
    assert count == 1
    assert identity is not None
    assert (identity.kind, identity.address) == ("phone", CUSTOMER)


async def route_all(bus: MemoryBus, database: Database, seen: int) -> int:
    records = bus.records(Topic.INBOUND.value)
    await InboundRouter(database, bus).handle(records[seen:])
    return len(records)


async def test_stop_and_start_are_recorded_and_honoured_on_outbound(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, database: Database, account_id: uuid.UUID
) -> None:
    path = f"/v1/channels/twilio/{account_id}"
    hello = sms_fields(sid="SM" + "1" * 32, body="Hello")
    stop = sms_fields(sid="SM" + "2" * 32, body=" stop ")
    for fields in (hello, stop):
        assert (await post(ingest, path, fields, signed(path, fields))).status_code == 200
    assert [m.consent for m in inbound(memory_bus)] == [None, ConsentChange.OPT_OUT]
    seen = await route_all(memory_bus, database, 0)
    async with database.sessions() as session:
        identity = await session.scalar(select(ContactIdentity))
        assert identity is not None
        assert identity.opted_out_at is not None
        reply = await session.scalar(select(Message).limit(1))
        assert reply is not None
        conversation_id = reply.conversation_id
        ours = Message(
            id=uuid.uuid4(),
            workspace_id=reply.workspace_id,
            conversation_id=conversation_id,
            channel="sms",
            direction="outbound",
            text="We can help!",
            delivery_status="queued",
        )
        session.add(ours)
        await session.commit()
        workspace_id = reply.workspace_id

    outbound = OutboundMessageRequested(
        workspace_id=workspace_id,
        conversation_id=conversation_id,
        message_id=ours.id,
        channel=Channel.SMS,
        recipient_address=CUSTOMER,
        text="We can help!",
        created_at=datetime.now(UTC),
        channel_account_id=account_id,
    )
    with twilio_stand_in() as twilio:
        runtime = ChannelRuntime(
            services={TwilioConfig: TwilioConfig(api_base_url=twilio.base_url)}
        )
        from services.ingest.accounts import AccountDirectory
        from shared.channels.registry import ChannelRegistry

        dispatcher = OutboundDispatcher(
            ChannelRegistry([TwilioSmsAdapter(runtime)]),
            AccountDirectory(database),
            MemoryAttachmentStore(),
            ChannelLimits(),
            channels={Channel.SMS},
            bus=memory_bus,
            consent=ConsentDirectory(database).refusal,
        )
        record = memory_bus_record(outbound)
        await dispatcher.handle([record])
        assert twilio.recorder.received == []  # opted out: never sent
        await DeliveryRouter(database, memory_bus).handle(memory_bus.records(Topic.DELIVERY.value))
        async with database.sessions() as session:
            stored = await session.get(Message, ours.id)
            assert stored is not None
            assert stored.delivery_status == "failed"
            assert "opted out" in (stored.delivery_status_reason or "")

        # START opts back in: the next reply is sent.
        start = sms_fields(sid="SM" + "3" * 32, body="START")
        assert (await post(ingest, path, start, signed(path, start))).status_code == 200
        await route_all(memory_bus, database, seen)
        again = outbound.model_copy(update={"message_id": uuid.uuid4()})
        await dispatcher.handle([memory_bus_record(again)])
        calls = await twilio.recorder.wait_for(1)
        assert len(calls) == 1
    async with database.sessions() as session:
        identity = await session.scalar(select(ContactIdentity))
        assert identity is not None
        assert identity.opted_out_at is None


def memory_bus_record(payload: OutboundMessageRequested) -> Any:
    from shared.bus.port import BusRecord

    out = encode_event(Event.of(payload, source="test"), topic=Topic.OUTBOUND.value, key="k")
    return BusRecord(
        topic=out.topic, partition=0, offset=0, key=out.key, value=out.value, headers=out.headers
    )


async def test_status_callbacks_update_delivery_status(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, database: Database, account_id: uuid.UUID
) -> None:
    path = f"/v1/channels/twilio/{account_id}"
    fields = sms_fields()
    assert (await post(ingest, path, fields, signed(path, fields))).status_code == 200
    await route_all(memory_bus, database, 0)
    async with database.sessions() as session:
        first = await session.scalar(select(Message))
        assert first is not None
        ours = Message(
            id=uuid.uuid4(),
            workspace_id=first.workspace_id,
            conversation_id=first.conversation_id,
            channel="sms",
            direction="outbound",
            text="Shipped",
            delivery_status="queued",
        )
        session.add(ours)
        await session.commit()
    status_path = f"/v1/channels/twilio/{account_id}/status?message_id={ours.id}"
    sid = "SM" + "9" * 32
    callbacks = [
        {"MessageSid": sid, "MessageStatus": "sent", "AccountSid": ACCOUNT_SID},
        {"MessageSid": sid, "MessageStatus": "delivered", "AccountSid": ACCOUNT_SID},
        {"MessageSid": sid, "MessageStatus": "sent", "AccountSid": ACCOUNT_SID},  # late
    ]
    forged = {**callbacks[1], "MessageStatus": "failed"}
    refused = await post(ingest, status_path, forged, signed(status_path, callbacks[1]))
    assert refused.status_code == 403
    for callback in callbacks:
        response = await post(ingest, status_path, callback, signed(status_path, callback))
        assert response.status_code == 200, response.text
    reports = [decode_event(r).data for r in memory_bus.records(Topic.DELIVERY.value)]
    assert [r.status for r in reports if isinstance(r, DeliveryStatusReported)] == [
        "sent",
        "delivered",
        "sent",
    ]
    await DeliveryRouter(database, memory_bus).handle(memory_bus.records(Topic.DELIVERY.value))
    async with database.sessions() as session:
        stored = await session.get(Message, ours.id)
        assert stored is not None
        assert (stored.delivery_status, stored.provider_message_id) == ("delivered", sid)

    failed_path = f"/v1/channels/twilio/{account_id}/status?message_id={uuid.uuid4()}"
    failure = {"MessageSid": "SM" + "8" * 32, "MessageStatus": "undelivered", "ErrorCode": "30003"}
    response = await post(ingest, failed_path, failure, signed(failed_path, failure))
    assert response.status_code == 200
    [last] = [
        r
        for r in (decode_event(x).data for x in memory_bus.records(Topic.DELIVERY.value))
        if isinstance(r, DeliveryStatusReported) and r.provider_message_id == failure["MessageSid"]
    ]
    assert (last.status, last.reason) == ("failed", "Twilio: undelivered (error 30003)")


async def test_sends_are_retried_then_dead_lettered() -> None:
    account = TwilioContract().account()
    message = OutboundMessageRequested(
        workspace_id=WORKSPACE,
        conversation_id=uuid.uuid4(),
        message_id=uuid.uuid4(),
        channel=Channel.SMS,
        recipient_address=CUSTOMER,
        text="Hi",
        created_at=datetime.now(UTC),
        channel_account_id=account.id,
    )
    ctx = ChannelContext(account=account, attachments=MemoryAttachmentStore())
    with twilio_stand_in() as twilio:
        config = TwilioConfig(api_base_url=twilio.base_url, max_attempts=3, backoff_seconds=0.01)
        adapter = TwilioSmsAdapter(ChannelRuntime(services={TwilioConfig: config}))
        twilio.failures.extend([503, 429])
        result = await adapter.send(message, ctx)
        assert result.provider_message_id.startswith("SM")
        twilio.failures.extend([503, 500, 503])
        with pytest.raises(SendAttemptsExhaustedError):
            await adapter.send(message, ctx)
    assert len(twilio.recorder.received) == 1


# The contract kit ----------------------------------------------------------------------


class TwilioContract(ChannelAdapterContract):
    account_id = uuid.UUID("00000000-0000-4000-8000-0000000005a6")
    path = f"/v1/channels/twilio/{account_id}"

    def account(self) -> ChannelAccount:
        return ChannelAccount(
            id=self.account_id,
            workspace_id=WORKSPACE,
            channel=Channel.SMS,
            adapter="twilio",
            address=OUR_NUMBER,
            secret=f"{ACCOUNT_SID}:{AUTH_TOKEN}",
            settings={"public_base_url": PUBLIC},
        )

    def make_adapter(self) -> ChannelAdapter:
        base = getattr(self, "base_url", "https://api.twilio.com")
        return TwilioSmsAdapter(
            ChannelRuntime(services={TwilioConfig: TwilioConfig(api_base_url=base)})
        )

    def valid_request(self) -> InboundRequest:
        fields = sms_fields()
        body = urlencode(fields).encode()
        headers = {k.lower(): v for k, v in signed(self.path, fields).items()}
        # ingest sees the internal URL; the signature is over the public one
        return InboundRequest(body=body, url=f"http://10.0.0.7:8001{self.path}", headers=headers)

    def sign(self, request: InboundRequest) -> InboundRequest | None:
        try:
            fields = dict(parse_qsl(request.body.decode(), keep_blank_values=True))
        except UnicodeDecodeError:
            return None  # Twilio signs form fields; these bytes hold none
        signature = signed(self.path, fields)["X-Twilio-Signature"]
        return with_header(request, "X-Twilio-Signature", signature)

    def forged_requests(self, valid: InboundRequest) -> list[tuple[str, InboundRequest]]:
        from shared.channels.contract import with_body

        return [
            ("no signature", with_header(valid, "X-Twilio-Signature", None)),
            ("wrong signature", with_header(valid, "X-Twilio-Signature", "AAAA")),
            ("tampered", with_body(valid, valid.body.replace(b"order", b"refund"))),
        ]

    def stand_in(self) -> AbstractAsyncContextManager[Recorder]:
        @contextlib.asynccontextmanager
        async def server() -> AsyncIterator[Recorder]:
            with twilio_stand_in() as twilio:
                self.base_url = twilio.base_url
                yield twilio.recorder

        return server()

    def check_delivery(self, message: OutboundMessageRequested, delivered: Any) -> None:
        assert isinstance(delivered, TwilioCall)
        assert delivered.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
        assert (delivered.username, delivered.password) == (ACCOUNT_SID, AUTH_TOKEN)
        assert delivered.fields["To"] == message.recipient_address
        assert delivered.fields["From"] == OUR_NUMBER
        assert delivered.fields["Body"] == message.text
        assert delivered.fields["StatusCallback"] == (
            f"{PUBLIC}/v1/channels/twilio/{self.account_id}/status?message_id={message.message_id}"
        )


class TestTwilioContract(TwilioContract):
    pass
