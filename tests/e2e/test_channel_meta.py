"""Meta (Messenger, WhatsApp, page comments) end to end on real Kafka and PostgreSQL,
services as processes.

A Meta-signed webhook (``X-Hub-Signature-256`` over the raw body) becomes a
conversation at the online agent; delivered three times it is still one message, and a
webhook with a bad or missing signature is refused (403/401) with nothing published.
The agent's reply reaches a local stand-in of the Graph API (Messenger Send API, WhatsApp
Cloud API) at the page's or phone number's path, with the account's access token and
the recipient's id; a WhatsApp status webhook marks it delivered. In a post's
conversation the reply is posted under the latest comment.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from devmode.seed import DEMO_AGENTS, seed_demo
from services.ingest.adapters.social.meta import signed_request_headers
from shared.db.models import ChannelAccount, Message
from shared.db.session import Database
from tests.e2e.processes import ServiceProcess
from tests.e2e.routing_client import AgentClient, agent_online
from tests.meta_stand_in import MetaCall, MetaStandIn

pytestmark = pytest.mark.e2e

APP_SECRET = uuid.uuid4().hex
ACCESS_TOKEN = "EAAG" + uuid.uuid4().hex
API_VERSION = "v21.0"  # the default of OMNI_META_GRAPH_API_VERSION


def graph_id() -> str:
    """A fresh numeric Graph id (channel addresses are unique across workspaces)."""
    return "".join(random.choices("0123456789", k=15))  # noqa: S311


@dataclass(frozen=True)
class MetaAccount:
    workspace: str
    workspace_id: uuid.UUID
    account_id: uuid.UUID
    address: str  # the page id, or the WhatsApp phone number id

    @property
    def webhook(self) -> str:
        return f"/v1/channels/meta/{self.account_id}"


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """The Meta app's ``app secret:access token``, read by ingest (``file:`` ref)."""
    path = tmp_path / "meta-secret"
    path.write_text(f"{APP_SECRET}:{ACCESS_TOKEN}\n")
    return path


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[Database]:
    db = Database(postgres_url)
    yield db
    await db.dispose()


async def seed_meta_account(
    database: Database, prefix: str, secret_file: Path, settings: dict[str, str]
) -> MetaAccount:
    workspace = f"{prefix}-{uuid.uuid4().hex[:8]}"
    workspace_id = await seed_demo(database, slug=workspace)
    account_id = uuid.uuid4()
    address = settings.get("whatsapp_phone_number_id") or settings["page_id"]
    async with database.sessions() as session:
        session.add(
            ChannelAccount(
                id=account_id,
                workspace_id=workspace_id,
                channel="social",
                adapter="meta",
                address=address,
                display_name="Demo Meta",
                secret_ref=f"file:{secret_file}",
                settings={"verify_token": uuid.uuid4().hex, **settings},
            )
        )
        await session.commit()
    return MetaAccount(workspace, workspace_id, account_id, address)


def messenger_dm(page_id: str, psid: str, mid: str, text: str) -> dict[str, Any]:
    return {
        "object": "page",
        "entry": [
            {
                "id": page_id,
                "time": 1732290000000,
                "messaging": [
                    {
                        "sender": {"id": psid},
                        "recipient": {"id": page_id},
                        "timestamp": 1732290000000,
                        "message": {"mid": mid, "text": text},
                    }
                ],
            }
        ],
    }


def whatsapp_change(phone_number_id: str, value: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": graph_id(),
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550001111",
                                "phone_number_id": phone_number_id,
                            },
                            **value,
                        },
                    }
                ],
            }
        ],
    }


def whatsapp_text(phone_number_id: str, wa_id: str, wamid: str, text: str) -> dict[str, Any]:
    return whatsapp_change(
        phone_number_id,
        {
            "contacts": [{"profile": {"name": "Grace"}, "wa_id": wa_id}],
            "messages": [
                {
                    "from": wa_id,
                    "id": wamid,
                    "timestamp": "1732290000",
                    "type": "text",
                    "text": {"body": text},
                }
            ],
        },
    )


def raw(payload: dict[str, Any]) -> bytes:
    # Meta's own spacing: the signature is over these exact bytes.
    return json.dumps(payload, indent=1, ensure_ascii=False).encode()


async def post_signed(ingest: httpx.AsyncClient, path: str, payload: dict[str, Any]) -> None:
    body = raw(payload)
    response = await ingest.post(
        path, content=body, headers=signed_request_headers(APP_SECRET, body)
    )
    assert response.status_code == 200, response.text


