"""The send ledger on PostgreSQL and Apache Kafka: an outbound record a killed ingest
read, sent and never committed is delivered again to the next member of the consumer
group, and the reply is not sent a second time.

The dispatcher's delivery reports go to an in-process bus, so nothing is published on
the shared ``omni.delivery.v1``."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from devmode.seed import seed_demo
from services.ingest.send_ledger import SendLedger
from shared.bus.kafka import KafkaBus, KafkaConsumerSource
from shared.bus.memory import MemoryBus
from shared.bus.port import BusRecord
from shared.db.models import ChannelAccount as ChannelAccountRow
from shared.db.models import SentReply
from shared.db.session import Database
from shared.events import Channel, Event, encode_event
from tests.unit.test_send_ledger import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    OUR_NUMBER,
    delivery_reports,
    outbound_of,
    provider_dispatcher,
    stored_reply,
    twilio_provider,
)

pytestmark = pytest.mark.integration

DEADLINE_SECONDS = 20.0


@pytest.fixture
async def kafka_bus(kafka_bootstrap: str) -> AsyncIterator[KafkaBus]:
    bus = KafkaBus(kafka_bootstrap, client_id="omniroute-it-ledger", partitions=1)
    await bus.start()
    yield bus
    await bus.stop()


async def fetch_one(source: KafkaConsumerSource) -> list[BusRecord]:
    deadline = time.monotonic() + DEADLINE_SECONDS
    got: list[BusRecord] = []
    while not got:
        if time.monotonic() > deadline:
            pytest.fail(f"no record within {DEADLINE_SECONDS} s")
        got = await source.fetch(max_records=10, timeout_ms=200)
    return got


async def test_a_record_redelivered_to_the_group_is_not_sent_again(
    pg_database: Database,
    postgres_url: str,
    kafka_bus: KafkaBus,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workspace_id = await seed_demo(pg_database, slug=f"ledger-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("TEST_LEDGER_TWILIO_SECRET", f"{ACCOUNT_SID}:{AUTH_TOKEN}")
    account_id = uuid.uuid4()
    async with pg_database.sessions() as session:
        session.add(
            ChannelAccountRow(
                id=account_id,
                workspace_id=workspace_id,
                channel="sms",
                adapter="twilio",
                address=f"{OUR_NUMBER[:-4]}{uuid.uuid4().int % 10**4:04d}",
                secret_ref="env:TEST_LEDGER_TWILIO_SECRET",
            )
        )
        await session.commit()
    reply = await stored_reply(pg_database, workspace_id, Channel.SMS)
    outbound = outbound_of(reply, Channel.SMS, account_id)
    topic = f"it-ledger-{uuid.uuid4().hex[:12]}"
    group = f"it-ledger-{uuid.uuid4().hex[:12]}"
    await kafka_bus.ensure_topics([topic])
    await kafka_bus.publish(encode_event(Event.of(outbound, source="test"), topic=topic, key="k"))
    reports = MemoryBus()

    with twilio_provider() as provider:
        killed = kafka_bus.consumer([topic], group_id=group)
        await killed.start()
        try:
            records = await fetch_one(killed)
            await provider_dispatcher(pg_database, reports, provider.adapter).handle(records)
            assert len(provider.recorder.received) == 1
        finally:
            await killed.stop()  # nothing was noted as finished: no offset committed

        restarted_db = Database(postgres_url)  # the next process: its own pool
        restarted = kafka_bus.consumer([topic], group_id=group)
        await restarted.start()
        try:
            again = await fetch_one(restarted)
            assert [(r.partition, r.offset) for r in again] == [
                (r.partition, r.offset) for r in records
            ]
            await provider_dispatcher(restarted_db, reports, provider.adapter).handle(again)
            assert len(provider.recorder.received) == 1
        finally:
            await restarted.stop()
            await restarted_db.dispose()

    first, repeated = delivery_reports(reports)
    assert repeated.provider_message_id == first.provider_message_id
    async with pg_database.sessions() as session:
        row = await session.scalar(select(SentReply).where(SentReply.message_id == reply.id))
        assert row is not None
        assert (row.workspace_id, row.channel, row.adapter) == (workspace_id, "sms", "twilio")
        assert row.provider_message_id == first.provider_message_id


async def test_racing_records_of_the_same_reply_leave_one_row(pg_database: Database) -> None:
    workspace_id = await seed_demo(pg_database, slug=f"ledger-{uuid.uuid4().hex[:8]}")
    reply = await stored_reply(pg_database, workspace_id, Channel.SMS)
    outbound = outbound_of(reply, Channel.SMS, uuid.uuid4())
    ledger = SendLedger(pg_database)
    assert await ledger.sent([outbound]) == {}
    now = datetime.now(UTC)
    await asyncio.gather(
        *(
            ledger.record(outbound, adapter="twilio", provider_message_id=f"SM{n}", now=now)
            for n in range(5)
        )
    )
    found = await ledger.sent([outbound])
    assert list(found) == [reply.id]
    assert found[reply.id].sent_at == now
