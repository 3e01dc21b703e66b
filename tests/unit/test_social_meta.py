"""Meta (Messenger, Instagram, WhatsApp): the hub.challenge handshake, signed webhooks
through ingest, DMs keyed by sender, post comments keyed by post, dedupe, the WhatsApp
24-hour window on outbound, sends to a Graph stand-in, retries, and the contract kit."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from services.ingest.accounts import AccountDirectory
from services.ingest.adapters.social.meta import (
    MetaAdapter,
    MetaConfig,
    signed_request_headers,
)
from services.ingest.app import create_app
from services.ingest.consent import ConsentDirectory
from services.ingest.dispatcher import OutboundDispatcher
from services.router.delivery import DeliveryRouter
from services.router.worker import InboundRouter
from shared.bus.memory import MemoryBus
from shared.bus.port import BusRecord
from shared.channels.attachments import MemoryAttachmentStore
from shared.channels.contract import ChannelAdapterContract, Recorder, with_body, with_header
from shared.channels.protocol import (
    ChannelAccount,
    ChannelAdapter,
    ChannelContext,
    ChannelLimits,
    ChannelRuntime,
    InboundRequest,
    PermanentDeliveryError,
)
from shared.channels.registry import ChannelRegistry
from shared.channels.sending import SendAttemptsExhaustedError
from shared.conversations import send_to_customer
from shared.db.models import ChannelAccount as ChannelAccountRow
from shared.db.models import Conversation, Message
from shared.db.session import Database
from shared.events import (
    Channel,
    DeliveryStatusReported,
    Event,
    MessageDirection,
    MessageReceived,
    OutboundMessageRequested,
    Topic,
    decode_event,
    encode_event,
)
from shared.outbox import commit_and_publish
from shared.settings import Settings
from tests.conftest import served
from tests.meta_stand_in import MetaCall, meta_stand_in

APP_SECRET = "0123456789abcdef0123456789abcdef"
ACCESS_TOKEN = "EAAGm0PX4ZCpsBAtest-page-token"
VERIFY_TOKEN = "omni-verify-me"
PAGE_ID = "1029384756"
IG_ID = "17841400000000001"
PHONE_NUMBER_ID = "106540352242922"
WORKSPACE = uuid.UUID("00000000-0000-4000-8000-0000000006a5")
SETTINGS = {
    "verify_token": VERIFY_TOKEN,
    "page_id": PAGE_ID,
    "instagram_account_id": IG_ID,
    "whatsapp_phone_number_id": PHONE_NUMBER_ID,
}


def messenger_dm(mid: str = "m_AAAA1", text: str = "Where is my order?", psid: str = "2468") -> Any:
    return {
        "object": "page",
        "entry": [
            {
                "id": PAGE_ID,
                "time": 1700000000000,
                "messaging": [
                    {
                        "sender": {"id": psid},
                        "recipient": {"id": PAGE_ID},
                        "timestamp": 1700000000000,
                        "message": {"mid": mid, "text": text},
                    }
                ],
            }
        ],
    }


def instagram_dm(mid: str = "aWdfZAG1", igsid: str = "9753") -> Any:
    body = messenger_dm(mid=mid, text="Is this in stock?", psid=igsid)
    body["object"] = "instagram"
    body["entry"][0]["id"] = IG_ID
    return body


def whatsapp_message(
    wamid: str = "wamid.HBgLMTU1NTEyMzQ1NjcVAgASGBQ", wa_id: str = "15551234567"
) -> Any:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "WABA_ID",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550001111",
                                "phone_number_id": PHONE_NUMBER_ID,
                            },
                            "contacts": [{"profile": {"name": "Grace"}, "wa_id": wa_id}],
                            "messages": [
                                {
                                    "from": wa_id,
                                    "id": wamid,
                                    "timestamp": "1700000000",
                                    "type": "text",
                                    "text": {"body": "Hello from WhatsApp"},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }


def post_comment(comment_id: str, user: str, post_id: str = f"{PAGE_ID}_555") -> Any:
    return {
        "object": "page",
        "entry": [
            {
                "id": PAGE_ID,
                "time": 1700000000,
                "changes": [
                    {
                        "field": "feed",
                        "value": {
                            "item": "comment",
                            "verb": "add",
                            "post_id": post_id,
                            "comment_id": comment_id,
                            "parent_id": post_id,
                            "from": {"id": user, "name": f"User {user}"},
                            "message": f"Comment by {user}",
                            "created_time": 1700000000,
                        },
                    }
                ],
            }
        ],
    }


def raw(payload: Any) -> bytes:
    # Meta's own spacing: the signature must be over these exact bytes.
    return json.dumps(payload, indent=1, ensure_ascii=False).encode()


def signed(body: bytes, secret: str = APP_SECRET) -> dict[str, str]:
    return signed_request_headers(secret, body)


@pytest.fixture
async def account_id(
    database: Database, workspace_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> uuid.UUID:
    monkeypatch.setenv("TEST_META_SECRET", f"{APP_SECRET}:{ACCESS_TOKEN}")
    new_id = uuid.uuid4()
    async with database.sessions() as session:
        session.add(
            ChannelAccountRow(
                id=new_id,
                workspace_id=workspace_id,
                channel="social",
                adapter="meta",
                address=PAGE_ID,
                secret_ref="env:TEST_META_SECRET",
                settings=SETTINGS,
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
        update={"attachment_store_dir": tmp_path / "attachments", "smtp_listen_port": 0}
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


async def post(client: httpx.AsyncClient, path: str, body: bytes) -> httpx.Response:
    return await client.post(path, content=body, headers=signed(body))


async def test_the_subscription_handshake_echoes_the_challenge_only_for_our_token(
    ingest: httpx.AsyncClient, account_id: uuid.UUID
) -> None:
    path = f"/v1/channels/meta/{account_id}"
    ok = await ingest.get(
        path,
        params={
            "hub.mode": "subscribe",
            "hub.verify_token": VERIFY_TOKEN,
            "hub.challenge": "1158201444",
        },
    )
    assert (ok.status_code, ok.text) == (200, "1158201444")
    wrong = await ingest.get(
        path, params={"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "1"}
    )
    assert wrong.status_code == 403
    mode = await ingest.get(
        path,
        params={"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
    )
    assert mode.status_code == 403
    unknown = await ingest.get(
        f"/v1/channels/meta/{uuid.uuid4()}",
        params={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
    )
    assert unknown.status_code == 404


async def test_signature_negatives_are_refused_and_publish_nothing(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, account_id: uuid.UUID
) -> None:
    path = f"/v1/channels/meta/{account_id}"
    body = raw(messenger_dm())
    good = signed(body)
    reserialized = json.dumps(json.loads(body)).encode()  # same JSON, other bytes
    cases = {
        "missing header": (body, {"Content-Type": "application/json"}),
        "wrong secret": (body, signed(body, "another-app-secret")),
        "tampered body": (body.replace(b"order", b"refund"), good),
        "re-serialized body": (reserialized, good),
        "not hex": (body, {**good, "X-Hub-Signature-256": "sha256=zz"}),
    }
    statuses = {
        label: (await ingest.post(path, content=content, headers=headers)).status_code
        for label, (content, headers) in cases.items()
    }
    assert statuses == {
        "missing header": 401,
        "wrong secret": 403,
        "tampered body": 403,
        "re-serialized body": 403,
        "not hex": 403,
    }
    assert memory_bus.records(Topic.INBOUND.value) == []
    assert memory_bus.records(Topic.DELIVERY.value) == []


async def test_messenger_instagram_and_whatsapp_dms_are_keyed_by_sender(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, account_id: uuid.UUID
) -> None:
    path = f"/v1/channels/meta/{account_id}"
    for payload in (messenger_dm(), instagram_dm(), whatsapp_message()):
        response = await post(ingest, path, raw(payload))
        assert response.status_code == 200, response.text
    by_platform = {m.sender.address.split(":")[0]: m for m in inbound(memory_bus)}
    messenger, instagram, whatsapp = (
        by_platform[p] for p in ("messenger", "instagram", "whatsapp")
    )
    assert (messenger.provider_message_id, messenger.sender.address, messenger.thread_key) == (
        "m_AAAA1",
        "messenger:2468",
        "messenger:2468",
    )
    assert messenger.text == "Where is my order?"
    assert (instagram.provider_message_id, instagram.thread_key) == ("aWdfZAG1", "instagram:9753")
    assert whatsapp.provider_message_id == "wamid.HBgLMTU1NTEyMzQ1NjcVAgASGBQ"
    assert whatsapp.sender.address == whatsapp.thread_key == "whatsapp:+15551234567"
    assert (whatsapp.sender.display_name, whatsapp.text) == ("Grace", "Hello from WhatsApp")
    for message in (messenger, instagram, whatsapp):
        assert message.channel is Channel.SOCIAL
        assert message.channel_account_id == account_id


async def test_post_comments_become_one_conversation_keyed_by_the_post(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, database: Database, account_id: uuid.UUID
) -> None:
    path = f"/v1/channels/meta/{account_id}"
    for comment_id, user in (("555_1", "111"), ("555_2", "222")):
        assert (await post(ingest, path, raw(post_comment(comment_id, user)))).status_code == 200
    first, second = sorted(inbound(memory_bus), key=lambda m: m.provider_message_id)
    assert first.thread_key == second.thread_key == f"post:{PAGE_ID}_555"
    assert (first.sender.address, second.sender.address) == ("facebook:111", "facebook:222")
    await InboundRouter(database, memory_bus).handle(memory_bus.records(Topic.INBOUND.value))
    async with database.sessions() as session:
        threads = (await session.scalars(select(Conversation.thread_key))).all()
        count = await session.scalar(select(func.count()).select_from(Message))
    assert list(threads) == [f"post:{PAGE_ID}_555"]
    assert count == 2


async def test_unknown_events_are_acknowledged_and_ignored(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, account_id: uuid.UUID
) -> None:
    path = f"/v1/channels/meta/{account_id}"
    read = {
        "object": "page",
        "entry": [
            {"id": PAGE_ID, "messaging": [{"sender": {"id": "1"}, "read": {"watermark": 1}}]},
            {"id": PAGE_ID, "changes": [{"field": "mention", "value": {"post_id": "x"}}]},
        ],
    }
    echo = messenger_dm(mid="m_echo")
    echo["entry"][0]["messaging"][0]["message"]["is_echo"] = True
    for payload in (read, echo, {"object": "page"}):
        assert (await post(ingest, path, raw(payload))).status_code == 200
    assert memory_bus.records(Topic.INBOUND.value) == []
    bad = b"{not json"
    assert (await post(ingest, path, bad)).status_code == 400


async def test_the_same_webhook_three_times_is_one_message(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, database: Database, account_id: uuid.UUID
) -> None:
    path = f"/v1/channels/meta/{account_id}"
    body = raw(whatsapp_message())
    for _ in range(3):
        assert (await post(ingest, path, body)).status_code == 200
    await InboundRouter(database, memory_bus).handle(memory_bus.records(Topic.INBOUND.value))
    async with database.sessions() as session:
        count = await session.scalar(select(func.count()).select_from(Message))
    assert len(inbound(memory_bus)) == 3
    assert count == 1


def bus_record(payload: OutboundMessageRequested) -> BusRecord:
    out = encode_event(Event.of(payload, source="test"), topic=Topic.OUTBOUND.value, key="k")
    return BusRecord(
        topic=out.topic, partition=0, offset=0, key=out.key, value=out.value, headers=out.headers
    )


async def test_whatsapp_replies_outside_24_hours_are_refused_with_a_reason(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, database: Database, account_id: uuid.UUID
) -> None:
    path = f"/v1/channels/meta/{account_id}"
    assert (await post(ingest, path, raw(whatsapp_message()))).status_code == 200
    await InboundRouter(database, memory_bus).handle(memory_bus.records(Topic.INBOUND.value))
    async with database.sessions() as session:
        customer = await session.scalar(select(Message))
        assert customer is not None
        replies = [
            Message(
                id=uuid.uuid4(),
                workspace_id=customer.workspace_id,
                conversation_id=customer.conversation_id,
                channel="social",
                direction="outbound",
                text=text,
                delivery_status="queued",
            )
            for text in ("In time", "Too late")
        ]
        session.add_all(replies)
        await session.commit()
    requests = [
        OutboundMessageRequested(
            workspace_id=customer.workspace_id,
            conversation_id=customer.conversation_id,
            message_id=reply.id,
            channel=Channel.SOCIAL,
            recipient_address="whatsapp:+15551234567",
            text=reply.text,
            created_at=datetime.now(UTC),
            channel_account_id=account_id,
        )
        for reply in replies
    ]
    with meta_stand_in() as meta:
        config = MetaConfig(graph_base_url=meta.base_url)
        dispatcher = OutboundDispatcher(
            ChannelRegistry([MetaAdapter(ChannelRuntime(services={MetaConfig: config}))]),
            AccountDirectory(database),
            MemoryAttachmentStore(),
            ChannelLimits(),
            channels={Channel.SOCIAL},
            bus=memory_bus,
            consent=ConsentDirectory(database).refusal,
        )
        await dispatcher.handle([bus_record(requests[0])])
        [sent] = await meta.recorder.wait_for(1)
        assert isinstance(sent, MetaCall)
        assert sent.body["to"] == "15551234567"
        # The customer's last message is now 25 hours old.
        async with database.sessions() as session:
            await session.execute(
                update(Message)
                .where(Message.id == customer.id)
                .values(created_at=datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=25))
            )
            await session.commit()
        await dispatcher.handle([bus_record(requests[1])])
        assert len(meta.recorder.received) == 1  # never sent
    reports = [decode_event(r).data for r in memory_bus.records(Topic.DELIVERY.value)]
    # Reports travel on per-key partitions: compare them by message, not by bus order.
    by_message = {r.message_id: r.status for r in reports if isinstance(r, DeliveryStatusReported)}
    assert by_message == {replies[0].id: "sent", replies[1].id: "failed"}
    await DeliveryRouter(database, memory_bus).handle(memory_bus.records(Topic.DELIVERY.value))
    async with database.sessions() as session:
        late = await session.get(Message, replies[1].id)
        assert late is not None
        assert late.delivery_status == "failed"
        assert "24 hours" in (late.delivery_status_reason or "")


async def test_whatsapp_status_webhooks_become_delivery_receipts(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, account_id: uuid.UUID
) -> None:
    path = f"/v1/channels/meta/{account_id}"
    payload = whatsapp_message()
    value = payload["entry"][0]["changes"][0]["value"]
    del value["messages"]
    value["statuses"] = [
        {"id": "wamid.OURS", "status": "delivered", "recipient_id": "15551234567"},
        {
            "id": "wamid.FAIL",
            "status": "failed",
            "errors": [{"code": 131047, "title": "Re-engagement message"}],
        },
    ]
    assert (await post(ingest, path, raw(payload))).status_code == 200
    assert inbound(memory_bus) == []
    reports = [decode_event(r).data for r in memory_bus.records(Topic.DELIVERY.value)]
    assert sorted(
        (r.provider_message_id, r.status, r.reason)
        for r in reports
        if isinstance(r, DeliveryStatusReported)
    ) == [
        ("wamid.FAIL", "failed", "WhatsApp: failed (error 131047): Re-engagement message"),
        ("wamid.OURS", "delivered", None),
    ]


def outbound_to(address: str) -> OutboundMessageRequested:
    return OutboundMessageRequested(
        workspace_id=WORKSPACE,
        conversation_id=uuid.uuid4(),
        message_id=uuid.uuid4(),
        channel=Channel.SOCIAL,
        recipient_address=address,
        text="Thanks, we are on it.",
        created_at=datetime.now(UTC),
        channel_account_id=MetaContract.account_id,
    )


async def test_sends_reach_the_graph_stand_in_with_path_token_and_fields() -> None:
    ctx = ChannelContext(account=MetaContract().account(), attachments=MemoryAttachmentStore())
    with meta_stand_in() as meta:
        adapter = MetaAdapter(
            ChannelRuntime(services={MetaConfig: MetaConfig(graph_base_url=meta.base_url)})
        )
        messenger = await adapter.send(outbound_to("messenger:2468"), ctx)
        instagram = await adapter.send(outbound_to("instagram:9753"), ctx)
        whatsapp = await adapter.send(outbound_to("whatsapp:+15551234567"), ctx)
        calls = await meta.recorder.wait_for(3)
    assert messenger.provider_message_id.startswith("m_")
    assert instagram.provider_message_id.startswith("m_")
    assert whatsapp.provider_message_id.startswith("wamid.")
    assert [(c.path, c.token) for c in calls] == [
        (f"/v21.0/{PAGE_ID}/messages", ACCESS_TOKEN),
        (f"/v21.0/{IG_ID}/messages", ACCESS_TOKEN),
        (f"/v21.0/{PHONE_NUMBER_ID}/messages", ACCESS_TOKEN),
    ]
    assert calls[0].body == {
        "recipient": {"id": "2468"},
        "messaging_type": "RESPONSE",
        "message": {"text": "Thanks, we are on it."},
    }
    assert calls[1].body["recipient"] == {"id": "9753"}
    assert calls[2].body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "15551234567",
        "type": "text",
        "text": {"preview_url": False, "body": "Thanks, we are on it."},
    }


async def test_sends_are_retried_then_dead_lettered() -> None:
    ctx = ChannelContext(account=MetaContract().account(), attachments=MemoryAttachmentStore())
    message = outbound_to("messenger:2468")
    with meta_stand_in() as meta:
        config = MetaConfig(graph_base_url=meta.base_url, max_attempts=3, backoff_seconds=0.01)
        adapter = MetaAdapter(ChannelRuntime(services={MetaConfig: config}))
        meta.failures.extend([503, 429])
        result = await adapter.send(message, ctx)
        assert result.provider_message_id.startswith("m_")
        meta.failures.extend([503, 500, 503])
        with pytest.raises(SendAttemptsExhaustedError):
            await adapter.send(message, ctx)
    assert len(meta.recorder.received) == 1


# The contract kit ----------------------------------------------------------------------


class MetaContract(ChannelAdapterContract):
    account_id = uuid.UUID("00000000-0000-4000-8000-0000000006a6")
    path = f"/v1/channels/meta/{account_id}"

    def account(self) -> ChannelAccount:
        return ChannelAccount(
            id=self.account_id,
            workspace_id=WORKSPACE,
            channel=Channel.SOCIAL,
            adapter="meta",
            address=PAGE_ID,
            secret=f"{APP_SECRET}:{ACCESS_TOKEN}",
            settings=SETTINGS,
        )

    def make_adapter(self) -> ChannelAdapter:
        base = getattr(self, "base_url", "https://graph.facebook.com")
        return MetaAdapter(ChannelRuntime(services={MetaConfig: MetaConfig(graph_base_url=base)}))

    def valid_request(self) -> InboundRequest:
        body = raw(messenger_dm())
        headers = {k.lower(): v for k, v in signed(body).items()}
        return InboundRequest(body=body, url=f"http://10.0.0.7:8001{self.path}", headers=headers)

    def sign(self, request: InboundRequest) -> InboundRequest:
        return with_header(
            request, "X-Hub-Signature-256", signed(request.body)["X-Hub-Signature-256"]
        )

    def forged_requests(self, valid: InboundRequest) -> list[tuple[str, InboundRequest]]:
        return [
            ("no signature", with_header(valid, "X-Hub-Signature-256", None)),
            ("wrong signature", with_header(valid, "X-Hub-Signature-256", "sha256=" + "0" * 64)),
            ("tampered", with_body(valid, valid.body.replace(b"order", b"refund"))),
        ]

    def stand_in(self) -> AbstractAsyncContextManager[Recorder]:
        @contextlib.asynccontextmanager
        async def server() -> AsyncIterator[Recorder]:
            with meta_stand_in() as meta:
                self.base_url = meta.base_url
                yield meta.recorder

        return server()

    def check_delivery(self, message: OutboundMessageRequested, delivered: Any) -> None:
        assert isinstance(delivered, MetaCall)
        assert delivered.path == f"/v21.0/{PAGE_ID}/messages"
        assert delivered.token == ACCESS_TOKEN
        assert delivered.body["recipient"] == {"id": message.recipient_address.split(":", 1)[1]}
        assert delivered.body["message"] == {"text": message.text}


class TestMetaContract(MetaContract):
    pass


# Replies to public post comments ---------------------------------------------------------


def instagram_comment(comment_id: str, user: str, media_id: str = "17895695668004550") -> Any:
    return {
        "object": "instagram",
        "entry": [
            {
                "id": IG_ID,
                "time": 1700000000,
                "changes": [
                    {
                        "field": "comments",
                        "value": {
                            "id": comment_id,
                            "from": {"id": user, "username": f"user{user}"},
                            "text": f"Comment by {user}",
                            "media": {"id": media_id, "media_product_type": "FEED"},
                        },
                    }
                ],
            }
        ],
    }


def comment_reply(address: str, comment_id: str | None) -> OutboundMessageRequested:
    return outbound_to(address).model_copy(update={"reply_to_provider_message_id": comment_id})


async def test_instagram_comments_become_one_conversation_keyed_by_the_media(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, account_id: uuid.UUID
) -> None:
    path = f"/v1/channels/meta/{account_id}"
    for comment_id, user in (("178001", "9753"), ("178002", "8642"), ("178003", IG_ID)):
        payload = instagram_comment(comment_id, user)
        assert (await post(ingest, path, raw(payload))).status_code == 200
    # Our own reply (the IG account's comment) is not a customer message.
    found = sorted(inbound(memory_bus), key=lambda m: m.provider_message_id)
    assert [(m.provider_message_id, m.sender.address) for m in found] == [
        ("178001", "instagram-comment:9753"),
        ("178002", "instagram-comment:8642"),
    ]
    assert {m.thread_key for m in found} == {"post:17895695668004550"}
    assert (found[0].text, found[0].sender.display_name) == ("Comment by 9753", "user9753")
    no_media = instagram_comment("178004", "1111")
    del no_media["entry"][0]["changes"][0]["value"]["media"]
    assert (await post(ingest, path, raw(no_media))).status_code == 422


async def test_comment_replies_reach_the_graph_stand_in_under_the_comment() -> None:
    ctx = ChannelContext(account=MetaContract().account(), attachments=MemoryAttachmentStore())
    with meta_stand_in() as meta:
        adapter = MetaAdapter(
            ChannelRuntime(services={MetaConfig: MetaConfig(graph_base_url=meta.base_url)})
        )
        facebook = await adapter.send(comment_reply("facebook:111", f"{PAGE_ID}_555_2"), ctx)
        instagram = await adapter.send(
            comment_reply("instagram-comment:9753", "17870913679156914"), ctx
        )
        calls = await meta.recorder.wait_for(2)
    assert [(c.path, c.token, c.body) for c in calls] == [
        (
            f"/v21.0/{PAGE_ID}_555_2/comments",
            ACCESS_TOKEN,
            {"message": "Thanks, we are on it."},
        ),
        ("/v21.0/17870913679156914/replies", ACCESS_TOKEN, {"message": "Thanks, we are on it."}),
    ]
    assert (facebook.provider_message_id, instagram.provider_message_id) == (
        calls[0].message_id,
        calls[1].message_id,
    )


@pytest.mark.parametrize(
    "comment_id", [None, "", "../me/feed", "123?fields=x"], ids=["none", "empty", "path", "query"]
)
async def test_a_comment_reply_without_a_valid_comment_is_refused_unsent(
    comment_id: str | None,
) -> None:
    ctx = ChannelContext(account=MetaContract().account(), attachments=MemoryAttachmentStore())
    with meta_stand_in() as meta:
        adapter = MetaAdapter(
            ChannelRuntime(services={MetaConfig: MetaConfig(graph_base_url=meta.base_url)})
        )
        with pytest.raises(PermanentDeliveryError, match="no customer comment"):
            await adapter.send(comment_reply("facebook:111", comment_id), ctx)
    assert meta.recorder.received == []


async def test_an_agent_reply_in_a_post_conversation_answers_the_latest_comment(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, database: Database, account_id: uuid.UUID
) -> None:
    path = f"/v1/channels/meta/{account_id}"
    for comment_id, user in (("555_1", "111"), ("555_2", "222")):
        assert (await post(ingest, path, raw(post_comment(comment_id, user)))).status_code == 200
        await InboundRouter(database, memory_bus).handle(memory_bus.records(Topic.INBOUND.value))
    async with database.sessions() as session:
        conversation = await session.scalar(select(Conversation))
        assert conversation is not None
        reply = await send_to_customer(
            session,
            conversation,
            "Thanks, we will check.",
            source="test",
            direction=MessageDirection.OUTBOUND,
        )
        await commit_and_publish(session, memory_bus, database.sessions)
    [request] = [
        e.data
        for e in (decode_event(r) for r in memory_bus.records(Topic.OUTBOUND.value))
        if isinstance(e.data, OutboundMessageRequested)
    ]
    assert request.reply_to_provider_message_id == "555_2"
    with meta_stand_in() as meta:
        config = MetaConfig(graph_base_url=meta.base_url)
        dispatcher = OutboundDispatcher(
            ChannelRegistry([MetaAdapter(ChannelRuntime(services={MetaConfig: config}))]),
            AccountDirectory(database),
            MemoryAttachmentStore(),
            ChannelLimits(),
            channels={Channel.SOCIAL},
            bus=memory_bus,
            consent=ConsentDirectory(database).refusal,
        )
        await dispatcher.handle(memory_bus.records(Topic.OUTBOUND.value))
        [sent] = await meta.recorder.wait_for(1)
    assert isinstance(sent, MetaCall)
    assert (sent.path, sent.token) == ("/v21.0/555_2/comments", ACCESS_TOKEN)
    assert sent.body == {"message": "Thanks, we will check."}
    await DeliveryRouter(database, memory_bus).handle(memory_bus.records(Topic.DELIVERY.value))
    async with database.sessions() as session:
        stored = await session.get(Message, reply.id)
    assert stored is not None
    assert (stored.delivery_status, stored.provider_message_id) == ("sent", sent.message_id)
