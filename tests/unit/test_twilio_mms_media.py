"""Twilio MMS media: the webhook publishes the message with Twilio's media URLs and
answers; ingest's media fetcher then downloads each item from the Twilio stand-in with
the account's credentials into the attachment store, and the router puts the stored
metadata on the message. Refusals are recorded with their reason; outages are retried
and finally dead-lettered."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from services.agent_api.realtime.hub import audience
from services.ingest.app import create_app
from services.router.worker import InboundRouter
from shared.bus.memory import MemoryBus
from shared.bus.port import OutgoingRecord
from shared.channels.attachments import DirectoryAttachmentStore
from shared.db.models import ChannelAccount as ChannelAccountRow
from shared.db.models import Conversation, Message
from shared.db.session import Database
from shared.events import (
    MessageAttachmentsStored,
    MessageAttachmentsUpdated,
    Topic,
    decode_event,
)
from shared.settings import Settings
from tests.conftest import served
from tests.twilio_stand_in import TwilioStandIn, twilio_stand_in
from tests.unit.test_sms_twilio import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    OUR_NUMBER,
    PUBLIC,
    post,
    signed,
    sms_fields,
)

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8
PDF = b"%PDF-1.7\n" + b"0" * 1500
MAX_BYTES = 4096


@pytest.fixture
def twilio() -> Iterator[TwilioStandIn]:
    with twilio_stand_in() as stand_in:
        stand_in.credentials = (ACCOUNT_SID, AUTH_TOKEN)
        yield stand_in


@pytest.fixture
async def account_id(
    database: Database, workspace_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> uuid.UUID:
    monkeypatch.setenv("TEST_TWILIO_MEDIA_SECRET", f"{ACCOUNT_SID}:{AUTH_TOKEN}")
    new_id = uuid.uuid4()
    async with database.sessions() as session:
        session.add(
            ChannelAccountRow(
                id=new_id,
                workspace_id=workspace_id,
                channel="sms",
                adapter="twilio",
                address=OUR_NUMBER,
                secret_ref="env:TEST_TWILIO_MEDIA_SECRET",
            )
        )
        await session.commit()
    return new_id


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "attachments"


@pytest.fixture
async def ingest(
    settings: Settings,
    memory_bus: MemoryBus,
    database: Database,
    account_id: uuid.UUID,
    twilio: TwilioStandIn,
    store_dir: Path,
) -> AsyncIterator[httpx.AsyncClient]:
    tuned = settings.model_copy(
        update={
            "attachment_store_dir": store_dir,
            "smtp_listen_port": 0,
            "public_base_url": PUBLIC,
            "twilio_api_base_url": twilio.base_url,
            "sms_media_max_bytes": MAX_BYTES,
            "sms_send_max_attempts": 2,
            "sms_retry_backoff_seconds": 0.0,
            "consumer_max_attempts": 2,
        }
    )
    app = create_app(tuned, bus=memory_bus, database=database)
    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield client


def stored_results(bus: MemoryBus) -> list[MessageAttachmentsStored]:
    events = (decode_event(r).data for r in bus.records(Topic.INBOUND.value))
    return [e for e in events if isinstance(e, MessageAttachmentsStored)]


async def route(database: Database, bus: MemoryBus) -> None:
    """The router takes what ingest published (again: it stores each message once); it
    asks for the media of a stored MMS on omni.media.v1, for ingest's fetcher."""
    await InboundRouter(database, bus).handle(bus.records(Topic.INBOUND.value))


async def wait_for(condition: Any, what: str) -> None:
    """Wait for the background media fetcher (bounded, so a broken fetcher fails)."""
    for _ in range(600):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


async def mms(
    ingest: httpx.AsyncClient, account_id: uuid.UUID, sid: str, urls: list[tuple[str, str]]
) -> None:
    path = f"/v1/channels/twilio/{account_id}"
    media: dict[str, str] = {"NumMedia": str(len(urls))}
    for index, (url, kind) in enumerate(urls):
        media[f"MediaUrl{index}"] = url
        media[f"MediaContentType{index}"] = kind
    fields = sms_fields(sid=sid, body="Photos of the damage", **media)
    response = await post(ingest, path, fields, signed(path, fields))
    assert response.status_code == 200, response.text


async def conversation_of(database: Database, message: Message) -> Conversation:
    async with database.sessions() as session:
        conversation = await session.get(Conversation, message.conversation_id)
    assert conversation is not None
    return conversation


async def stored_message(database: Database, sid: str) -> Message:
    async with database.sessions() as session:
        message = await session.scalar(select(Message).where(Message.provider_message_id == sid))
    assert message is not None
    return message