async def refused_unsigned_and_forged(
    ingest: httpx.AsyncClient, path: str, payload: dict[str, Any]
) -> None:
    """No signature → 401; a signature by another secret → 403 (both problem+json)."""
    body = raw(payload)
    missing = await ingest.post(path, content=body, headers={"Content-Type": "application/json"})
    forged = await ingest.post(
        path, content=body, headers=signed_request_headers("not-the-app-secret", body)
    )
    assert missing.status_code == 401, missing.text
    assert forged.status_code == 403, forged.text
    assert forged.headers["content-type"].startswith("application/problem+json")


def created(text: str) -> Any:
    return lambda f: f["type"] == "message.created" and f["data"].get("text") == text


def sent_texts(body: dict[str, Any]) -> set[Any]:
    """The text a Graph call carries: Send API, WhatsApp, or a comment reply."""
    message, whatsapp = body.get("message"), body.get("text")
    if isinstance(message, str):
        return {message}
    return {
        message.get("text") if isinstance(message, dict) else None,
        whatsapp.get("body") if isinstance(whatsapp, dict) else None,
    }


async def sent_to_meta(meta: MetaStandIn, text: str, *, within_seconds: float = 30) -> MetaCall:
    """The stand-in's call that carried ``text`` (other tests' calls are skipped)."""
    deadline = asyncio.get_running_loop().time() + within_seconds
    while asyncio.get_running_loop().time() < deadline:
        for call in meta.recorder.received:
            if isinstance(call, MetaCall) and text in sent_texts(call.body):
                return call
        await asyncio.sleep(0.05)
    raise AssertionError(f"the Meta stand-in never received {text!r}")


async def reply(api: httpx.AsyncClient, agent: AgentClient, conversation_id: str, text: str) -> str:
    replied = await api.post(
        f"/v1/conversations/{conversation_id}/replies", json={"text": text}, headers=agent.auth
    )
    assert replied.status_code == 201, replied.text
    reply_id: str = replied.json()["id"]
    return reply_id


async def copies_of(database: Database, workspace_id: uuid.UUID, provider_id: str) -> int:
    async with database.sessions() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(Message)
            .where(Message.workspace_id == workspace_id, Message.provider_message_id == provider_id)
        )
    return int(count or 0)


async def inbound_round(
    ingest: httpx.AsyncClient,
    agent: AgentClient,
    account: MetaAccount,
    *,
    first: tuple[str, dict[str, Any]],
    forged: tuple[str, dict[str, Any]],
    later: tuple[str, dict[str, Any]],
) -> tuple[str, dict[str, Any]]:
    """``first`` three times, ``forged`` refused, then ``later`` (same sender, so same
    partition): once ``later`` is shown, everything sent before it has been handled.
    Returns the conversation id and the first message's frame."""
    socket = agent.socket
    first_text, first_payload = first
    forged_text, forged_payload = forged
    later_text, later_payload = later
    for _ in range(3):
        await post_signed(ingest, account.webhook, first_payload)
    await refused_unsigned_and_forged(ingest, account.webhook, forged_payload)
    assigned = await agent.assigned()
    conversation_id: str = assigned["data"]["conversation_id"]
    message = await socket.wait_for(created(first_text), what="the first message")
    assert message["data"]["conversation_id"] == conversation_id
    assert message["data"]["channel"] == "social"
    await post_signed(ingest, account.webhook, later_payload)
    following = await socket.wait_for(created(later_text), what="the later message")
    assert following["data"]["conversation_id"] == conversation_id
    assert len([f for f in socket.frames if created(first_text)(f)]) == 1
    assert not [f for f in socket.frames if created(forged_text)(f)]
    return conversation_id, message


