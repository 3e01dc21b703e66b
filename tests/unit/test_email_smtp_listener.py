"""ingest's SMTP listener over real SMTP sessions (aiosmtplib client → aiosmtpd)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import func, select

from devmode.seed import demo_support_address
from services.ingest.app import create_app
from services.router.worker import InboundRouter
from shared.bus.memory import MemoryBus
from shared.bus.port import OutgoingRecord
from shared.db.models import Conversation, Message
from shared.db.session import Database
from shared.events import MessageReceived, Topic, decode_event
from shared.settings import Settings
from tests.conftest import free_port, served
from tests.unit.test_email_mime import MALFORMED, sample_email

SUPPORT = demo_support_address()
MAX_BYTES = 64 * 1024


@dataclass
class Listener:
    port: int
    bus: MemoryBus
    store: Path

    async def send(self, raw: bytes, *, to: Sequence[str] = (SUPPORT,)) -> int:
        """Deliver over SMTP; the server's final reply code."""
        try:
            await aiosmtplib.send(
                raw,
                sender="grace@example.com",
                recipients=list(to),
                hostname="127.0.0.1",
                port=self.port,
                start_tls=False,
                timeout=10,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            return exc.recipients[0].code
        except aiosmtplib.SMTPResponseException as exc:
            return exc.code
        return 250

    def published(self) -> list[MessageReceived]:
        return [
            e.data
            for e in (decode_event(r) for r in self.bus.records(Topic.INBOUND.value))
            if isinstance(e.data, MessageReceived)
        ]


async def listening(
    settings: Settings, bus: MemoryBus, database: Database, tmp_path: Path
) -> AsyncIterator[Listener]:
    port = free_port()
    tuned = settings.model_copy(
        update={
            "smtp_listen_port": port,
            "email_max_message_bytes": MAX_BYTES,
            "attachment_store_dir": tmp_path / "attachments",
        }
    )
    async with served(create_app(tuned, bus=bus, database=database)):
        yield Listener(port, bus, tmp_path / "attachments")


@pytest.fixture
async def listener(
    settings: Settings,
    memory_bus: MemoryBus,
    database: Database,
    workspace_id: uuid.UUID,
    tmp_path: Path,
) -> AsyncIterator[Listener]:
    async for running in listening(settings, memory_bus, database, tmp_path):
        yield running


async def test_an_email_is_answered_250_once_published(
    listener: Listener, workspace_id: uuid.UUID
) -> None:
    raw = sample_email(attachments=(("log.txt", b"line\n", "text/plain"),))

    code = await listener.send(raw)

    assert code == 250
    [message] = listener.published()
    assert message.workspace_id == workspace_id
    assert message.sender.address == "grace@example.com"
    assert message.email is not None
    assert message.email.recipient == SUPPORT
    [attachment] = message.attachments
    assert (listener.store / attachment.storage_key).read_bytes() == b"line\n"
    assert message.email.raw_storage_key is not None
    assert (listener.store / message.email.raw_storage_key).read_bytes() == raw


async def test_a_plus_address_reaches_the_account_with_its_token(listener: Listener) -> None:
    token_address = SUPPORT.replace("support@", "support+abcdefghijkmnpqr@")

    code = await listener.send(sample_email(to=token_address), to=[token_address])

    assert code == 250
    [message] = listener.published()
    assert message.email is not None
    assert message.email.reply_token == "abcdefghijkmnpqr"


async def test_unknown_recipients_are_refused_so_it_is_no_open_relay(listener: Listener) -> None:
    assert await listener.send(sample_email(), to=["someone@example.org"]) == 550
    assert await listener.send(sample_email(), to=["not an address"]) in (501, 553)
    assert listener.published() == []


async def test_the_bad_input_corpus_gets_smtp_5xx_and_publishes_nothing(
    listener: Listener,
) -> None:
    corpus = {
        **MALFORMED,
        "unknown charset": (
            b"From: a@example.com\r\nTo: " + SUPPORT.encode() + b"\r\n"
            b"Content-Type: text/plain; charset=x-klingon\r\n\r\nhi\r\n"
        ),
        "path traversal name": (
            b"From: a@example.com\r\nTo: " + SUPPORT.encode() + b"\r\n"
            b'Content-Type: multipart/mixed; boundary="q"\r\n\r\n--q\r\n'
            b"Content-Type: text/plain\r\n\r\nhi\r\n--q\r\n"
            b'Content-Disposition: attachment; filename="../../../etc/cron.d/x"\r\n\r\n'
            b"x\r\n--q--\r\n"
        ),
        "oversized": sample_email(text="y" * (MAX_BYTES + 100)),
    }
    codes = {name: await listener.send(raw) for name, raw in corpus.items()}

    assert {name: 500 <= code < 600 for name, code in codes.items()} == dict.fromkeys(
        corpus, True
    ), codes
    assert codes["oversized"] == 552
    assert codes["unknown charset"] == 554
    assert listener.published() == []


class UnavailableBus(MemoryBus):
    async def publish_many(self, records: Sequence[OutgoingRecord]) -> None:  # noqa: ARG002
        raise ConnectionError("broker down")


async def test_without_a_broker_ack_the_sender_is_told_to_retry(
    settings: Settings, database: Database, workspace_id: uuid.UUID, tmp_path: Path
) -> None:
    bus = UnavailableBus()
    async for running in listening(settings, bus, database, tmp_path):
        code = await running.send(sample_email())

    assert code == 451


async def test_an_email_delivered_three_times_is_one_message(
    listener: Listener, database: Database
) -> None:
    raw = sample_email(message_id="<thrice@example.com>")
    codes = [await listener.send(raw) for _ in range(3)]

    await InboundRouter(database, listener.bus).handle(listener.bus.records(Topic.INBOUND.value))

    async with database.sessions() as session:
        messages = await session.scalar(select(func.count()).select_from(Message))
        conversations = await session.scalar(select(func.count()).select_from(Conversation))
    assert codes == [250, 250, 250]
    assert len(listener.published()) == 3
    assert (messages, conversations) == (1, 1)
