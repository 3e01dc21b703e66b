"""F8 — signatures over ingest's HTTP surface, one table for every signed channel:
tampered body, wrong URL, missing header, wrong secret, stale and future timestamps,
replays. Each is refused with 401/403 (a Mailgun replay with 406, Mailgun's "do not
retry"), and nothing is published or stored.

The agent API's JWT checks (expired, wrong audience, wrong key, alg=none) live in
tests/unit/test_agent_api.py::test_tokens_are_checked; each channel's own tests hold
the deeper cases. A new adapter must add its forgeries here (the last test says so).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import httpx
from sqlalchemy import func, select

from services.ingest.adapters.sms.twilio import signed_request_headers as twilio_signed
from services.ingest.adapters.social.meta import signature_of as meta_signature
from services.ingest.adapters.webchat import ChatSession, issue_session_token
from services.ingest.app import BUILTIN_ADAPTERS
from shared.bus.memory import MemoryBus
from shared.db.models import Message
from shared.db.session import Database
from shared.events import Topic
from shared.settings import Settings
from tests.faults.channels import PUBLIC, Ingest
from tests.unit.test_email_webhooks import mailgun_fields, sendgrid_auth, sendgrid_parsed_fields
from tests.unit.test_sms_twilio import AUTH_TOKEN, sms_fields
from tests.unit.test_social_meta import APP_SECRET, raw, whatsapp_message

Forgery = Callable[[Ingest], Awaitable[httpx.Response]]
REFUSED = (401, 403)


async def twilio_post(
    ingest: Ingest,
    fields: dict[str, str],
    *,
    signed_fields: dict[str, str] | None = None,
    host: str = PUBLIC,
    token: str = AUTH_TOKEN,
    signature: bool = True,
) -> httpx.Response:
    path = f"/v1/channels/twilio/{ingest.accounts['twilio']}"
    headers = twilio_signed(token, host + path, signed_fields or fields) if signature else {}
    return await ingest.client.post(path, content=urlencode(fields).encode(), headers=headers)


async def meta_post(ingest: Ingest, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return await ingest.client.post(
        f"/v1/channels/meta/{ingest.accounts['meta']}", content=body, headers=headers
    )


async def chat_post(ingest: Ingest, token: str) -> httpx.Response:
    session_id, _ = await ingest.chat_session()
    return await ingest.client.post(
        f"/v1/webchat/sessions/{session_id}/messages",
        json={"text": "hi"},
        headers={"authorization": f"Bearer {token}"} if token else {},
    )


def forgeries(settings: Settings, workspace_id: uuid.UUID) -> dict[str, dict[str, Forgery]]:
    """By adapter name: label → a forged delivery."""
    sms = sms_fields(sid="SM" + "d" * 32)
    body = raw(whatsapp_message(wamid="wamid.FORGED"))
    good_meta = {"X-Hub-Signature-256": meta_signature(APP_SECRET, body)}
    now = int(time.time())
    session = ChatSession("wcs_forged", workspace_id, None)
    secret = settings.chat_session_secret.get_secret_value()
    expired, _ = issue_session_token(
        session,
        secret=secret,
        ttl=timedelta(seconds=60),
        now=datetime.now(UTC) - timedelta(hours=2),
    )
    forged, _ = issue_session_token(session, secret="x" * 48, ttl=timedelta(minutes=5))
    return {
        "twilio": {
            "tampered body": lambda i: twilio_post(
                i, {**sms, "Body": "refund me"}, signed_fields=sms
            ),
            "wrong URL": lambda i: twilio_post(i, sms, host="https://evil.example"),
            "missing header": lambda i: twilio_post(i, sms, signature=False),
            "wrong token": lambda i: twilio_post(i, sms, token="not-the-token"),
        },
        "meta": {
            "tampered body": lambda i: meta_post(i, body.replace(b"Hello", b"Refund"), good_meta),
            "re-serialized body": lambda i: meta_post(
                i, json.dumps(json.loads(body)).encode(), good_meta
            ),
            "missing header": lambda i: meta_post(i, body, {}),
            "wrong secret": lambda i: meta_post(
                i, body, {"X-Hub-Signature-256": meta_signature("another-secret", body)}
            ),
        },
        "mailgun": {
            "wrong key": lambda i: i.mailgun(mailgun_fields(key="not-our-key")),
            "token swapped": lambda i: i.mailgun({**mailgun_fields(), "token": "t" * 50}),
            "stale timestamp": lambda i: i.mailgun(mailgun_fields(timestamp=now - 3600)),
            "future timestamp": lambda i: i.mailgun(mailgun_fields(timestamp=now + 3600)),
            "missing signature": lambda i: i.mailgun({**mailgun_fields(), "signature": ""}),
        },
        "sendgrid": {
            "no credentials": lambda i: i.client.post(
                f"/v1/channels/sendgrid/{i.accounts['sendgrid']}", data=sendgrid_parsed_fields()
            ),
            "wrong password": lambda i: i.client.post(
                f"/v1/channels/sendgrid/{i.accounts['sendgrid']}",
                data=sendgrid_parsed_fields(),
                headers=sendgrid_auth("parse-user:wrong"),
            ),
        },
        "webchat": {
            "expired session token": lambda i: chat_post(i, expired),
            "session token of another key": lambda i: chat_post(i, forged),
            "no token": lambda i: chat_post(i, ""),
        },
    }


# The SMTP listener is not signed: it refuses unknown recipients (no open relay), see
# tests/unit/test_email_smtp_listener.py.
UNSIGNED = {"email"}


async def test_every_forgery_is_refused_and_nothing_is_published(
    ingest: Ingest,
    memory_bus: MemoryBus,
    database: Database,
    settings: Settings,
    workspace_id: uuid.UUID,
) -> None:
    statuses = {
        f"{adapter}: {label}": (await forge(ingest)).status_code
        for adapter, cases in forgeries(settings, workspace_id).items()
        for label, forge in cases.items()
    }

    assert {k: v for k, v in statuses.items() if v not in REFUSED} == {}
    assert all(memory_bus.records(topic.value) == [] for topic in Topic)
    async with database.sessions() as session:
        assert await session.scalar(select(func.count(Message.id))) == 0


async def test_a_replayed_signed_request_is_refused_or_absorbed(
    ingest: Ingest, memory_bus: MemoryBus
) -> None:
    """Mailgun signs each attempt with a fresh token: a token seen twice is a replay
    (406). Twilio and Meta sign only the content: a replay is a redelivery, absorbed by
    the dedupe on the provider id (F4)."""
    fields = mailgun_fields(token="replayed-" + uuid.uuid4().hex)

    first = await ingest.mailgun(fields)
    replay = await ingest.mailgun(fields)

    assert (first.status_code, replay.status_code) == (200, 406)
    assert "replay" in replay.json()["detail"]
    assert len(ingest.published()) == 1


def test_every_builtin_adapter_has_forgeries_here(settings: Settings) -> None:
    covered = set(forgeries(settings, uuid.uuid4())) | UNSIGNED
    assert set(BUILTIN_ADAPTERS) <= covered, set(BUILTIN_ADAPTERS) - covered
