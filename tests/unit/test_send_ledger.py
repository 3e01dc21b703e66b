"""The send ledger: a reply handed to its provider is not sent again by a restarted
ingest (a new dispatcher) that reads the same outbound record again, and its "sent"
report is the same as the first one.

The real adapters send to local stand-ins: Twilio's Messages API over HTTP and an SMTP
relay (aiosmtpd)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select

from services.ingest import send_ledger
from services.ingest.accounts import AccountDirectory
from services.ingest.adapters.email.smtp import SmtpEmailAdapter
from services.ingest.adapters.sms.twilio import TwilioConfig, TwilioSmsAdapter
from services.ingest.consent import ConsentDirectory
from services.ingest.dispatcher import OutboundDispatcher
from services.ingest.send_ledger import SendLedger
from services.router.delivery import DeliveryRouter
from shared.bus.memory import MemoryBus
from shared.bus.port import BusRecord
from shared.channels.attachments import MemoryAttachmentStore
from shared.channels.contract import Recorder, smtp_stand_in
from shared.channels.email.outbound import SmtpRelay
from shared.channels.protocol import ChannelAdapter, ChannelLimits, ChannelRuntime
from shared.channels.registry import ChannelRegistry
from shared.db.models import ChannelAccount as ChannelAccountRow
from shared.db.models import Message, SentReply
from shared.db.session import Database
from shared.events import (
    Channel,
    DeliveryStatusReported,
    Event,
    MessageDeliveryUpdated,
    OutboundEmail,
    OutboundMessageRequested,
    Topic,
    decode_event,
    encode_event,
)
from tests.conftest import add_conversation
from tests.twilio_stand_in import twilio_stand_in

ACCOUNT_SID = "AC" + "2" * 32
AUTH_TOKEN = "twilio-auth-token-ledger-0123456789"
OUR_NUMBER = "+15550002222"
CUSTOMER_NUMBER = "+15557650000"
CUSTOMER_EMAIL = "grace@example.com"


@dataclass(frozen=True)
class Provider:
    """A stand-in provider and the adapter that sends to it."""

    adapter: ChannelAdapter
    recorder: Recorder
    channel: Channel


@contextlib.contextmanager
def twilio_provider() -> Iterator[Provider]:
    with twilio_stand_in() as twilio:
        runtime = ChannelRuntime(
            services={TwilioConfig: TwilioConfig(api_base_url=twilio.base_url)}
        )
        yield Provider(TwilioSmsAdapter(runtime), twilio.recorder, Channel.SMS)


@contextlib.contextmanager
def smtp_provider() -> Iterator[Provider]:
    with smtp_stand_in() as (recorder, port):
        relay = SmtpRelay(host="127.0.0.1", port=port, start_tls=False)
        runtime = ChannelRuntime(services={SmtpRelay: relay})
        yield Provider(SmtpEmailAdapter(runtime), recorder, Channel.EMAIL)


PROVIDERS: dict[str, Callable[[], contextlib.AbstractContextManager[Provider]]] = {
    "sms-twilio": twilio_provider,
    "email-smtp": smtp_provider,
}


@pytest.fixture
async def twilio_account(
    database: Database, workspace_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> uuid.UUID:
    monkeypatch.setenv("TEST_LEDGER_TWILIO_SECRET", f"{ACCOUNT_SID}:{AUTH_TOKEN}")
    account_id = uuid.uuid4()
    async with database.sessions() as session:
        session.add(
            ChannelAccountRow(
                id=account_id,
                workspace_id=workspace_id,
                channel="sms",
                adapter="twilio",
                address=OUR_NUMBER,
                secret_ref="env:TEST_LEDGER_TWILIO_SECRET",
            )
        )
        await session.commit()
    return account_id


async def stored_reply(database: Database, workspace_id: uuid.UUID, channel: Channel) -> Message:
    """A conversation on ``channel`` with an agent's reply waiting to be sent."""
    async with database.sessions() as session:
        conversation = await add_conversation(
            session,
            workspace_id,
            channel=channel.value,
            thread_key=f"ledger-{uuid.uuid4().hex}",
            status="assigned",
        )
        reply = Message(
            id=uuid.uuid4(),
            workspace_id=workspace_id,
            conversation_id=conversation.id,
            channel=channel.value,
            direction="outbound",
            text="Your parcel left the warehouse.",
            delivery_status="queued",
        )
        session.add(reply)
        await session.commit()
    return reply