async def test_a_messenger_conversation_round_trip_through_the_graph_api(
    stack: dict[str, ServiceProcess], database: Database, meta: MetaStandIn, secret_file: Path
) -> None:
    page_id, psid = graph_id(), graph_id()
    account = await seed_meta_account(database, "messenger", secret_file, {"page_id": page_id})
    api_url = stack["agent_api"].base_url
    first_mid, forged_mid = f"m_{uuid.uuid4().hex}", f"m_{uuid.uuid4().hex}"
    try:
        async with (
            httpx.AsyncClient(base_url=api_url, timeout=30) as api,
            httpx.AsyncClient(base_url=stack["ingest"].base_url, timeout=30) as ingest,
            agent_online(api, api_url, account.workspace, DEMO_AGENTS[0].email) as agent,
        ):
            # 1. Signed DMs: the first three times, a forged one, a later one.
            conversation_id, _ = await inbound_round(
                ingest,
                agent,
                account,
                first=(
                    "Where is my order?",
                    messenger_dm(page_id, psid, first_mid, "Where is my order?"),
                ),
                forged=("Refund me", messenger_dm(page_id, psid, forged_mid, "Refund me")),
                later=(
                    "Order 1234.",
                    messenger_dm(page_id, psid, f"m_{uuid.uuid4().hex}", "Order 1234."),
                ),
            )
            messages = await api.get(
                f"/v1/conversations/{conversation_id}/messages", headers=agent.auth
            )
            assert messages.status_code == 200, messages.text
            assert [m["text"] for m in messages.json()] == ["Where is my order?", "Order 1234."]

            # 2. The agent's reply reaches the Send API from the page, with its token.
            reply_text = f"It ships today. {uuid.uuid4().hex[:6]}"
            reply_id = await reply(api, agent, conversation_id, reply_text)
            call = await sent_to_meta(meta, reply_text)
            assert call.path == f"/{API_VERSION}/{page_id}/messages"
            assert call.token == ACCESS_TOKEN
            assert call.body == {
                "recipient": {"id": psid},
                "messaging_type": "RESPONSE",
                "message": {"text": reply_text},
            }
            update = await agent.socket.wait_for(
                lambda f: (
                    f["type"] == "message.delivery_updated"
                    and f["data"]["message_id"] == reply_id
                    and f["data"]["delivery_status"] == "sent"
                ),
                what="message.delivery_updated (sent)",
            )
            assert update["data"]["provider_message_id"] == call.message_id

        assert await copies_of(database, account.workspace_id, first_mid) == 1
        assert await copies_of(database, account.workspace_id, forged_mid) == 0
        async with database.sessions() as session:
            sent = await session.get(Message, uuid.UUID(reply_id))
        assert sent is not None
        assert (sent.delivery_status, sent.provider_message_id) == ("sent", call.message_id)
    except Exception:
        for service in stack.values():
            print(f"--- {service.name} ---\n{service.log_tail()}")  # noqa: T201
        raise


async def test_a_whatsapp_conversation_round_trip_through_the_cloud_api(
    stack: dict[str, ServiceProcess], database: Database, meta: MetaStandIn, secret_file: Path
) -> None:
    phone_number_id = graph_id()
    wa_id = "1555" + "".join(random.choices("0123456789", k=7))  # noqa: S311
    account = await seed_meta_account(
        database, "whatsapp", secret_file, {"whatsapp_phone_number_id": phone_number_id}
    )
    api_url = stack["agent_api"].base_url
    first_wamid, forged_wamid = f"wamid.{uuid.uuid4().hex}", f"wamid.{uuid.uuid4().hex}"
    try:
        async with (
            httpx.AsyncClient(base_url=api_url, timeout=30) as api,
            httpx.AsyncClient(base_url=stack["ingest"].base_url, timeout=30) as ingest,
            agent_online(api, api_url, account.workspace, DEMO_AGENTS[0].email) as agent,
        ):
            # 1. Signed messages: the first three times, a forged one, a later one.
            conversation_id, first = await inbound_round(
                ingest,
                agent,
                account,
                first=(
                    "Hello from WhatsApp",
                    whatsapp_text(phone_number_id, wa_id, first_wamid, "Hello from WhatsApp"),
                ),
                forged=(
                    "Send me the code",
                    whatsapp_text(phone_number_id, wa_id, forged_wamid, "Send me the code"),
                ),
                later=(
                    "Are you there?",
                    whatsapp_text(
                        phone_number_id, wa_id, f"wamid.{uuid.uuid4().hex}", "Are you there?"
                    ),
                ),
            )
            conversation = await api.get(f"/v1/conversations/{conversation_id}", headers=agent.auth)
            assert conversation.status_code == 200, conversation.text
            assert conversation.json()["channel"] == "social"

            # 2. The reply reaches the Cloud API from the phone number, with the token.
            reply_text = f"Yes, how can I help? {uuid.uuid4().hex[:6]}"
            reply_id = await reply(api, agent, conversation_id, reply_text)
            call = await sent_to_meta(meta, reply_text)
            assert call.path == f"/{API_VERSION}/{phone_number_id}/messages"
            assert call.token == ACCESS_TOKEN
            assert call.body == {
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": wa_id,
                "type": "text",
                "text": {"preview_url": False, "body": reply_text},
            }
            # The send is recorded (the wamid stored) before WhatsApp reports on it.
            await agent.socket.wait_for(
                lambda f: (
                    f["type"] == "message.delivery_updated"
                    and f["data"]["message_id"] == reply_id
                    and f["data"]["delivery_status"] == "sent"
                ),
                what="message.delivery_updated (sent)",
            )

            # 3. WhatsApp's signed status webhook marks it delivered; the agent is told.
            statuses = whatsapp_change(
                phone_number_id,
                {
                    "statuses": [
                        {
                            "id": call.message_id,
                            "status": "delivered",
                            "timestamp": "1732290100",
                            "recipient_id": wa_id,
                        }
                    ]
                },
            )
            await post_signed(ingest, account.webhook, statuses)
            update = await agent.socket.wait_for(
                lambda f: (
                    f["type"] == "message.delivery_updated"
                    and f["data"]["message_id"] == reply_id
                    and f["data"]["delivery_status"] == "delivered"
                ),
                what="message.delivery_updated (delivered)",
            )
            assert update["data"]["conversation_id"] == conversation_id
            assert update["data"]["provider_message_id"] == call.message_id
            assert first["data"]["conversation_id"] == conversation_id

        assert await copies_of(database, account.workspace_id, first_wamid) == 1
        assert await copies_of(database, account.workspace_id, forged_wamid) == 0
        async with database.sessions() as session:
            sent = await session.get(Message, uuid.UUID(reply_id))
        assert sent is not None
        assert (sent.delivery_status, sent.provider_message_id) == ("delivered", call.message_id)
    except Exception:
        for service in stack.values():
            print(f"--- {service.name} ---\n{service.log_tail()}")  # noqa: T201
        raise


