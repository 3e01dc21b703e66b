"""SMS through Twilio end to end on real Kafka and PostgreSQL, services as processes.

A Twilio-signed inbound SMS (signed against the public URL ingest is configured with,
as Twilio behind a proxy would) becomes a conversation at the online agent; delivered
three times it is still one message. The agent's reply reaches a local stand-in of
Twilio's Messages API with the account's basic auth and To/From/Body; a signed status
callback marks it delivered and the agent's WebSocket is told.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import func, select

from devmode.seed import DEMO_AGENTS, seed_demo
from services.ingest.adapters.sms.twilio import signed_request_headers
from shared.db.models import ChannelAccount, Message
from shared.db.session import Database
from tests.e2e.conftest import PUBLIC_BASE_URL
from tests.e2e.processes import ServiceProcess
from tests.e2e.routing_client import LiveSocket, agent_online
from tests.twilio_stand_in import TwilioCall, TwilioStandIn

pytestmark = pytest.mark.e2e

ACCOUNT_SID = "AC" + uuid.uuid4().hex
AUTH_TOKEN = uuid.uuid4().hex


def phone_number() -> str:
    """A fresh E.164 number (channel addresses are unique across workspaces)."""
    return "+1555" + "".join(random.choices("0123456789", k=7))  # noqa: S311


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """The Twilio account's ``AccountSid:AuthToken``, read by ingest (``file:`` ref)."""
    path = tmp_path / "twilio-secret"
    path.write_text(f"{ACCOUNT_SID}:{AUTH_TOKEN}\n")
    return path


async def seed_sms_account(
    database: Database, workspace_id: uuid.UUID, number: str, secret_file: Path
) -> uuid.UUID:
    """The workspace's Twilio number, its credentials in ``secret_file``."""
    account_id = uuid.uuid4()
    async with database.sessions() as session:
        session.add(
            ChannelAccount(
                id=account_id,
                workspace_id=workspace_id,
                channel="sms",
                adapter="twilio",
                address=number,
                display_name="Demo SMS",
                secret_ref=f"file:{secret_file}",
            )
        )
        await session.commit()
    return account_id


async def post_signed(ingest: httpx.AsyncClient, path: str, fields: dict[str, str]) -> None:
    """POST ``fields`` to ingest at ``path``, signed as Twilio signs the public URL."""
    headers = signed_request_headers(AUTH_TOKEN, PUBLIC_BASE_URL + path, fields)
    response = await ingest.post(path, data=fields, headers=headers)
    assert response.status_code == 200, response.text
    assert b"<Response" in response.content  # TwiML, as Twilio expects


def inbound_sms(sid: str, customer: str, number: str, body: str) -> dict[str, str]:
    return {
        "ToCountry": "US",
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "SmsSid": sid,
        "SmsStatus": "received",
        "Body": body,
        "To": number,
        "NumSegments": "1",
        "MessageSid": sid,
        "AccountSid": ACCOUNT_SID,
        "From": customer,
        "ApiVersion": "2010-04-01",
    }


def created(text: str) -> Any:
    return lambda f: f["type"] == "message.created" and f["data"].get("text") == text


async def sent_to_twilio(twilio: TwilioStandIn, text: str) -> TwilioCall:
    for _ in range(600):  # the recorder is shared: poll what it holds, not its count
        for call in twilio.recorder.received:
            if isinstance(call, TwilioCall) and call.fields.get("Body") == text:
                return call
        await asyncio.sleep(0.05)
    raise AssertionError(f"the Twilio stand-in never received {text!r}")


