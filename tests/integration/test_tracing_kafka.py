"""Trace context crosses a real Kafka broker in record headers and reaches PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind
from sqlalchemy import text

from shared import tracing
from shared.bus.consumer import ConsumerLoop
from shared.bus.kafka import KafkaBus
from shared.bus.port import BusRecord, OutgoingRecord
from shared.db.session import Database
from shared.settings import Environment, Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    settings = Settings(environment=Environment.TEST)
    assert tracing.configure_tracing(settings, service="it", exporter=memory)
    yield memory
    tracing.shutdown_tracing()


@pytest.fixture
async def topic(kafka_bootstrap: str) -> AsyncIterator[str]:
    name = f"it-tracing-{uuid.uuid4().hex[:12]}"
    yield name
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        await admin.delete_topics([t for t in (name, f"{name}.dlq") if t in existing])
    finally:
        await admin.close()


def named(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    [span] = [s for s in spans if s.name == name]
    return span


def ids(context: SpanContext | None) -> tuple[int, int]:
    assert context is not None
    return int(context.trace_id), int(context.span_id)


async def test_the_trace_context_travels_in_kafka_headers_to_the_consumer_and_the_database(
    exporter: InMemorySpanExporter, kafka_bootstrap: str, topic: str, postgres_url: str
) -> None:
    database = Database(postgres_url)  # created with tracing on: its engine is instrumented
    bus = KafkaBus(kafka_bootstrap, client_id="omniroute-it-tracing", partitions=1)
    await bus.start()
    await bus.ensure_topics([topic])
    received: list[BusRecord] = []

    async def handler(records: Sequence[BusRecord]) -> None:
        async with database.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        received.extend(records)

    loop = ConsumerLoop(
        name="it-tracing", source=bus.consumer([topic], group_id=None), handler=handler, bus=bus
    )
    await loop.start()
    task = asyncio.create_task(loop.run())
    try:
        await bus.publish(OutgoingRecord(topic, b"key", b"value", (("ce_id", b"1"),)))
        for _ in range(200):
            if received:
                break
            await asyncio.sleep(0.05)
    finally:
        loop.request_stop()
        await asyncio.wait_for(task, 10)
        await bus.stop()
        await database.dispose()

    spans = exporter.get_finished_spans()
    publish = named(spans, f"send {topic}")
    consume = named(spans, f"process {topic}")
    select = named(spans, "SELECT")
    [record] = received
    assert record.header("ce_id") == b"1"
    traceparent = record.header("traceparent")
    assert traceparent is not None
    _, trace_hex, span_hex, _ = traceparent.decode().split("-")
    assert publish.kind is SpanKind.PRODUCER
    assert publish.attributes is not None
    assert publish.attributes["messaging.system"] == "kafka"
    assert (trace_hex, span_hex) == (
        trace.format_trace_id(ids(publish.context)[0]),
        trace.format_span_id(ids(publish.context)[1]),
    )
    assert consume.kind is SpanKind.CONSUMER
    assert consume.parent is not None
    assert (consume.parent.trace_id, consume.parent.span_id) == ids(publish.context)
    assert select.kind is SpanKind.CLIENT
    assert select.attributes is not None
    assert select.attributes["db.system.name"] == "postgresql"
    assert select.parent is not None
    assert (select.parent.trace_id, select.parent.span_id) == ids(consume.context)