def page_comment(page_id: str, post_id: str, comment_id: str, user: str, text: str) -> Any:
    return {
        "object": "page",
        "entry": [
            {
                "id": page_id,
                "time": 1732290000,
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
                            "message": text,
                            "created_time": 1732290000,
                        },
                    }
                ],
            }
        ],
    }


async def test_a_reply_in_a_post_conversation_is_posted_under_the_latest_comment(
    stack: dict[str, ServiceProcess], database: Database, meta: MetaStandIn, secret_file: Path
) -> None:
    page_id = graph_id()
    post_id = f"{page_id}_{graph_id()}"
    account = await seed_meta_account(database, "comments", secret_file, {"page_id": page_id})
    api_url = stack["agent_api"].base_url
    first_comment, second_comment = f"{graph_id()}_1", f"{graph_id()}_2"
    try:
        async with (
            httpx.AsyncClient(base_url=api_url, timeout=30) as api,
            httpx.AsyncClient(base_url=stack["ingest"].base_url, timeout=30) as ingest,
            agent_online(api, api_url, account.workspace, DEMO_AGENTS[0].email) as agent,
        ):
            # Two customers comment on one post: one conversation with both comments.
            await post_signed(
                ingest,
                account.webhook,
                page_comment(page_id, post_id, first_comment, graph_id(), "Is this in blue?"),
            )
            assigned = await agent.assigned()
            conversation_id = assigned["data"]["conversation_id"]
            await agent.socket.wait_for(created("Is this in blue?"), what="the first comment")
            await post_signed(
                ingest,
                account.webhook,
                page_comment(page_id, post_id, second_comment, graph_id(), "And in red?"),
            )
            second = await agent.socket.wait_for(created("And in red?"), what="2nd comment")
            assert second["data"]["conversation_id"] == conversation_id

            reply_text = f"Both colours ship next week. {uuid.uuid4().hex[:6]}"
            reply_id = await reply(api, agent, conversation_id, reply_text)
            call = await sent_to_meta(meta, reply_text)
            assert call.path == f"/{API_VERSION}/{second_comment}/comments"
            assert call.token == ACCESS_TOKEN
            assert call.body == {"message": reply_text}
            update = await agent.socket.wait_for(
                lambda f: (
                    f["type"] == "message.delivery_updated"
                    and f["data"]["message_id"] == reply_id
                    and f["data"]["delivery_status"] == "sent"
                ),
                what="message.delivery_updated (sent)",
            )
            assert update["data"]["provider_message_id"] == call.message_id
    except Exception:
        for service in stack.values():
            print(f"--- {service.name} ---\n{service.log_tail()}")  # noqa: T201
        raise