async def test_mms_media_are_fetched_with_the_account_credentials_and_stored(
    ingest: httpx.AsyncClient,
    twilio: TwilioStandIn,
    memory_bus: MemoryBus,
    database: Database,
    account_id: uuid.UUID,
    store_dir: Path,
) -> None:
    sid = "MM" + "d" * 32
    photo = twilio.media_url(ACCOUNT_SID, sid, "ME" + "1" * 32)
    invoice = twilio.media_url(ACCOUNT_SID, sid, "ME" + "2" * 32)
    twilio.media[photo.removeprefix(twilio.base_url)] = ("image/jpeg", JPEG)
    twilio.media[invoice.removeprefix(twilio.base_url)] = ("application/pdf; charset=binary", PDF)

    await mms(ingest, account_id, sid, [(photo, "image/jpeg"), (invoice, "application/pdf")])
    await route(database, memory_bus)
    await wait_for(lambda: stored_results(memory_bus), "the stored media")
    await InboundRouter(database, memory_bus).handle(memory_bus.records(Topic.INBOUND.value))

    assert {(f.username, f.password) for f in twilio.media_fetches} == {(ACCOUNT_SID, AUTH_TOKEN)}
    message = await stored_message(database, sid)
    attachments = message.attachments or []
    assert [(a["filename"], a["content_type"], a["size"]) for a in attachments] == [
        ("ME" + "1" * 32 + ".jpg", "image/jpeg", len(JPEG)),
        ("ME" + "2" * 32 + ".pdf", "application/pdf", len(PDF)),
    ]
    store = DirectoryAttachmentStore(store_dir)
    assert await store.get(attachments[0]["storage_key"]) == JPEG
    assert await store.get(attachments[1]["storage_key"]) == PDF
    assert attachments[0]["storage_key"].startswith(f"{message.workspace_id}/")
    assert (message.channel_data or {})["media_failures"] == []
    # The owner's client is told, with the stored metadata.
    [update] = [
        event
        for event in (decode_event(r) for r in memory_bus.records(Topic.EVENTS.value))
        if isinstance(event.data, MessageAttachmentsUpdated)
    ]
    assert isinstance(update.data, MessageAttachmentsUpdated)
    assert update.data.message_id == message.id
    assert [a.size for a in update.data.attachments] == [len(JPEG), len(PDF)]
    owner = (await conversation_of(database, message)).assignee_agent_id
    assert owner is not None
    assert audience(update).agents == {owner}


async def test_refused_media_keep_the_twilio_url_and_say_why(
    ingest: httpx.AsyncClient,
    twilio: TwilioStandIn,
    memory_bus: MemoryBus,
    database: Database,
    account_id: uuid.UUID,
) -> None:
    sid = "MM" + "e" * 32
    huge = twilio.media_url(ACCOUNT_SID, sid, "ME" + "3" * 32)
    page = twilio.media_url(ACCOUNT_SID, sid, "ME" + "4" * 32)
    gone = twilio.media_url(ACCOUNT_SID, sid, "ME" + "5" * 32)
    elsewhere = f"https://media.evil.example/2010-04-01/Accounts/{ACCOUNT_SID}/x"
    other_account = "AC" + "2" * 32
    climbing = twilio.media_url(f"{ACCOUNT_SID}/../{other_account}", sid, "ME" + "8" * 32)
    flaky = twilio.media_url(ACCOUNT_SID, sid, "ME" + "6" * 32)
    twilio.media[huge.removeprefix(twilio.base_url)] = ("image/png", b"\x89PNG" + b"0" * MAX_BYTES)
    twilio.media[page.removeprefix(twilio.base_url)] = ("text/html", b"<html>login</html>")
    twilio.media[flaky.removeprefix(twilio.base_url)] = ("audio/amr", b"#!AMR\n" + b"1" * 64)
    twilio.media_failures.append(503)  # the first fetch meets an outage, then a retry works

    await mms(
        ingest,
        account_id,
        sid,
        [
            (flaky, "audio/amr"),
            (huge, "image/png"),
            (page, "image/jpeg"),
            (gone, "image/gif"),
            (elsewhere, "image/jpeg"),
            (climbing, "image/jpeg"),
        ],
    )
    await route(database, memory_bus)
    await wait_for(lambda: stored_results(memory_bus), "the stored media")
    await InboundRouter(database, memory_bus).handle(memory_bus.records(Topic.INBOUND.value))

    message = await stored_message(database, sid)
    attachments = message.attachments or []
    assert attachments[0]["content_type"] == "audio/amr"
    assert attachments[0]["size"] == 70
    assert [a["storage_key"] for a in attachments[1:]] == [huge, page, gone, elsewhere, climbing]
    failures = {f["url"]: f["reason"] for f in (message.channel_data or {})["media_failures"]}
    assert failures == {
        huge: f"larger than {MAX_BYTES} bytes",
        page: "content type text/html is not kept",
        gone: "Twilio answered 404",
        elsewhere: "not a media URL of this Twilio account",
        climbing: "not a media URL of this Twilio account",
    }
    # Only this account's media were requested: credentials go nowhere else.
    assert {f.path for f in twilio.media_fetches} == {
        url.removeprefix(twilio.base_url) for url in (flaky, huge, page, gone)
    }


