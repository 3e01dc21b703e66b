"""Every inbound surface of ingest, in one app on SQLite and the in-process bus: the
channel accounts, and one genuine delivery per channel (the fault tests' fixtures)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import aiosmtplib
import httpx
import pytest

from devmode.seed import demo_support_address
from services.ingest.adapters.sms.twilio import signed_request_headers as twilio_signed
from services.ingest.adapters.social.meta import signed_request_headers as meta_signed
from services.ingest.app import create_app
from shared.bus.memory import MemoryBus
from shared.db.models import ChannelAccount
from shared.db.session import Database
from shared.events import MessageReceived, Topic, decode_event
from shared.settings import Settings
from tests.conftest import free_port, served
from tests.unit.test_email_mime import sample_email
from tests.unit.test_email_webhooks import (
    MAILGUN_ADDRESS,
    MAILGUN_KEY,
    SENDGRID_ADDRESS,
    SENDGRID_CREDENTIALS,
    mailgun_fields,
    sendgrid_auth,
    sendgrid_parsed_fields,
)
from tests.unit.test_sms_twilio import ACCOUNT_SID, AUTH_TOKEN, OUR_NUMBER, sms_fields
from tests.unit.test_social_meta import (
    ACCESS_TOKEN,
    APP_SECRET,
    PAGE_ID,
    raw,
    whatsapp_message,
)
from tests.unit.test_social_meta import SETTINGS as META_SETTINGS

PUBLIC = "https://ingest.faults.example"


@dataclass
class Ingest:
    """ingest serving every channel; ``accounts`` by adapter name."""

    client: httpx.AsyncClient
    bus: MemoryBus
    accounts: dict[str, uuid.UUID]
    smtp_port: int

    def published(self) -> list[MessageReceived]:
        return [
            e.data
            for e in (decode_event(r) for r in self.bus.records(Topic.INBOUND.value))
            if isinstance(e.data, MessageReceived)
        ]

    async def smtp(self, message: bytes, to: str = demo_support_address()) -> int:
        """Deliver over SMTP; the server's final reply code."""
        try:
            await aiosmtplib.send(
                message,
                sender="grace@example.com",
                recipients=[to],
                hostname="127.0.0.1",
                port=self.smtp_port,
                start_tls=False,
                timeout=10,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            return exc.recipients[0].code
        except aiosmtplib.SMTPResponseException as exc:
            return exc.code
        return 250

    async def twilio(self, fields: dict[str, str], *, url: str | None = None) -> httpx.Response:
        path = f"/v1/channels/twilio/{self.accounts['twilio']}"
        return await self.client.post(
            path,
            content=urlencode(fields).encode(),
            headers=twilio_signed(AUTH_TOKEN, url or PUBLIC + path, fields),
        )

    async def meta(self, body: bytes, *, secret: str = APP_SECRET) -> httpx.Response:
        return await self.client.post(
            f"/v1/channels/meta/{self.accounts['meta']}",
            content=body,
            headers=meta_signed(secret, body),
        )

    async def mailgun(self, fields: dict[str, str]) -> httpx.Response:
        return await self.client.post(
            f"/v1/channels/mailgun/{self.accounts['mailgun']}", data=fields
        )

    async def sendgrid(self, fields: dict[str, str]) -> httpx.Response:
        return await self.client.post(
            f"/v1/channels/sendgrid/{self.accounts['sendgrid']}",
            data=fields,
            headers=sendgrid_auth(),
        )

    async def chat_session(self) -> tuple[str, dict[str, str]]:
        opened = await self.client.post("/v1/webchat/demo/sessions", json={"display_name": "Grace"})
        assert opened.status_code == 201, opened.text
        body = opened.json()
        return body["session_id"], {"authorization": f"Bearer {body['session_token']}"}


async def add_accounts(
    database: Database, workspace_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> dict[str, uuid.UUID]:
    monkeypatch.setenv("FAULTS_TWILIO_SECRET", f"{ACCOUNT_SID}:{AUTH_TOKEN}")
    monkeypatch.setenv("FAULTS_META_SECRET", f"{APP_SECRET}:{ACCESS_TOKEN}")
    monkeypatch.setenv("FAULTS_MAILGUN_KEY", MAILGUN_KEY)
    monkeypatch.setenv("FAULTS_SENDGRID_AUTH", SENDGRID_CREDENTIALS)
    rows = {
        "twilio": ("sms", OUR_NUMBER, "env:FAULTS_TWILIO_SECRET", None),
        "meta": ("social", PAGE_ID, "env:FAULTS_META_SECRET", META_SETTINGS),
        "mailgun": ("email", MAILGUN_ADDRESS, "env:FAULTS_MAILGUN_KEY", None),
        "sendgrid": ("email", SENDGRID_ADDRESS, "env:FAULTS_SENDGRID_AUTH", None),
    }
    ids = {name: uuid.uuid4() for name in rows}
    async with database.sessions() as session:
        for name, (channel, address, secret_ref, settings) in rows.items():
            session.add(
                ChannelAccount(
                    id=ids[name],
                    workspace_id=workspace_id,
                    channel=channel,
                    adapter=name,
                    address=address,
                    secret_ref=secret_ref,
                    **({"settings": settings} if settings else {}),
                )
            )
        await session.commit()
    return ids


async def serve_ingest(
    settings: Settings,
    bus: MemoryBus,
    database: Database,
    accounts: dict[str, uuid.UUID],
    tmp_path: Path,
) -> AsyncIterator[Ingest]:
    smtp_port = free_port()
    tuned = settings.model_copy(
        update={
            "attachment_store_dir": tmp_path / "attachments",
            "smtp_listen_port": smtp_port,
            "public_base_url": PUBLIC,
            "email_max_message_bytes": 256 * 1024,
        }
    )
    async with (
        served(create_app(tuned, bus=bus, database=database)) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        yield Ingest(client, bus, accounts, smtp_port)


Delivery = Callable[[Ingest], Awaitable[int]]


def genuine_deliveries() -> dict[str, Delivery]:
    """One message per inbound surface; calling a delivery again redelivers the message
    as that provider would (Mailgun signs every attempt anew)."""

    async def twilio(ingest: Ingest) -> int:
        return (await ingest.twilio(sms_fields(sid="SM" + "f" * 32))).status_code

    async def meta(ingest: Ingest) -> int:
        return (await ingest.meta(raw(whatsapp_message(wamid="wamid.FAULTS4")))).status_code

    async def mailgun(ingest: Ingest) -> int:
        return (await ingest.mailgun(mailgun_fields())).status_code

    async def sendgrid(ingest: Ingest) -> int:
        return (await ingest.sendgrid(sendgrid_parsed_fields())).status_code

    async def smtp(ingest: Ingest) -> int:
        return await ingest.smtp(sample_email(message_id="<faults-smtp@example.com>"))

    return {
        "twilio": twilio,
        "meta": meta,
        "mailgun": mailgun,
        "sendgrid": sendgrid,
        "smtp": smtp,
    }


EXPECTED_PROVIDER_IDS = {
    "twilio": "SM" + "f" * 32,
    "meta": "wamid.FAULTS4",
    "mailgun": "<mg-1@example.com>",
    "sendgrid": "<sg-1@example.com>",
    "smtp": "<faults-smtp@example.com>",
}