def outbound_of(
    reply: Message, channel: Channel, twilio_account: uuid.UUID
) -> OutboundMessageRequested:
    if channel is Channel.SMS:
        return OutboundMessageRequested(
            workspace_id=reply.workspace_id,
            conversation_id=reply.conversation_id,
            message_id=reply.id,
            channel=channel,
            recipient_address=CUSTOMER_NUMBER,
            text=reply.text,
            created_at=datetime.now(UTC),
            channel_account_id=twilio_account,
        )
    return OutboundMessageRequested(
        workspace_id=reply.workspace_id,
        conversation_id=reply.conversation_id,
        message_id=reply.id,
        channel=channel,
        recipient_address=CUSTOMER_EMAIL,
        text=reply.text,
        created_at=datetime.now(UTC),
        email=OutboundEmail(
            from_address="support@demo.omniroute.dev",
            subject="Re: Where is my parcel?",
            message_id=f"<{reply.id.hex}@demo.omniroute.dev>",
        ),
    )


def record_of(payload: OutboundMessageRequested, offset: int = 0) -> BusRecord:
    out = encode_event(
        Event.of(payload, source="test"),
        topic=Topic.OUTBOUND.value,
        key=f"{payload.workspace_id}:{payload.conversation_id}",
    )
    return BusRecord(
        topic=out.topic,
        partition=0,
        offset=offset,
        key=out.key,
        value=out.value,
        headers=out.headers,
    )


def provider_dispatcher(
    database: Database, bus: MemoryBus, adapter: ChannelAdapter
) -> OutboundDispatcher:
    """What ingest's start builds for provider channels: a new process, a new one."""
    return OutboundDispatcher(
        ChannelRegistry([adapter]),
        AccountDirectory(database),
        MemoryAttachmentStore(),
        ChannelLimits(),
        channels=set(Channel) - {Channel.WEBCHAT},
        bus=bus,
        consent=ConsentDirectory(database).refusal,
        ledger=SendLedger(database),
    )


def delivery_reports(bus: MemoryBus) -> list[DeliveryStatusReported]:
    return [
        e.data
        for e in (decode_event(r) for r in bus.records(Topic.DELIVERY.value))
        if isinstance(e.data, DeliveryStatusReported)
    ]


@pytest.mark.parametrize("provider_name", sorted(PROVIDERS))
async def test_a_restarted_dispatcher_does_not_send_a_sent_reply_again(
    provider_name: str,
    database: Database,
    workspace_id: uuid.UUID,
    twilio_account: uuid.UUID,
    memory_bus: MemoryBus,
) -> None:
    with PROVIDERS[provider_name]() as provider:
        reply = await stored_reply(database, workspace_id, provider.channel)
        record = record_of(outbound_of(reply, provider.channel, twilio_account))

        await provider_dispatcher(database, memory_bus, provider.adapter).handle([record])
        assert len(await provider.recorder.wait_for(1)) == 1
        # The process dies before its offsets were committed; the next one reads the
        # record again.
        await provider_dispatcher(database, memory_bus, provider.adapter).handle([record])
        assert len(await provider.recorder.wait_for(2, within_seconds=0.5)) == 1

    first, again = delivery_reports(memory_bus)
    assert (again.status, again.provider_message_id, again.adapter, again.occurred_at) == (
        first.status,
        first.provider_message_id,
        first.adapter,
        first.occurred_at,
    )
    assert first.status == "sent"
    assert first.provider_message_id
    await DeliveryRouter(database, memory_bus).handle(memory_bus.records(Topic.DELIVERY.value))
    async with database.sessions() as session:
        stored = await session.get(Message, reply.id)
        assert stored is not None
        assert stored.delivery_status == "sent"
        ledger_row = await session.get(SentReply, reply.id)
        assert ledger_row is not None
        assert ledger_row.provider_message_id == first.provider_message_id
    updates = [
        e.data
        for e in (decode_event(r) for r in memory_bus.records(Topic.EVENTS.value))
        if isinstance(e.data, MessageDeliveryUpdated) and e.data.message_id == reply.id
    ]
    assert [u.delivery_status for u in updates] == ["sent"]  # the repeat told nobody


