"""F11 — the bad-input corpus over every inbound surface: provider webhooks (Twilio, Meta,
SendGrid, Mailgun), the SMTP listener, the web-chat widget, the agent REST API and both
WebSockets. Every case gets a clear 4xx (SMTP 5xx), never a 5xx, and nothing is stored
or published. Text that looks like script or SQL is stored verbatim and only ever served
back as JSON.

Each channel's own tests hold its deeper corpus (tests/unit/test_email_webhooks.py,
test_email_smtp_listener.py, test_ingest_api.py); this file runs one corpus across all
surfaces so a new surface or a shared regression shows up in one place.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import func, select
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from devmode.seed import DEMO_AGENTS, DEMO_PASSWORD
from services.agent_api.app import create_app as create_agent_api
from services.ingest.adapters.sms.twilio import signed_request_headers as twilio_signed
from services.router.worker import InboundRouter
from shared.bus.memory import MemoryBus
from shared.db.models import Conversation, Message, OutboxEvent
from shared.db.session import Database
from shared.events import Topic
from shared.problems import PROBLEM_CONTENT_TYPE
from shared.settings import Settings
from tests.conftest import served
from tests.faults.channels import PUBLIC, Ingest
from tests.unit.test_email_mime import MALFORMED, sample_email
from tests.unit.test_email_webhooks import mailgun_fields, sendgrid_parsed_fields
from tests.unit.test_sms_twilio import AUTH_TOKEN, sms_fields
from tests.unit.test_social_meta import raw, whatsapp_message

HUGE = 3 * 1024 * 1024
SCRIPT = '<script>alert("x")</script><img src=x onerror=alert(1)>'
SQL = "'; DROP TABLE messages; -- \" OR 1=1 --"


async def stored_rows(database: Database) -> tuple[int, int]:
    async with database.sessions() as session:
        messages = await session.scalar(select(func.count(Message.id)))
        events = await session.scalar(select(func.count(OutboxEvent.id)))
    return int(messages or 0), int(events or 0)


def nothing_published(bus: MemoryBus) -> bool:
    return all(bus.records(topic.value) == [] for topic in Topic)


def verdict(response: httpx.Response) -> tuple[int, bool]:
    """(status, problem+json?) — 4xx answers are problems unless the provider wants TwiML."""
    return response.status_code, response.headers.get("content-type", "").startswith(
        (PROBLEM_CONTENT_TYPE, "text/xml")
    )


# Provider webhooks -------------------------------------------------------------------


def twilio_cases(path: str) -> dict[str, tuple[bytes, dict[str, str]]]:
    """Signed (so they reach the parser) but malformed Twilio form posts."""
    path_url = PUBLIC + path

    def signed_form(fields: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        return urlencode(fields).encode(), {
            **twilio_signed(AUTH_TOKEN, path_url, fields),
            "content-type": "application/x-www-form-urlencoded",
        }

    base = sms_fields(sid="SM" + "e" * 32)
    without = {k: v for k, v in base.items() if k not in ("MessageSid", "SmsMessageSid")}
    no_sender = {k: v for k, v in base.items() if k != "From"}
    json_body = json.dumps(base).encode()
    return {
        "no MessageSid": signed_form(without),
        "no From": signed_form(no_sender),
        "NumMedia not a number": signed_form({**base, "NumMedia": "lots"}),
        "NumMedia without media": signed_form({**base, "NumMedia": "3"}),
        "huge Body": signed_form({**base, "Body": "x" * HUGE}),
        "CRLF header injection in From": signed_form(
            {**base, "From": "+1555\r\nBcc: victim@example.com"}
        ),
        "JSON instead of a form": (
            json_body,
            {**twilio_signed(AUTH_TOKEN, path_url, {}), "content-type": "application/json"},
        ),
        "invalid percent-encoding": (
            b"MessageSid=%ZZ&Body=%",
            {
                **twilio_signed(AUTH_TOKEN, path_url, {}),
                "content-type": "application/x-www-form-urlencoded",
            },
        ),
    }


def meta_cases() -> dict[str, bytes]:
    """Correctly signed Meta bodies that are not usable events."""
    event = whatsapp_message(wamid="wamid.BAD")
    return {
        "invalid JSON": b'{"object": "page", "entry": [',
        "JSON array": b"[1, 2, 3]",
        "entry not a list": json.dumps({"object": "page", "entry": "x"}).encode(),
        "invalid UTF-8": b'{"object": "page", "entry": [], "x": "\xff\xfe"}',
        "lone surrogate": b'{"object": "page", "entry": [], "x": "\\ud800"}',
        "deep nesting": b'{"object": "page", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        "huge body": raw({**event, "padding": "x" * HUGE}),
        "NUL in JSON": b'{"object": "page"\x00}',
    }


async def test_signed_but_malformed_twilio_posts_are_4xx_and_publish_nothing(
    ingest: Ingest, memory_bus: MemoryBus, database: Database
) -> None:
    path = f"/v1/channels/twilio/{ingest.accounts['twilio']}"
    answers = {
        label: verdict(await ingest.client.post(path, content=body, headers=headers))
        for label, (body, headers) in twilio_cases(path).items()
    }
    assert {label: a for label, a in answers.items() if not 400 <= a[0] < 500} == {}
    assert nothing_published(memory_bus)
    assert await stored_rows(database) == (0, 0)


async def test_signed_but_malformed_meta_events_are_4xx_and_publish_nothing(
    ingest: Ingest, memory_bus: MemoryBus, database: Database
) -> None:
    answers = {label: verdict(await ingest.meta(body)) for label, body in meta_cases().items()}
    wrong_type = await ingest.client.post(
        f"/v1/channels/meta/{ingest.accounts['meta']}",
        content=b"object=page",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )

    # Well-formed JSON holding no usable event is acknowledged (Meta would retry it for
    # days otherwise) and ignored; everything else is a clear 4xx problem.
    acknowledged = {"entry not a list", "lone surrogate"}
    assert {k: v for k, v in answers.items() if k in acknowledged} == dict.fromkeys(
        acknowledged, (200, False)
    )
    refused = {k: v for k, v in answers.items() if k not in acknowledged}
    assert {k: v for k, v in refused.items() if not (400 <= v[0] < 500 and v[1])} == {}
    assert 400 <= wrong_type.status_code < 500
    assert nothing_published(memory_bus)
    assert await stored_rows(database) == (0, 0)


async def test_email_webhooks_refuse_broken_mime_charsets_and_huge_bodies(
    ingest: Ingest, memory_bus: MemoryBus, database: Database
) -> None:
    answers: dict[str, int] = {}
    for name, message in MALFORMED.items():
        answers[f"sendgrid raw: {name}"] = (
            await ingest.sendgrid({"email": message.decode("latin-1"), "envelope": "{}"})
        ).status_code
        answers[f"mailgun raw: {name}"] = (
            await ingest.client.post(
                f"/v1/channels/mailgun/{ingest.accounts['mailgun']}",
                data=mailgun_fields(),
                files={"body-mime": ("m.eml", message, "message/rfc822")},
            )
        ).status_code
    answers["sendgrid unknown charset"] = (
        await ingest.sendgrid(
            {**sendgrid_parsed_fields(), "charsets": json.dumps({"text": "x-klingon"})}
        )
    ).status_code
    answers["sendgrid huge text"] = (
        await ingest.sendgrid({**sendgrid_parsed_fields(), "text": "x" * HUGE})
    ).status_code
    assert {k: v for k, v in answers.items() if not 400 <= v < 500} == {}
    assert nothing_published(memory_bus)
    assert await stored_rows(database) == (0, 0)


async def test_the_smtp_listener_answers_5xx_to_broken_mail(
    ingest: Ingest, memory_bus: MemoryBus, database: Database
) -> None:
    corpus = {
        **MALFORMED,
        "invalid UTF-8 header": sample_email().replace(
            b"Subject: Order 1234 is late", b"Subject: \xff\xfe\xfd"
        ),
        "NUL bytes in body": sample_email(text="hello\x00world"),
    }
    codes = {label: await ingest.smtp(message) for label, message in corpus.items()}

    # A message that is broken but harmless may be accepted; anything refused is 5xx and
    # nothing refused is published.
    refused = {label for label, code in codes.items() if code != 250}
    assert {label: code for label, code in codes.items() if code != 250 and code < 500} == {}
    assert refused >= set(MALFORMED), codes
    assert len(ingest.published()) == len(corpus) - len(refused)
    assert await stored_rows(database) == (0, 0)


# The web-chat widget -------------------------------------------------------------------

CHAT_CORPUS: dict[str, tuple[bytes, str]] = {
    "invalid JSON": (b'{"text": ', "application/json"),
    "invalid UTF-8": (b'{"text": "\xff\xfe"}', "application/json"),
    "lone surrogate": (b'{"text": "\\ud800"}', "application/json"),
    "NUL byte": (b'{"text": "a\\u0000b"}', "application/json"),
    "deep nesting": (b'{"text": ' + b"[" * 5000 + b"]" * 5000 + b"}", "application/json"),
    "form body": (b"text=hi", "application/x-www-form-urlencoded"),
    "XML body": (b"<text>hi</text>", "application/xml"),
    "number": (b"12", "application/json"),
    "null": (b"null", "application/json"),
    "huge": (b'{"text": "' + b"x" * HUGE + b'"}', "application/json"),
}


async def test_the_chat_widget_refuses_the_corpus(
    ingest: Ingest, memory_bus: MemoryBus, database: Database
) -> None:
    session_id, auth = await ingest.chat_session()
    answers = {
        label: verdict(
            await ingest.client.post(
                f"/v1/webchat/sessions/{session_id}/messages",
                content=body,
                headers={**auth, "content-type": content_type},
            )
        )
        for label, (body, content_type) in CHAT_CORPUS.items()
    }
    traversal = await ingest.client.get("/v1/webchat/sessions/..%2F..%2Fetc%2Fpasswd/messages")

    assert {k: v for k, v in answers.items() if not (400 <= v[0] < 500 and v[1])} == {}
    assert 400 <= traversal.status_code < 500
    assert nothing_published(memory_bus)
    assert await stored_rows(database) == (0, 0)


async def test_a_chat_websocket_survives_garbage_frames(ingest: Ingest) -> None:
    session_id, auth = await ingest.chat_session()
    token = auth["authorization"].removeprefix("Bearer ")
    ws_url = str(ingest.client.base_url).replace("http://", "ws://")
    url = f"{ws_url}/v1/webchat/sessions/{session_id}/ws"
    outcomes: dict[str, str] = {}
    garbage: dict[str, str | bytes] = {
        "not JSON": "{nope",
        "binary": b"\x00\x01\x02",
        "JSON array": "[1, 2]",
        "unknown type": json.dumps({"type": "drop tables"}),
        "huge": "x" * (2 * 1024 * 1024),
    }
    for label, frame in garbage.items():
        outcomes[label] = await after_garbage(url, token, frame)

    # The frame is ignored (the socket still answers a ping) or the socket closes with a
    # clear code (4xxx, 1003 unsupported, 1007 invalid, 1008 policy, 1009 too big); never
    # 1011 (a server error).
    clear = {"pong", "closed 1003", "closed 1007", "closed 1008", "closed 1009"}
    assert {k: v for k, v in outcomes.items() if v not in clear and " 4" not in v} == {}


async def after_garbage(url: str, token: str, frame: str | bytes) -> str:
    """What the server does after ``frame``: answers a ping (``pong``) or ``closed <code>``."""
    try:
        async with connect(url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "auth", "token": token}))
            await ws.send(frame)
            await ws.send(json.dumps({"type": "ping"}))
            async with asyncio.timeout(10):
                while True:
                    answer = json.loads(await ws.recv())
                    if answer.get("type") == "pong":
                        return "pong"
    except ConnectionClosed as closed:
        return f"closed {closed.rcvd.code if closed.rcvd is not None else 'abnormally'}"


# The agent REST API and its WebSocket -------------------------------------------------

ADA = DEMO_AGENTS[0].email

REST_CORPUS: dict[str, tuple[bytes, str]] = {
    "invalid JSON": (b'{"text": ', "application/json"),
    "invalid UTF-8": (b'{"text": "\xff\xfe"}', "application/json"),
    "lone surrogate": (b'{"text": "\\ud800"}', "application/json"),
    "NUL byte": (b'{"text": "a\\u0000b"}', "application/json"),
    "deep nesting": (b'{"text": ' + b"[" * 5000 + b"]" * 5000 + b"}", "application/json"),
    "form body": (b"text=hi", "application/x-www-form-urlencoded"),
    "text/plain": (b'{"text": "hi"}', "text/plain"),
    "null": (b"null", "application/json"),
    "wrong type": (b'{"text": 12}', "application/json"),
    "huge": (b'{"text": "' + b"x" * HUGE + b'"}', "application/json"),
}


@pytest.fixture
async def agent_api(
    settings: Settings, memory_bus: MemoryBus, database: Database, workspace_id: uuid.UUID
) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        served(create_agent_api(settings, bus=memory_bus, database=database)) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        signed_in = await client.post(
            "/v1/auth/token", json={"workspace": "demo", "email": ADA, "password": DEMO_PASSWORD}
        )
        client.headers["authorization"] = f"Bearer {signed_in.json()['access_token']}"
        yield client


async def owned_conversation(
    ingest: Ingest, memory_bus: MemoryBus, database: Database, text: str
) -> tuple[uuid.UUID, str, dict[str, str]]:
    """A web-chat conversation assigned to Ada (the only online agent)."""
    session_id, auth = await ingest.chat_session()
    posted = await ingest.client.post(
        f"/v1/webchat/sessions/{session_id}/messages", json={"text": text}, headers=auth
    )
    assert posted.status_code == 202, posted.text
    await InboundRouter(database, memory_bus).handle(memory_bus.records(Topic.INBOUND.value))
    async with database.sessions() as session:
        conversation_id = await session.scalar(select(Conversation.id))
    assert conversation_id is not None
    return conversation_id, session_id, auth


async def test_the_rest_api_refuses_the_corpus_with_problems(
    ingest: Ingest, agent_api: httpx.AsyncClient, memory_bus: MemoryBus, database: Database
) -> None:
    conversation_id, _, _ = await owned_conversation(ingest, memory_bus, database, "hello")
    before = await stored_rows(database)
    outbound = len(memory_bus.records(Topic.OUTBOUND.value))
    answers = {}
    for path in ("replies", "notes"):
        for label, (body, content_type) in REST_CORPUS.items():
            response = await agent_api.post(
                f"/v1/conversations/{conversation_id}/{path}",
                content=body,
                headers={"content-type": content_type},
            )
            answers[f"{path}: {label}"] = verdict(response)
    traversal = await agent_api.get("/v1/conversations/..%2F..%2Fetc%2Fpasswd")
    injected_id = await agent_api.get("/v1/conversations/1%27%20OR%20%271%27=%271")

    assert {k: v for k, v in answers.items() if not (400 <= v[0] < 500 and v[1])} == {}
    assert 400 <= traversal.status_code < 500
    assert 400 <= injected_id.status_code < 500
    assert await stored_rows(database) == before
    assert len(memory_bus.records(Topic.OUTBOUND.value)) == outbound


async def test_script_and_sql_in_text_are_stored_verbatim_and_served_only_as_json(
    ingest: Ingest, agent_api: httpx.AsyncClient, memory_bus: MemoryBus, database: Database
) -> None:
    hostile = f"{SCRIPT} {SQL}"
    conversation_id, session_id, auth = await owned_conversation(
        ingest, memory_bus, database, hostile
    )
    reply = await agent_api.post(
        f"/v1/conversations/{conversation_id}/replies", json={"text": hostile}
    )
    served_back = {
        "agent messages": await agent_api.get(f"/v1/conversations/{conversation_id}/messages"),
        "agent conversation": await agent_api.get(f"/v1/conversations/{conversation_id}"),
        "agent timeline": await agent_api.get(f"/v1/conversations/{conversation_id}/timeline"),
        "agent list": await agent_api.get("/v1/conversations"),
        "customer history": await ingest.client.get(
            f"/v1/webchat/sessions/{session_id}/messages", headers=auth
        ),
    }
    async with database.sessions() as session:
        texts = set((await session.scalars(select(Message.text))).all())

    assert reply.status_code in (200, 201, 202), reply.text
    assert hostile in texts  # stored as sent: parameters, never SQL text
    types = {label: r.headers["content-type"] for label, r in served_back.items()}
    assert types == dict.fromkeys(served_back, "application/json")
    messages = served_back["agent messages"].json()
    assert hostile in [m["text"] for m in messages]
    assert all(r.headers.get("x-content-type-options") != "sniff" for r in served_back.values())


async def test_the_agent_websocket_survives_garbage_frames(
    agent_api: httpx.AsyncClient,
) -> None:
    token = agent_api.headers["authorization"].removeprefix("Bearer ")
    url = str(agent_api.base_url).replace("http://", "ws://") + "/v1/ws"
    garbage: dict[str, str | bytes] = {
        "not JSON": "{nope",
        "binary": b"\x00\x01\x02",
        "subscribe without id": json.dumps({"type": "subscribe"}),
        "subscribe to a bad id": json.dumps({"type": "subscribe", "conversation_id": "'--"}),
        "huge": "x" * (2 * 1024 * 1024),
    }
    outcomes = {label: await after_garbage(url, token, frame) for label, frame in garbage.items()}
    clear = {"pong", "closed 1003", "closed 1007", "closed 1008", "closed 1009"}
    assert {k: v for k, v in outcomes.items() if v not in clear and " 4" not in v} == {}
    assert outcomes["binary"] == "closed 1003"
