"""OpenTelemetry tracing: one customer message is one trace from HTTP through the bus and
the database to the WebSocket push; with tracing off nothing changes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy import select, text
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.types import Message as AsgiMessage
from starlette.websockets import WebSocket

from services.ingest.app import create_app
from services.router.worker import inbound_consumer
from shared import tracing
from shared.bus.consumer import ConsumerLoop
from shared.bus.memory import MemoryBus
from shared.bus.port import BusRecord, OutgoingRecord
from shared.db.models import Message
from shared.db.session import Database
from shared.events import Topic
from shared.settings import Settings

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def exporter(settings: Settings) -> Iterator[InMemorySpanExporter]:
    """Tracing on, exported synchronously into memory (before the database is created)."""
    memory = InMemorySpanExporter()
    assert tracing.configure_tracing(settings, service="test", exporter=memory)
    yield memory
    tracing.shutdown_tracing()


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    matching = [s for s in spans if s.name == name]
    assert len(matching) == 1, [s.name for s in spans]
    return matching[0]


def consumer_of(span: ReadableSpan) -> str:
    return str((span.attributes or {}).get("omniroute.consumer", ""))


def consumed_by(spans: Sequence[ReadableSpan], consumer: str) -> list[ReadableSpan]:
    return [s for s in spans if s.kind is SpanKind.CONSUMER and consumer_of(s) == consumer]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


async def run_until(loop: ConsumerLoop, done: Callable[[], Awaitable[bool]]) -> None:
    task = asyncio.create_task(loop.run())
    try:
        for _ in range(200):
            if await done():
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{loop.name} did not finish its work")
    finally:
        loop.request_stop()
        await asyncio.wait_for(task, 5)


@pytest.fixture
async def ingest(
    exporter: InMemorySpanExporter,
    settings: Settings,
    memory_bus: MemoryBus,
    database: Database,
    workspace_id: uuid.UUID,
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, bus=memory_bus, database=database)
    transport = httpx.ASGITransport(app=tracing.TracingMiddleware(app))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://ingest") as client,
    ):
        yield client


async def test_one_message_is_one_trace_from_http_to_the_websocket_push(
    exporter: InMemorySpanExporter,
    ingest: httpx.AsyncClient,
    memory_bus: MemoryBus,
    database: Database,
) -> None:
    opened = (await ingest.post("/v1/webchat/demo/sessions", json={})).json()
    exporter.clear()
    posted = await ingest.post(
        opened["messages_url"],
        json={"text": "Where is my order?"},
        headers={"authorization": f"Bearer {opened['session_token']}"},
    )
    assert posted.status_code == 202, posted.text

    async def stored() -> bool:
        async with database.sessions() as session:
            return await session.scalar(select(Message.id)) is not None

    await run_until(inbound_consumer(database, memory_bus), stored)
    pushed: list[BusRecord] = []

    async def hub_handle(records: Sequence[BusRecord]) -> None:  # as agent_api's hub would
        for record in records:
            with tracing.push_span(record.headers) as span:
                span.set_attribute("omniroute.test.offset", record.offset)
                pushed.append(record)

    async def all_pushed() -> bool:
        return len(pushed) == len(memory_bus.records(Topic.EVENTS.value))

    events_loop = ConsumerLoop(
        name="agent-api-events",
        source=memory_bus.consumer([Topic.EVENTS.value], group_id=None),
        handler=hub_handle,
        bus=memory_bus,
    )
    await run_until(events_loop, all_pushed)

    spans = exporter.get_finished_spans()
    http = one(spans, "POST /v1/webchat/sessions/{session_id}/messages")
    publish = one(spans, "send omni.inbound.v1")
    # Ingest's own loops (media fetcher, webhook fan-out) consume the same topics: pick each
    # span by the loop that processed it.
    consume = one(consumed_by(spans, "router-inbound"), "process omni.inbound.v1")
    ingest_loops = {span_id(s) for s in spans if consumer_of(s).startswith("ingest-")}
    db = [
        s
        for s in spans
        if s.kind is SpanKind.CLIENT
        and s.parent is not None  # a background worker's query is a root span
        and parent_id(s) not in ingest_loops
    ]
    emit = one(spans, "send omni.events.v1")
    consume_events = one(consumed_by(spans, "agent-api-events"), "process omni.events.v1")
    pushes = [s for s in spans if s.name == "websocket push"]

    assert {trace_id(s) for s in (http, publish, consume, *db, emit, consume_events, *pushes)} == {
        trace_id(http)
    }
    assert http.kind is SpanKind.SERVER
    assert http.parent is None
    assert http.attributes is not None
    assert http.attributes["http.response.status_code"] == 202
    assert http.attributes["http.route"] == "/v1/webchat/sessions/{session_id}/messages"
    assert publish.kind is SpanKind.PRODUCER
    assert parent_id(publish) == span_id(http)
    assert consume.kind is SpanKind.CONSUMER
    assert parent_id(consume) == span_id(publish)
    assert {"SELECT", "INSERT", "UPDATE"} <= {s.name for s in db}
    assert {parent_id(s) for s in db} == {span_id(consume)}
    assert all(s.attributes and s.attributes["db.system.name"] == "sqlite" for s in db)
    assert parent_id(emit) == span_id(consume)
    assert parent_id(consume_events) == span_id(emit)
    assert len(pushes) == len(pushed) >= 2  # conversation.assigned and message.created
    assert {parent_id(s) for s in pushes} == {span_id(consume_events)}

    [inbound] = memory_bus.records(Topic.INBOUND.value)
    traceparent = inbound.header("traceparent")
    assert traceparent is not None
    _, trace_hex, span_hex, _ = traceparent.decode().split("-")
    assert (trace_hex, span_hex) == (
        trace.format_trace_id(trace_id(http)),
        trace.format_span_id(span_id(publish)),
    )


async def test_an_incoming_traceparent_is_continued(
    exporter: InMemorySpanExporter, ingest: httpx.AsyncClient
) -> None:
    response = await ingest.post(
        "/v1/webchat/demo/sessions", json={}, headers={"traceparent": TRACEPARENT}
    )

    assert response.status_code == 201
    http = one(exporter.get_finished_spans(), "POST /v1/webchat/{workspace_slug}/sessions")
    assert trace.format_trace_id(trace_id(http)) == TRACEPARENT.split("-")[1]
    assert parent_id(http) == int(TRACEPARENT.split("-")[2], 16)
    assert http.attributes is not None
    assert http.attributes["omniroute.correlation_id"] == response.headers["x-correlation-id"]


async def test_health_and_metrics_are_not_traced(
    exporter: InMemorySpanExporter, ingest: httpx.AsyncClient
) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await ingest.get(path)).status_code == 200

    assert exporter.get_finished_spans() == ()


async def test_a_websocket_is_one_server_span_with_its_close_code(
    exporter: InMemorySpanExporter,
) -> None:
    async def restarting(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close(code=1012)

    app = tracing.TracingMiddleware(Starlette(routes=[WebSocketRoute("/ws/{room}", restarting)]))
    sent: list[AsgiMessage] = []

    async def receive() -> AsgiMessage:
        return {"type": "websocket.connect"}

    async def send(message: AsgiMessage) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws/lobby", "headers": [], "query_string": b""}
    await app(scope, receive, send)

    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"]
    span = one(exporter.get_finished_spans(), "WEBSOCKET /ws/{room}")
    assert span.kind is SpanKind.SERVER
    assert span.attributes is not None
    assert span.attributes["omniroute.websocket.close_code"] == 1012


async def test_a_batch_from_several_traces_links_every_producer(
    exporter: InMemorySpanExporter, memory_bus: MemoryBus
) -> None:
    for n in range(2):  # two publishes, each its own trace
        await memory_bus.publish_many([OutgoingRecord("t", b"k", f"{n}".encode())])
    records = memory_bus.records("t")
    exporter.clear()

    with tracing.consume_span("c", records):
        pass

    [consume] = exporter.get_finished_spans()
    assert consume.parent is None
    producers = [
        trace.get_current_span(tracing.context_from_headers(r.headers)).get_span_context()
        for r in records
    ]
    assert len({p.trace_id for p in producers}) == 2
    assert {(link.context.trace_id, link.context.span_id) for link in consume.links} == {
        (p.trace_id, p.span_id) for p in producers
    }


async def test_a_push_outside_the_events_trace_continues_it_and_links_the_current_span(
    exporter: InMemorySpanExporter,
) -> None:
    headers = (("traceparent", TRACEPARENT.encode()),)
    with tracing.consume_span("batch", [BusRecord("t", 0, 0, None, b"", ())]) as batch:
        with tracing.push_span(headers):
            pass

    push = one(exporter.get_finished_spans(), "websocket push")
    assert trace.format_trace_id(trace_id(push)) == TRACEPARENT.split("-")[1]
    assert [link.context.span_id for link in push.links] == [batch.get_span_context().span_id]


async def test_statements_outside_a_traced_operation_make_no_spans_and_errors_are_marked(
    exporter: InMemorySpanExporter, database: Database
) -> None:
    async with database.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
    assert exporter.get_finished_spans() == ()

    tracer = trace.get_tracer("test", tracer_provider=tracing._provider)
    with tracer.start_as_current_span("operation"), pytest.raises(Exception, match="no such"):
        async with database.engine.connect() as connection:
            await connection.execute(text("SELECT * FROM no_such_table"))

    failed = one(exporter.get_finished_spans(), "SELECT")
    assert failed.status.status_code is StatusCode.ERROR


async def test_with_tracing_off_nothing_is_added(memory_bus: MemoryBus, sqlite_url: str) -> None:
    assert not tracing.tracing_enabled()
    record = OutgoingRecord("t", b"k", b"v", (("ce_id", b"1"),))

    await memory_bus.publish_many([record])
    database = Database(sqlite_url)

    assert memory_bus.records("t")[0].headers == (("ce_id", b"1"),)
    assert not database.engine.sync_engine.dispatch.before_cursor_execute
    with tracing.consume_span("c", memory_bus.records("t")) as span:
        assert not span.is_recording()
    await database.dispose()


def test_tracing_is_off_unless_an_endpoint_is_configured(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert not tracing.configure_tracing(settings, service="ingest")
    assert not tracing.tracing_enabled()

    configured = settings.model_copy(
        update={"otel_exporter_otlp_endpoint": "http://127.0.0.1:4318"}
    )
    try:
        assert tracing.configure_tracing(configured, service="agent_api")
        assert tracing._provider is not None
        assert tracing._provider.resource.attributes["service.name"] == "omniroute-agent-api"
    finally:
        tracing.shutdown_tracing()
    assert not tracing.tracing_enabled()
    assert tracing._traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert tracing._traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"
