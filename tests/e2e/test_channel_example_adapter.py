"""A third-party adapter installed with pip is routed like a built-in one.

The example package ``examples/omniroute-signed-webhook`` is installed into the
environment (``make venv`` does ``pip install -e`` of it); ingest, a real process on
Kafka and PostgreSQL, finds it through the ``omniroute.channels`` entry point. A signed
request at its webhook URL becomes a conversation at the online agent (three
deliveries, one message; a forged signature 403 and nothing stored), and the agent's
reply reaches a local stand-in of the partner's inbox, signed with the shared key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import httpx
import pytest
from omniroute_signed_webhook.adapter import signature, signed_headers
from sqlalchemy import func, select

from devmode.seed import DEMO_AGENTS, seed_demo
from shared.channels.contract import Recorder
from shared.channels.registry import ENTRY_POINT_GROUP
from shared.db.models import ChannelAccount, Message
from shared.db.session import Database
from tests.e2e.processes import ServiceProcess
from tests.e2e.routing_client import agent_online

pytestmark = pytest.mark.e2e

SECRET = uuid.uuid4().hex
ADAPTER = "signedwebhook"


@dataclass(frozen=True)
class PartnerCall:
    path: str
    headers: dict[str, str]
    body: bytes


@contextlib.contextmanager
def partner_inbox() -> Iterator[tuple[str, Recorder]]:
    """The partner's inbox: a real HTTP server on loopback that records what it gets
    and answers with its own id, as the adapter's outbound contract allows."""
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            recorder.record(PartnerCall(self.path, headers, body))
            answer = json.dumps({"id": f"partner-{uuid.uuid4().hex}"}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", recorder
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[Database]:
    db = Database(postgres_url)
    yield db
    await db.dispose()


def partner_message(message_id: str, sender: str, text: str) -> bytes:
    return json.dumps(
        {"id": message_id, "from": sender, "text": text, "thread": f"order-of-{sender}"}
    ).encode()


async def partner_posts(ingest: httpx.AsyncClient, path: str, body: bytes) -> None:
    response = await ingest.post(path, content=body, headers=signed_headers(SECRET, body))
    assert response.status_code == 200, response.text


def created(text: str) -> Any:
    return lambda f: f["type"] == "message.created" and f["data"].get("text") == text


async def received_by_partner(inbox: Recorder, text: str) -> PartnerCall:
    deadline = asyncio.get_running_loop().time() + 30
    while asyncio.get_running_loop().time() < deadline:
        for call in inbox.received:
            if isinstance(call, PartnerCall) and json.loads(call.body).get("text") == text:
                return call
        await asyncio.sleep(0.05)
    raise AssertionError(f"the partner's inbox never received {text!r}")


def test_the_example_package_is_installed_as_an_entry_point() -> None:
    installed = {p.name: p.value for p in entry_points(group=ENTRY_POINT_GROUP)}
    assert installed.get(ADAPTER) == "omniroute_signed_webhook.adapter:SignedWebhookAdapter", (
        "run `make venv` (pip install -e examples/omniroute-signed-webhook)"
    )


async def test_a_pip_installed_adapter_is_routed_like_a_built_in_one(
    stack: dict[str, ServiceProcess], database: Database, tmp_path: Path
) -> None:
    workspace = f"partner-{uuid.uuid4().hex[:8]}"
    workspace_id = await seed_demo(database, slug=workspace)
    secret_file = tmp_path / "partner-key"
    secret_file.write_text(SECRET)
    sender = f"user-{uuid.uuid4().hex[:6]}"
    api_url = stack["agent_api"].base_url
    first_id, forged_id = f"msg-{uuid.uuid4().hex}", f"msg-{uuid.uuid4().hex}"
    try:
        with partner_inbox() as (inbox_url, inbox):
            account_id = uuid.uuid4()
            async with database.sessions() as session:
                session.add(
                    ChannelAccount(
                        id=account_id,
                        workspace_id=workspace_id,
                        channel="social",
                        adapter=ADAPTER,
                        address=f"partner-{account_id}",
                        display_name="Partner inbox",
                        secret_ref=f"file:{secret_file}",
                        settings={"outbound_url": f"{inbox_url}/inbox"},
                    )
                )
                await session.commit()
            webhook = f"/v1/channels/{ADAPTER}/{account_id}"
            async with (
                httpx.AsyncClient(base_url=api_url, timeout=30) as api,
                httpx.AsyncClient(base_url=stack["ingest"].base_url, timeout=30) as ingest,
                agent_online(api, api_url, workspace, DEMO_AGENTS[0].email) as agent,
            ):
                # 1. Signed, three times; a forged one; then a later one of the thread.
                first = partner_message(first_id, sender, "My parcel is late.")
                for _ in range(3):
                    await partner_posts(ingest, webhook, first)
                forged_body = partner_message(forged_id, sender, "Refund to this account")
                forged = await ingest.post(
                    webhook, content=forged_body, headers=signed_headers("wrong", forged_body)
                )
                assert forged.status_code == 403, forged.text
                assigned = await agent.assigned()
                conversation_id = assigned["data"]["conversation_id"]
                message = await agent.socket.wait_for(
                    created("My parcel is late."), what="the partner's message"
                )
                assert message["data"]["conversation_id"] == conversation_id
                assert message["data"]["channel"] == "social"
                later = partner_message(f"msg-{uuid.uuid4().hex}", sender, "Order 1234.")
                await partner_posts(ingest, webhook, later)
                following = await agent.socket.wait_for(created("Order 1234."), what="2nd")
                assert following["data"]["conversation_id"] == conversation_id
                frames = agent.socket.frames
                assert len([f for f in frames if created("My parcel is late.")(f)]) == 1
                assert not [f for f in frames if created("Refund to this account")(f)]

                # 2. The reply reaches the partner's inbox, signed with the shared key.
                reply_text = f"It arrives tomorrow. {uuid.uuid4().hex[:6]}"
                replied = await api.post(
                    f"/v1/conversations/{conversation_id}/replies",
                    json={"text": reply_text},
                    headers=agent.auth,
                )
                assert replied.status_code == 201, replied.text
                reply_id = replied.json()["id"]
                call = await received_by_partner(inbox, reply_text)
                assert call.path == "/inbox"
                stamp = call.headers["x-webhook-timestamp"]
                assert call.headers["x-webhook-signature"] == signature(SECRET, stamp, call.body)
                assert json.loads(call.body) == {
                    "id": reply_id,
                    "to": sender,
                    "text": reply_text,
                    "conversation_id": conversation_id,
                }
                update = await agent.socket.wait_for(
                    lambda f: (
                        f["type"] == "message.delivery_updated"
                        and f["data"]["message_id"] == reply_id
                        and f["data"]["delivery_status"] == "sent"
                    ),
                    what="message.delivery_updated (sent)",
                )
                assert str(update["data"]["provider_message_id"]).startswith("partner-")

        async with database.sessions() as session:
            copies = {
                pid: await session.scalar(
                    select(func.count())
                    .select_from(Message)
                    .where(Message.workspace_id == workspace_id, Message.provider_message_id == pid)
                )
                for pid in (first_id, forged_id)
            }
        assert copies == {first_id: 1, forged_id: 0}
    except Exception:
        for service in stack.values():
            print(f"--- {service.name} ---\n{service.log_tail()}")  # noqa: T201
        raise