async def test_a_batch_is_looked_up_in_one_query(
    database: Database,
    workspace_id: uuid.UUID,
    twilio_account: uuid.UUID,
    memory_bus: MemoryBus,
) -> None:
    replies = [await stored_reply(database, workspace_id, Channel.SMS) for _ in range(5)]
    records = [
        record_of(outbound_of(reply, Channel.SMS, twilio_account), offset=index)
        for index, reply in enumerate(replies)
    ]
    lookups: list[str] = []

    def count_lookups(*args: Any) -> None:
        statement = str(args[2])
        if statement.lstrip().upper().startswith("SELECT") and "sent_replies" in statement:
            lookups.append(statement)

    with twilio_provider() as provider:
        await provider_dispatcher(database, memory_bus, provider.adapter).handle(records[:2])
        event.listen(database.engine.sync_engine, "before_cursor_execute", count_lookups)
        try:
            await provider_dispatcher(database, memory_bus, provider.adapter).handle(records)
        finally:
            event.remove(database.engine.sync_engine, "before_cursor_execute", count_lookups)
        assert len(await provider.recorder.wait_for(6, within_seconds=0.5)) == 5

    assert len(lookups) == 1
    async with database.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(SentReply)) == 5


async def test_a_ledger_row_of_another_workspace_does_not_count(
    database: Database,
    workspace_id: uuid.UUID,
    twilio_account: uuid.UUID,
    memory_bus: MemoryBus,
) -> None:
    reply = await stored_reply(database, workspace_id, Channel.SMS)
    outbound = outbound_of(reply, Channel.SMS, twilio_account)
    other_workspace = outbound.model_copy(update={"workspace_id": uuid.uuid4()})
    ledger = SendLedger(database)
    assert await ledger.sent([outbound]) == {}
    await ledger.record(
        outbound, adapter="twilio", provider_message_id="SM1", now=datetime.now(UTC)
    )

    assert list(await ledger.sent([outbound])) == [reply.id]
    assert await ledger.sent([other_workspace]) == {}


async def test_rows_older_than_the_retention_are_pruned(
    database: Database,
    workspace_id: uuid.UUID,
    twilio_account: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(send_ledger, "PRUNE_EVERY", 3)  # the third write prunes
    old, kept, new = [
        outbound_of(
            await stored_reply(database, workspace_id, Channel.SMS), Channel.SMS, twilio_account
        )
        for _ in range(3)
    ]
    now = datetime.now(UTC)
    ledger = SendLedger(database, retention=timedelta(days=7))
    await ledger.record(
        old, adapter="twilio", provider_message_id="SM-old", now=now - timedelta(days=8)
    )
    await ledger.record(
        kept, adapter="twilio", provider_message_id="SM-kept", now=now - timedelta(days=6)
    )
    await ledger.record(new, adapter="twilio", provider_message_id="SM-new", now=now)

    assert set(await ledger.sent([old, kept, new])) == {kept.message_id, new.message_id}


def test_web_chat_has_no_send_ledger(database: Database) -> None:
    with pytest.raises(ValueError, match="web chat"):
        OutboundDispatcher(
            ChannelRegistry(),
            AccountDirectory(database),
            MemoryAttachmentStore(),
            ChannelLimits(),
            channels={Channel.WEBCHAT},
            ledger=SendLedger(database),
        )
