"""Email end to end on real Kafka and PostgreSQL, with real SMTP both ways.

A customer's SMTP session to ingest's listener becomes a conversation at the online
agent; the agent's reply reaches a stand-in SMTP relay threaded to the customer's
email; the customer's reply to it lands in the same conversation, and a new subject
from the same sender opens another one.
"""

from __future__ import annotations

import uuid
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import make_msgid

import aiosmtplib
import httpx
import pytest
from sqlalchemy import select
from websockets.asyncio.client import ClientConnection, connect

from devmode.seed import demo_support_address, seed_demo
from shared.channels.contract import ReceivedEmail
from shared.db.models import Message
from shared.db.session import Database
from tests.e2e.chat_flow import agent_token, next_frame
from tests.e2e.conftest import MailServers
from tests.e2e.processes import ServiceProcess

pytestmark = pytest.mark.e2e

CUSTOMER = "grace@example.com"


def customer_email(
    to: str,
    subject: str,
    text: str,
    *,
    in_reply_to: str | None = None,
    references: str | None = None,
) -> EmailMessage:
    mail = EmailMessage(policy=SMTP_POLICY)
    mail["From"] = f"Grace Hopper <{CUSTOMER}>"
    mail["To"] = to
    mail["Subject"] = subject
    mail["Message-ID"] = make_msgid(domain="example.com")
    if in_reply_to:
        mail["In-Reply-To"] = in_reply_to
    if references:
        mail["References"] = references
    mail.set_content(text)
    return mail


async def deliver(mail: EmailMessage, port: int) -> None:
    """A real SMTP session to ingest's listener; raises unless it answered 250."""
    await aiosmtplib.send(mail, hostname="127.0.0.1", port=port, start_tls=False, timeout=15)


async def next_message(agent_ws: ClientConnection, text: str) -> dict[str, object]:
    while True:
        frame = await next_frame(agent_ws, frame_type="message.created")
        data = frame["data"]
        if isinstance(data, dict) and data.get("text") == text:
            return data


async def test_an_email_conversation_round_trip_over_smtp(
    stack: dict[str, ServiceProcess], postgres_url: str, mail_servers: MailServers
) -> None:
    database = Database(postgres_url)
    workspace = f"mail-{uuid.uuid4().hex[:8]}"
    workspace_id = await seed_demo(database, slug=workspace)
    support = demo_support_address(workspace)
    api_url = stack["agent_api"].base_url
    ws_url = api_url.replace("http://", "ws://")
    try:
        async with httpx.AsyncClient(base_url=api_url, timeout=30) as api:
            token = await agent_token(api, workspace)
            auth = {"authorization": f"Bearer {token}"}
            online = await api.put("/v1/me/status", json={"status": "online"}, headers=auth)
            online.raise_for_status()
            async with connect(f"{ws_url}/v1/ws", subprotocols=["bearer", token]) as agent_ws:  # type: ignore[list-item]
                await next_frame(agent_ws, frame_type="ready")

                # 1. A real SMTP session becomes a conversation at the online agent.
                first = customer_email(support, "Order 1234 is late", "Where is my order?")
                await deliver(first, mail_servers.listen_port)
                assigned = await next_frame(agent_ws, frame_type="conversation.assigned")
                conversation_id = assigned["data"]["conversation_id"]
                created = await next_message(agent_ws, "Where is my order?")
                assert created["conversation_id"] == conversation_id

                # 2. The agent's reply reaches the relay, threaded to the customer's email.
                reply_text = f"It ships today. {uuid.uuid4().hex[:6]}"
                replied = await api.post(
                    f"/v1/conversations/{conversation_id}/replies",
                    json={"text": reply_text},
                    headers=auth,
                )
                assert replied.status_code == 201, replied.text
                relayed = await relayed_to(mail_servers, reply_text)
                ours = relayed.message
                assert relayed.rcpt_tos == (CUSTOMER,)
                assert ours["From"].addresses[0].addr_spec == support
                assert ours["To"] == CUSTOMER
                assert ours["Subject"] == "Re: Order 1234 is late"
                assert ours["In-Reply-To"] == first["Message-ID"]
                assert ours["References"] == first["Message-ID"]
                our_id = str(ours["Message-ID"])
                assert our_id.startswith("<")
                assert our_id.endswith(f"@{support.split('@')[1]}>")

                # 3. The customer's reply to it lands in the same conversation.
                answer = customer_email(
                    support,
                    "Re: Order 1234 is late",
                    "Great, thanks!",
                    in_reply_to=our_id,
                    references=f"{first['Message-ID']} {our_id}",
                )
                await deliver(answer, mail_servers.listen_port)
                threaded = await next_message(agent_ws, "Great, thanks!")
                assert threaded["conversation_id"] == conversation_id

                # 4. A new subject from the same sender is a new conversation.
                await deliver(
                    customer_email(support, "Invoice question", "Can I get an invoice?"),
                    mail_servers.listen_port,
                )
                separate = await next_message(agent_ws, "Can I get an invoice?")
                assert separate["conversation_id"] != conversation_id

        async with database.sessions() as session:
            rules = {
                m.text: (m.threading or {}).get("rule")
                for m in await session.scalars(
                    select(Message).where(
                        Message.workspace_id == workspace_id, Message.direction == "inbound"
                    )
                )
            }
        assert rules == {
            "Where is my order?": "new_conversation",
            "Great, thanks!": "in_reply_to",
            "Can I get an invoice?": "new_conversation",
        }
    except Exception:
        for service in stack.values():
            print(f"--- {service.name} ---\n{service.log_tail()}")  # noqa: T201
        raise
    finally:
        await database.dispose()


async def relayed_to(mail_servers: MailServers, text: str) -> ReceivedEmail:
    """The email the stand-in relay received with ``text`` in its body."""
    received = await mail_servers.relayed.wait_for(1)
    for _ in range(150):
        for item in received:
            if isinstance(item, ReceivedEmail) and text in item.message.get_content():
                return item
        received = await mail_servers.relayed.wait_for(len(received) + 1, within_seconds=0.2)
    raise AssertionError(f"the relay never received {text!r}")