async def test_an_sms_conversation_round_trip_through_twilio(
    stack: dict[str, ServiceProcess], postgres_url: str, twilio: TwilioStandIn, secret_file: Path
) -> None:
    database = Database(postgres_url)
    workspace = f"sms-{uuid.uuid4().hex[:8]}"
    workspace_id = await seed_demo(database, slug=workspace)
    number, customer = phone_number(), phone_number()
    account_id = await seed_sms_account(database, workspace_id, number, secret_file)
    api_url = stack["agent_api"].base_url
    inbound_path = f"/v1/channels/twilio/{account_id}"
    try:
        async with (
            httpx.AsyncClient(base_url=api_url, timeout=30) as api,
            httpx.AsyncClient(base_url=stack["ingest"].base_url, timeout=30) as ingest,
            agent_online(api, api_url, workspace, DEMO_AGENTS[0].email) as agent,
        ):
            socket: LiveSocket = agent.socket

            # 1. A signed inbound SMS, delivered three times, is one conversation at the
            #    online agent with one message.
            first_sid = "SM" + uuid.uuid4().hex
            first = inbound_sms(first_sid, customer, number, "Where is my order?")
            for _ in range(3):
                await post_signed(ingest, inbound_path, first)
            assigned = await agent.assigned()
            conversation_id = assigned["data"]["conversation_id"]
            message = await socket.wait_for(created("Where is my order?"), what="the SMS")
            assert message["data"]["conversation_id"] == conversation_id
            assert message["data"]["channel"] == "sms"

            # A later SMS of the same customer: once it is shown, the redeliveries before
            # it (same thread, same partition) have been handled too.
            later = inbound_sms("SM" + uuid.uuid4().hex, customer, number, "Order 1234.")
            await post_signed(ingest, inbound_path, later)
            following = await socket.wait_for(created("Order 1234."), what="the 2nd SMS")
            assert following["data"]["conversation_id"] == conversation_id
            assert len([f for f in socket.frames if created("Where is my order?")(f)]) == 1

            # 2. The agent's reply reaches Twilio's Messages API from our number.
            reply_text = f"It ships today. {uuid.uuid4().hex[:6]}"
            replied = await api.post(
                f"/v1/conversations/{conversation_id}/replies",
                json={"text": reply_text},
                headers=agent.auth,
            )
            assert replied.status_code == 201, replied.text
            reply_id = replied.json()["id"]
            call = await sent_to_twilio(twilio, reply_text)
            assert call.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
            assert (call.username, call.password) == (ACCOUNT_SID, AUTH_TOKEN)
            assert call.fields["To"] == customer
            assert call.fields["From"] == number
            assert call.fields["Body"] == reply_text
            callback = urlsplit(call.fields["StatusCallback"])
            assert f"{callback.scheme}://{callback.netloc}" == PUBLIC_BASE_URL
            assert callback.query == f"message_id={reply_id}"

            # 3. Twilio's signed status callback marks it delivered; the agent is told.
            status_path = f"{callback.path}?{callback.query}"
            await post_signed(
                ingest,
                status_path,
                {
                    "SmsSid": call.sid,
                    "SmsStatus": "delivered",
                    "MessageStatus": "delivered",
                    "To": customer,
                    "MessageSid": call.sid,
                    "AccountSid": ACCOUNT_SID,
                    "From": number,
                    "ApiVersion": "2010-04-01",
                },
            )
            update = await socket.wait_for(
                lambda f: (
                    f["type"] == "message.delivery_updated"
                    and f["data"]["message_id"] == reply_id
                    and f["data"]["delivery_status"] == "delivered"
                ),
                what="message.delivery_updated (delivered)",
            )
            assert update["data"]["conversation_id"] == conversation_id
            assert update["data"]["provider_message_id"] == call.sid

        async with database.sessions() as session:
            copies = await session.scalar(
                select(func.count())
                .select_from(Message)
                .where(
                    Message.workspace_id == workspace_id, Message.provider_message_id == first_sid
                )
            )
            reply = await session.get(Message, uuid.UUID(reply_id))
        assert copies == 1
        assert reply is not None
        assert (reply.delivery_status, reply.provider_message_id) == ("delivered", call.sid)
    except Exception:
        for service in stack.values():
            print(f"--- {service.name} ---\n{service.log_tail()}")  # noqa: T201
        raise
    finally:
        await database.dispose()
