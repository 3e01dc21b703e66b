"""Twilio MMS media end to end on real Kafka and PostgreSQL, services as processes.

The webhook is answered with the media still at Twilio; ingest's media fetcher then
downloads the picture from the Twilio stand-in with the account's credentials into the
attachment store, and the router puts its real size and type on the stored message,
which the agent API shows.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from devmode.seed import DEMO_AGENTS, seed_demo
from shared.db.models import Message
from shared.db.session import Database
from tests.e2e.processes import ServiceProcess
from tests.e2e.routing_client import agent_online
from tests.e2e.test_channel_sms import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    created,
    inbound_sms,
    phone_number,
    post_signed,
    seed_sms_account,
)
from tests.twilio_stand_in import TwilioStandIn

pytestmark = pytest.mark.e2e

PICTURE = b"\xff\xd8\xff\xe0" + uuid.uuid4().bytes * 64


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """The Twilio account's ``AccountSid:AuthToken``, read by ingest (``file:`` ref)."""
    path = tmp_path / "twilio-secret"
    path.write_text(f"{ACCOUNT_SID}:{AUTH_TOKEN}\n")
    return path


async def stored_attachments(database: Database, sid: str) -> list[dict[str, object]]:
    """The message's attachments once the fetched media were applied (bounded wait)."""
    for _ in range(300):
        async with database.sessions() as session:
            message = await session.scalar(
                select(Message).where(Message.provider_message_id == sid)
            )
        attachments = (message.attachments or []) if message is not None else []
        if attachments and not str(attachments[0]["storage_key"]).startswith("http"):
            return attachments
        await asyncio.sleep(0.1)
    raise AssertionError("the MMS media were never stored")


async def test_mms_media_reach_the_attachment_store_and_the_agent_api(
    stack: dict[str, ServiceProcess],
    postgres_url: str,
    twilio: TwilioStandIn,
    secret_file: Path,
) -> None:
    database = Database(postgres_url)
    workspace = f"mms-{uuid.uuid4().hex[:8]}"
    workspace_id = await seed_demo(database, slug=workspace)
    number, customer = phone_number(), phone_number()
    account_id = await seed_sms_account(database, workspace_id, number, secret_file)
    sid = "MM" + uuid.uuid4().hex
    media_url = twilio.media_url(ACCOUNT_SID, sid, "ME" + uuid.uuid4().hex)
    twilio.media[media_url.removeprefix(twilio.base_url)] = ("image/jpeg", PICTURE)
    api_url = stack["agent_api"].base_url
    try:
        async with (
            httpx.AsyncClient(base_url=api_url, timeout=30) as api,
            httpx.AsyncClient(base_url=stack["ingest"].base_url, timeout=30) as ingest,
            agent_online(api, api_url, workspace, DEMO_AGENTS[0].email) as agent,
        ):
            fields = {
                **inbound_sms(sid, customer, number, "The parcel arrived broken"),
                "NumMedia": "1",
                "MediaUrl0": media_url,
                "MediaContentType0": "image/jpeg",
            }
            await post_signed(ingest, f"/v1/channels/twilio/{account_id}", fields)
            shown = await agent.socket.wait_for(
                created("The parcel arrived broken"), what="the MMS"
            )
            conversation_id = shown["data"]["conversation_id"]

            [attachment] = await stored_attachments(database, sid)
            assert (attachment["content_type"], attachment["size"]) == (
                "image/jpeg",
                len(PICTURE),
            )
            assert str(attachment["storage_key"]).startswith(f"{workspace_id}/")
            fetches = [f for f in twilio.media_fetches if media_url.endswith(f.path)]
            assert fetches
            assert {(f.username, f.password) for f in fetches} == {(ACCOUNT_SID, AUTH_TOKEN)}

            listed = await api.get(
                f"/v1/conversations/{conversation_id}/messages", headers=agent.auth
            )
            assert listed.status_code == 200, listed.text
            [inbound] = [m for m in listed.json() if m["text"].startswith("The parcel")]
            assert [(a["content_type"], a["size"]) for a in inbound["attachments"]] == [
                ("image/jpeg", len(PICTURE))
            ]
    except Exception:
        for service in stack.values():
            print(f"--- {service.name} ---\n{service.log_tail()}")  # noqa: T201
        raise
    finally:
        await database.dispose()