async def test_media_twilio_never_serves_are_dead_lettered_not_lost(
    ingest: httpx.AsyncClient,
    twilio: TwilioStandIn,
    memory_bus: MemoryBus,
    database: Database,
    account_id: uuid.UUID,
) -> None:
    sid = "MM" + "f" * 32
    photo = twilio.media_url(ACCOUNT_SID, sid, "ME" + "7" * 32)
    twilio.media[photo.removeprefix(twilio.base_url)] = ("image/jpeg", JPEG)
    twilio.media_failures.extend([503] * 50)  # Twilio stays unavailable

    await mms(ingest, account_id, sid, [(photo, "image/jpeg")])
    await route(database, memory_bus)
    await wait_for(lambda: memory_bus.records(Topic.MEDIA.dead_letter), "the dead letter")

    [dead] = memory_bus.records(Topic.MEDIA.dead_letter)
    assert decode_event(dead).data.provider_message_id == sid  # type: ignore[attr-defined]
    errors = dict(dead.headers)
    assert b"Twilio media unavailable after 2 attempts" in errors["omni_dlq_error"]
    assert stored_results(memory_bus) == []
    # The message itself was published and is routed with Twilio's URL meanwhile.
    await InboundRouter(database, memory_bus).handle(memory_bus.records(Topic.INBOUND.value))
    message = await stored_message(database, sid)
    assert [a["storage_key"] for a in message.attachments or []] == [photo]


async def test_the_router_asks_for_the_media_of_a_stored_mms_once(
    ingest: httpx.AsyncClient,
    memory_bus: MemoryBus,
    database: Database,
    account_id: uuid.UUID,
    twilio: TwilioStandIn,
) -> None:
    """The fetcher reads a topic of its own (other messages never cost it a read), fed
    through the router's outbox: only once the message is stored, and once."""
    with_media, text_only = "MM" + "a" * 32, "SM" + "b" * 32
    photo = twilio.media_url(ACCOUNT_SID, with_media, "ME" + "9" * 32)
    twilio.media[photo.removeprefix(twilio.base_url)] = ("image/jpeg", JPEG)

    await mms(ingest, account_id, text_only, [])
    await mms(ingest, account_id, with_media, [(photo, "image/jpeg")])
    assert memory_bus.records(Topic.MEDIA.value) == []  # not before the message is stored
    await route(database, memory_bus)
    await mms(ingest, account_id, with_media, [(photo, "image/jpeg")])  # Twilio retries
    await route(database, memory_bus)

    [media_record] = memory_bus.records(Topic.MEDIA.value)
    request = decode_event(media_record)
    assert request.data.provider_message_id == with_media  # type: ignore[attr-defined]
    assert request.sequence is not None  # from the outbox
    inbound_keys = {r.key for r in memory_bus.records(Topic.INBOUND.value)}
    assert media_record.key in inbound_keys  # keyed like the message (same partition)
    await wait_for(lambda: stored_results(memory_bus), "the stored media")


async def test_an_undecodable_media_request_is_dead_lettered_and_the_next_one_fetched(
    ingest: httpx.AsyncClient,
    memory_bus: MemoryBus,
    database: Database,
    account_id: uuid.UUID,
    twilio: TwilioStandIn,
) -> None:
    await memory_bus.publish(
        OutgoingRecord(topic=Topic.MEDIA.value, key=b"k", value=b"not an event", headers=())
    )
    sid = "MM" + "c" * 32
    photo = twilio.media_url(ACCOUNT_SID, sid, "ME" + "0" * 32)
    twilio.media[photo.removeprefix(twilio.base_url)] = ("image/jpeg", JPEG)
    await mms(ingest, account_id, sid, [(photo, "image/jpeg")])
    await route(database, memory_bus)

    await wait_for(lambda: stored_results(memory_bus), "the stored media")
    [dead] = memory_bus.records(Topic.MEDIA.dead_letter)
    assert dead.value == b"not an event"
