"""SendGrid Inbound Parse and Mailgun routes through ingest's HTTP surface.

Signatures (Basic credentials for SendGrid, HMAC + token + timestamp for Mailgun),
both posting modes (parsed fields, raw MIME), the bad-input corpus (clear 4xx, nothing
published), Mailgun's 406 for "stop retrying", and three deliveries → one message.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from services.ingest.adapters.email.mailgun import sign_for_test
from services.ingest.app import create_app
from services.router.worker import InboundRouter
from shared.bus.memory import MemoryBus
from shared.db.models import ChannelAccount, Message
from shared.db.session import Database
from shared.events import MessageReceived, Topic, decode_event
from shared.problems import PROBLEM_CONTENT_TYPE
from shared.settings import Settings
from tests.conftest import served
from tests.unit.test_email_mime import MALFORMED, sample_email

MAILGUN_KEY = "key-mailgun-signing-0123456789abcdef"
SENDGRID_CREDENTIALS = "parse-user:parse-password-0123456789"
MAILGUN_ADDRESS = "help@mg.demo.omniroute.dev"
SENDGRID_ADDRESS = "help@parse.demo.omniroute.dev"


@pytest.fixture
async def accounts(
    database: Database, workspace_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> dict[str, uuid.UUID]:
    monkeypatch.setenv("TEST_MAILGUN_SIGNING_KEY", MAILGUN_KEY)
    monkeypatch.setenv("TEST_SENDGRID_PARSE_AUTH", SENDGRID_CREDENTIALS)
    ids = {"mailgun": uuid.uuid4(), "sendgrid": uuid.uuid4()}
    async with database.sessions() as session:
        session.add_all(
            [
                ChannelAccount(
                    id=ids["mailgun"],
                    workspace_id=workspace_id,
                    channel="email",
                    adapter="mailgun",
                    address=MAILGUN_ADDRESS,
                    secret_ref="env:TEST_MAILGUN_SIGNING_KEY",
                ),
                ChannelAccount(
                    id=ids["sendgrid"],
                    workspace_id=workspace_id,
                    channel="email",
                    adapter="sendgrid",
                    address=SENDGRID_ADDRESS,
                    secret_ref="env:TEST_SENDGRID_PARSE_AUTH",
                ),
            ]
        )
        await session.commit()
    return ids


@pytest.fixture
async def ingest(
    settings: Settings,
    memory_bus: MemoryBus,
    database: Database,
    accounts: dict[str, uuid.UUID],
    tmp_path: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    tuned = settings.model_copy(
        update={
            "attachment_store_dir": tmp_path / "attachments",
            "email_max_message_bytes": 256 * 1024,
            "smtp_listen_port": 0,
        }
    )
    app = create_app(tuned, bus=memory_bus, database=database)
    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield client


def published(bus: MemoryBus) -> list[MessageReceived]:
    return [
        e.data
        for e in (decode_event(r) for r in bus.records(Topic.INBOUND.value))
        if isinstance(e.data, MessageReceived)
    ]


def sendgrid_auth(credentials: str = SENDGRID_CREDENTIALS) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def sendgrid_parsed_fields(raw_text: str = "Hi from SendGrid") -> dict[str, str]:
    headers = (
        "Received: by mx.sendgrid.net\n"
        f"From: Grace <grace@example.com>\nTo: {SENDGRID_ADDRESS}\n"
        "Subject: Parsed mode\nMessage-ID: <sg-1@example.com>\n"
    )
    return {
        "headers": headers,
        "text": raw_text,
        "html": f"<p>{raw_text}</p>",
        "from": "Grace <grace@example.com>",
        "to": SENDGRID_ADDRESS,
        "subject": "Parsed mode",
        "envelope": json.dumps({"to": [SENDGRID_ADDRESS], "from": "grace@example.com"}),
        "charsets": json.dumps({"to": "UTF-8", "subject": "UTF-8", "text": "UTF-8"}),
        "attachments": "1",
        "attachment-info": json.dumps(
            {"attachment1": {"filename": "note.txt", "type": "text/plain"}}
        ),
        "spam_score": "0.1",
    }


def mailgun_fields(
    *, token: str | None = None, timestamp: int | None = None, key: str = MAILGUN_KEY
) -> dict[str, str]:
    signed = sign_for_test(key, token=token or uuid.uuid4().hex * 2, timestamp=timestamp)
    headers = [
        ["From", "Grace <grace@example.com>"],
        ["To", MAILGUN_ADDRESS],
        ["Subject", "Parsed by Mailgun"],
        ["Message-Id", "<mg-1@example.com>"],
    ]
    return {
        **signed,
        "recipient": MAILGUN_ADDRESS,
        "sender": "grace@example.com",
        "from": "Grace <grace@example.com>",
        "subject": "Parsed by Mailgun",
        "body-plain": "Hello\n\n> quoted",
        "stripped-text": "Hello",
        "message-headers": json.dumps(headers),
    }


def assert_refused(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE)
    assert response.json()["detail"]


# SendGrid ------------------------------------------------------------------------------


async def test_sendgrid_parsed_mode_becomes_one_message_with_its_attachment(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, accounts: dict[str, uuid.UUID]
) -> None:
    response = await ingest.post(
        f"/v1/channels/sendgrid/{accounts['sendgrid']}",
        data=sendgrid_parsed_fields(),
        files={"attachment1": ("note.txt", b"attached words", "text/plain")},
        headers=sendgrid_auth(),
    )

    assert response.status_code == 200, response.text
    [message] = published(memory_bus)
    assert message.sender.address == "grace@example.com"
    assert message.provider_message_id == "<sg-1@example.com>"
    assert message.subject == "Parsed mode"
    assert message.text == "Hi from SendGrid"
    assert message.channel_account_id == accounts["sendgrid"]
    assert [(a.filename, a.size) for a in message.attachments] == [("note.txt", 14)]


async def test_sendgrid_raw_mode_parses_the_full_mime_message(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, accounts: dict[str, uuid.UUID]
) -> None:
    raw = sample_email(to=SENDGRID_ADDRESS, message_id="<raw-1@example.com>")

    response = await ingest.post(
        f"/v1/channels/sendgrid/{accounts['sendgrid']}",
        data={
            "email": raw.decode(),
            "envelope": json.dumps({"to": [SENDGRID_ADDRESS], "from": "grace@example.com"}),
        },
        files={"unused": ("x.txt", b"", "text/plain")},  # force multipart like SendGrid
        headers=sendgrid_auth(),
    )

    assert response.status_code == 200, response.text
    [message] = published(memory_bus)
    assert message.provider_message_id == "<raw-1@example.com>"
    assert message.email is not None
    assert message.email.raw_storage_key is not None


SENDGRID_FORGED: dict[str, dict[str, str]] = {
    "no credentials": {},
    "wrong password": sendgrid_auth("parse-user:wrong"),
    "malformed": {"authorization": "Basic !!notbase64"},
    "other scheme": {"authorization": "Bearer " + SENDGRID_CREDENTIALS},
}


async def test_sendgrid_without_the_right_credentials_is_refused(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, accounts: dict[str, uuid.UUID]
) -> None:
    statuses = {}
    for label, auth in SENDGRID_FORGED.items():
        response = await ingest.post(
            f"/v1/channels/sendgrid/{accounts['sendgrid']}",
            data=sendgrid_parsed_fields(),
            files={"attachment1": ("note.txt", b"x", "text/plain")},
            headers=auth,
        )
        statuses[label] = response.status_code

    assert {label: status in (401, 403) for label, status in statuses.items()} == dict.fromkeys(
        SENDGRID_FORGED, True
    ), statuses
    assert published(memory_bus) == []


def _sendgrid_bad(update: dict[str, str]) -> dict[str, str]:
    return {**sendgrid_parsed_fields(), **update}


SENDGRID_BAD_INPUT: dict[str, dict[str, str]] = {
    "envelope not JSON": _sendgrid_bad({"envelope": "{not json"}),
    "charsets not JSON": _sendgrid_bad({"charsets": "[1, 2"}),
    "attachment-info not JSON": _sendgrid_bad({"attachment-info": "{"}),
    "unknown charset": _sendgrid_bad({"charsets": json.dumps({"text": "x-klingon"})}),
    "headers without From": _sendgrid_bad({"headers": "Subject: no sender\n"}),
    "path traversal name": _sendgrid_bad(
        {
            "attachment-info": json.dumps(
                {"attachment1": {"filename": "../../etc/passwd", "type": "text/plain"}}
            )
        }
    ),
    "no message": {"subject": "neither headers nor email"},
    **{
        f"raw: {name}": {"email": raw.decode("latin-1"), "envelope": "{}"}
        for name, raw in MALFORMED.items()
    },
}


async def test_sendgrid_bad_input_gets_a_clear_4xx_and_publishes_nothing(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, accounts: dict[str, uuid.UUID]
) -> None:
    answers = {}
    for label, fields in SENDGRID_BAD_INPUT.items():
        response = await ingest.post(
            f"/v1/channels/sendgrid/{accounts['sendgrid']}",
            data=fields,
            files={"attachment1": ("note.txt", b"x", "text/plain")},
            headers=sendgrid_auth(),
        )
        answers[label] = (response.status_code, response.headers["content-type"])

    assert answers == dict.fromkeys(SENDGRID_BAD_INPUT, (422, PROBLEM_CONTENT_TYPE))
    assert published(memory_bus) == []


async def test_a_webhook_for_an_unknown_account_or_adapter_is_404(
    ingest: httpx.AsyncClient, accounts: dict[str, uuid.UUID]
) -> None:
    wrong_adapter = await ingest.post(
        f"/v1/channels/mailgun/{accounts['sendgrid']}", data=sendgrid_parsed_fields()
    )
    unknown = await ingest.post(f"/v1/channels/sendgrid/{uuid.uuid4()}", data={})
    not_an_id = await ingest.post("/v1/channels/sendgrid/nope", data={})
    no_adapter = await ingest.post(f"/v1/channels/pigeon/{accounts['sendgrid']}", data={})

    for response in (unknown, not_an_id, no_adapter):
        assert_refused(response, 404)
    assert wrong_adapter.status_code in (404, 406)


# Mailgun -------------------------------------------------------------------------------


async def test_mailgun_parsed_mode_uses_the_stripped_text(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, accounts: dict[str, uuid.UUID]
) -> None:
    response = await ingest.post(
        f"/v1/channels/mailgun/{accounts['mailgun']}", data=mailgun_fields()
    )

    assert response.status_code == 200, response.text
    [message] = published(memory_bus)
    assert message.text == "Hello"
    assert message.email is not None
    assert message.email.original_text == "Hello\n\n> quoted"
    assert message.provider_message_id == "<mg-1@example.com>"


async def test_mailgun_raw_mime_mode_at_the_mime_url(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, accounts: dict[str, uuid.UUID]
) -> None:
    fields = sign_for_test(MAILGUN_KEY, token=uuid.uuid4().hex)
    raw = sample_email(to=MAILGUN_ADDRESS, message_id="<mg-raw@example.com>")

    response = await ingest.post(
        f"/v1/channels/mailgun/{accounts['mailgun']}/mime",
        data={**fields, "recipient": MAILGUN_ADDRESS, "body-mime": raw.decode()},
    )
    as_file = await ingest.post(
        f"/v1/channels/mailgun/{accounts['mailgun']}/mime",
        data={**sign_for_test(MAILGUN_KEY, token=uuid.uuid4().hex), "recipient": MAILGUN_ADDRESS},
        files={"body-mime": ("message.mime", raw, "message/rfc822")},
    )

    assert response.status_code == 200, response.text
    assert as_file.status_code == 200, as_file.text
    assert [m.provider_message_id for m in published(memory_bus)] == ["<mg-raw@example.com>"] * 2


MAILGUN_TAMPERED: dict[str, dict[str, str]] = {
    "wrong signature": {"signature": "0" * 64},
    "no signature": {"signature": ""},
    "token swapped": {"token": "another-token-than-signed"},
    "timestamp swapped": {"timestamp": "1"},
}


async def test_mailgun_signature_negatives_publish_nothing(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, accounts: dict[str, uuid.UUID]
) -> None:
    statuses = {}
    for label, change in MAILGUN_TAMPERED.items():
        response = await ingest.post(
            f"/v1/channels/mailgun/{accounts['mailgun']}", data={**mailgun_fields(), **change}
        )
        statuses[label] = response.status_code

    assert statuses == dict.fromkeys(MAILGUN_TAMPERED, 403)
    assert published(memory_bus) == []


async def test_mailgun_signed_with_another_key_or_long_ago_is_refused(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, accounts: dict[str, uuid.UUID]
) -> None:
    url = f"/v1/channels/mailgun/{accounts['mailgun']}"
    other_key = await ingest.post(url, data=mailgun_fields(key="not-our-key"))
    stale = await ingest.post(url, data=mailgun_fields(timestamp=int(time.time()) - 3600))
    future = await ingest.post(url, data=mailgun_fields(timestamp=int(time.time()) + 3600))

    assert_refused(other_key, 403)
    assert_refused(stale, 403)
    assert "old" in stale.json()["detail"]
    assert_refused(future, 403)
    assert published(memory_bus) == []


async def test_a_replayed_mailgun_token_is_refused_with_406(
    ingest: httpx.AsyncClient,
    memory_bus: MemoryBus,
    database: Database,
    accounts: dict[str, uuid.UUID],
) -> None:
    fields = mailgun_fields(token="replayed-token-" + uuid.uuid4().hex)
    url = f"/v1/channels/mailgun/{accounts['mailgun']}"

    first = await ingest.post(url, data=fields)
    replays = [await ingest.post(url, data=fields) for _ in range(2)]

    assert first.status_code == 200
    for replay in replays:
        assert_refused(replay, 406)
        assert "replay" in replay.json()["detail"]
    assert len(published(memory_bus)) == 1


MAILGUN_BAD_INPUT: dict[
    str, tuple[dict[str, str | None], dict[str, tuple[str, bytes, str]] | None]
] = {
    "message-headers not JSON": ({"message-headers": "[[not json"}, None),
    "headers not a list": ({"message-headers": json.dumps({"From": "x"})}, None),
    "From without address": ({"message-headers": json.dumps([["From", "nobody"]])}, None),
    "unknown header charset": (
        {"message-headers": json.dumps([["Subject", "=?x-klingon?q?hi?="], ["From", "a@b.c"]])},
        None,
    ),
    "path traversal name": ({}, {"attachment-1": ("..\\..\\win.ini", b"x", "text/plain")}),
    **{
        f"raw: {name}": ({"message-headers": None}, {"body-mime": ("m.mime", raw, "text/plain")})
        for name, raw in MALFORMED.items()
    },
}


async def test_mailgun_bad_input_is_406_so_it_stops_retrying(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, accounts: dict[str, uuid.UUID]
) -> None:
    answers = {}
    for label, (fields, files) in MAILGUN_BAD_INPUT.items():
        data = {k: v for k, v in {**mailgun_fields(), **fields}.items() if v is not None}
        response = await ingest.post(
            f"/v1/channels/mailgun/{accounts['mailgun']}", data=data, files=files
        )
        answers[label] = (response.status_code, response.json().get("retryable"))

    assert answers == dict.fromkeys(MAILGUN_BAD_INPUT, (406, False))
    assert published(memory_bus) == []


async def test_an_oversized_webhook_is_refused_in_the_providers_terms(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, accounts: dict[str, uuid.UUID]
) -> None:
    huge = b"x" * (600 * 1024)

    sendgrid = await ingest.post(
        f"/v1/channels/sendgrid/{accounts['sendgrid']}",
        data=sendgrid_parsed_fields(),
        files={"attachment1": ("big.bin", huge, "application/octet-stream")},
        headers=sendgrid_auth(),
    )
    mailgun = await ingest.post(
        f"/v1/channels/mailgun/{accounts['mailgun']}",
        data=mailgun_fields(),
        files={"attachment-1": ("big.bin", huge, "application/octet-stream")},
    )

    assert_refused(sendgrid, 413)
    assert_refused(mailgun, 406)
    assert published(memory_bus) == []


async def test_a_non_form_body_is_refused(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, accounts: dict[str, uuid.UUID]
) -> None:
    as_json = await ingest.post(
        f"/v1/channels/sendgrid/{accounts['sendgrid']}",
        json={"email": "x"},
        headers=sendgrid_auth(),
    )
    broken_multipart = await ingest.post(
        f"/v1/channels/sendgrid/{accounts['sendgrid']}",
        content=b"--b\r\nno headers",
        headers={**sendgrid_auth(), "content-type": "multipart/form-data; boundary=b"},
    )

    assert_refused(as_json, 415)
    assert_refused(broken_multipart, 400)
    assert published(memory_bus) == []


# Three deliveries, one message ------------------------------------------------------


async def test_every_webhook_delivered_three_times_is_one_message(
    ingest: httpx.AsyncClient,
    memory_bus: MemoryBus,
    database: Database,
    accounts: dict[str, uuid.UUID],
) -> None:
    for _ in range(3):
        response = await ingest.post(
            f"/v1/channels/sendgrid/{accounts['sendgrid']}",
            data=sendgrid_parsed_fields(),
            files={"attachment1": ("note.txt", b"x", "text/plain")},
            headers=sendgrid_auth(),
        )
        assert response.status_code == 200
    for _ in range(3):  # Mailgun signs every attempt anew (fresh token and timestamp)
        response = await ingest.post(
            f"/v1/channels/mailgun/{accounts['mailgun']}", data=mailgun_fields()
        )
        assert response.status_code == 200

    await InboundRouter(database, memory_bus).handle(memory_bus.records(Topic.INBOUND.value))

    async with database.sessions() as session:
        rows = await session.execute(
            select(Message.provider_message_id, func.count()).group_by(Message.provider_message_id)
        )
        counts = {str(pid): int(n) for pid, n in rows.all()}
    assert len(published(memory_bus)) == 6
    assert counts == {"<sg-1@example.com>": 1, "<mg-1@example.com>": 1}
