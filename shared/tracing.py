"""OpenTelemetry tracing across HTTP → Kafka → database → WebSocket, off unless configured.

Tracing is enabled by ``configure_tracing`` (``shared.serve`` calls it) when an OTLP
endpoint is configured: ``OMNI_OTEL_EXPORTER_OTLP_ENDPOINT`` or the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``. Until then every
hook below is a no-op that costs one ``None`` check.

The hooks, all written against the OpenTelemetry API (no instrumentation packages):

- ``TracingMiddleware``: a SERVER span per HTTP request or WebSocket connection, parented
  on an incoming W3C ``traceparent`` header (``shared.serve`` wraps every app in it).
- ``publish_span``: a PRODUCER span per ``publish_many`` call whose context is injected
  into every record as the ``traceparent`` (and ``tracestate``) Kafka header.
- ``consume_span``: a CONSUMER span per consumed batch (``shared.bus.consumer``), the
  child of the records' producer span when they share one, else a root span linked to
  every record's producer span (OpenTelemetry's batch-receive convention).
- ``instrument_engine``: a CLIENT span per SQL statement from SQLAlchemy engine events,
  recorded only inside a traced operation, so background polls (outbox sweeper, timers,
  health checks) do not flood the backend with root spans.
- ``push_span``: for a WebSocket hub, a span around pushing one consumed event, parented
  on the event's ``traceparent`` header.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue
from sqlalchemy import event
from sqlalchemy.engine import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.bus.port import BusRecord, OutgoingRecord
from shared.settings import Settings

TRACE_HEADERS: Final = ("traceparent", "tracestate")
UNTRACED_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})
MAX_LINKS: Final = 64
MAX_STATEMENT_CHARS: Final = 2000
_SPAN_ATTRIBUTE: Final = "_omni_otel_span"

_PROPAGATOR: Final = TraceContextTextMapPropagator()
_tracer: Tracer | None = None
_provider: TracerProvider | None = None


def tracing_enabled() -> bool:
    return _tracer is not None


def _traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for a collector base URL (as OTEL_EXPORTER_OTLP_ENDPOINT)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else f"{endpoint}/v1/traces"


def _otlp_exporter(settings: Settings) -> SpanExporter | None:
    standard = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not settings.otel_exporter_otlp_endpoint and not any(os.environ.get(n) for n in standard):
        return None
    # Imported only when tracing is on: the exporter pulls in protobuf and requests.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    if settings.otel_exporter_otlp_endpoint:
        return OTLPSpanExporter(endpoint=_traces_url(settings.otel_exporter_otlp_endpoint))
    return OTLPSpanExporter()  # reads the standard OTEL_EXPORTER_OTLP_* variables


def service_resource_name(settings: Settings, service: str) -> str:
    """``service.name`` of a service's spans, e.g. ``omniroute-agent-api``."""
    return f"{settings.service_name}-{service.replace('_', '-')}"


def configure_tracing(
    settings: Settings, *, service: str, exporter: SpanExporter | None = None
) -> bool:
    """Turn tracing on when an OTLP endpoint is configured (or ``exporter`` is given,
    e.g. the SDK's in-memory exporter in tests, exported synchronously). True if on."""
    global _tracer, _provider
    shutdown_tracing()
    processor: SpanProcessor
    if exporter is not None:
        processor = SimpleSpanProcessor(exporter)
    else:
        otlp = _otlp_exporter(settings)
        if otlp is None:
            return False
        processor = BatchSpanProcessor(otlp)
    resource = Resource.create(
        {
            "service.name": service_resource_name(settings, service),
            "service.namespace": settings.service_name,
            "deployment.environment.name": settings.environment.value,
        }
    )
    provider = TracerProvider(
        resource=resource,
        sampler=ParentBased(TraceIdRatioBased(settings.otel_traces_sample_ratio)),
    )
    provider.add_span_processor(processor)
    _provider = provider
    _tracer = provider.get_tracer("omniroute")
    return True


def shutdown_tracing() -> None:
    """Export what is buffered and turn tracing off (no-op when it is off)."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


# --- W3C trace context in record headers ---------------------------------------------


def _carrier(headers: Iterable[tuple[str, bytes]]) -> dict[str, str]:
    return {name: value.decode("latin-1") for name, value in headers if name in TRACE_HEADERS}


def context_from_headers(headers: Iterable[tuple[str, bytes]]) -> Context:
    """The trace context carried by a record's ``traceparent`` header (empty if none)."""
    return _PROPAGATOR.extract(_carrier(headers))


def _span_context(headers: Iterable[tuple[str, bytes]]) -> SpanContext:
    return trace.get_current_span(context_from_headers(headers)).get_span_context()


def trace_headers() -> tuple[tuple[str, bytes], ...]:
    """``traceparent``/``tracestate`` headers for the current span (empty when none)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return tuple((name, value.encode("latin-1")) for name, value in carrier.items())


def with_trace_headers(records: Sequence[OutgoingRecord]) -> list[OutgoingRecord]:
    """``records`` carrying the current trace context (replacing any they carried)."""
    injected = trace_headers()
    return [
        dataclasses.replace(
            record,
            headers=(*(h for h in record.headers if h[0] not in TRACE_HEADERS), *injected),
        )
        for record in records
    ]


@contextlib.contextmanager
def publish_span(
    records: Sequence[OutgoingRecord], *, system: str
) -> Iterator[Sequence[OutgoingRecord]]:
    """A PRODUCER span around publishing ``records``; yields them with ``traceparent``."""
    tracer = _tracer
    if tracer is None or not records:
        yield records
        return
    topics = sorted({record.topic for record in records})
    attributes: dict[str, AttributeValue] = {
        "messaging.system": system,
        "messaging.operation.type": "send",
        "messaging.batch.message_count": len(records),
    }
    if len(topics) == 1:
        attributes["messaging.destination.name"] = topics[0]
    name = f"send {topics[0]}" if len(topics) == 1 else "send"
    with tracer.start_as_current_span(name, kind=SpanKind.PRODUCER, attributes=attributes):
        yield with_trace_headers(records)


@contextlib.contextmanager
def consume_span(consumer: str, records: Sequence[BusRecord]) -> Iterator[Span]:
    """A CONSUMER span around processing one consumed batch.

    Parented on the records' producer span when they all carry the same one; otherwise
    a new trace linked to each record's producer span.
    """
    tracer = _tracer
    if tracer is None or not records:
        yield trace.INVALID_SPAN
        return
    producers: dict[tuple[int, int], SpanContext] = {}
    untraced = False
    for record in records:
        span_context = _span_context(record.headers)
        if span_context.is_valid:
            producers.setdefault((span_context.trace_id, span_context.span_id), span_context)
        else:
            untraced = True
    parent = Context()
    links: list[Link] = []
    if len(producers) == 1 and not untraced:  # one producer span for the whole batch
        parent = trace.set_span_in_context(trace.NonRecordingSpan(next(iter(producers.values()))))
    else:
        links = [Link(span_context) for span_context in list(producers.values())[:MAX_LINKS]]
    topics = sorted({record.topic for record in records})
    attributes: dict[str, AttributeValue] = {
        "messaging.operation.type": "process",
        "messaging.batch.message_count": len(records),
        "omniroute.consumer": consumer,
    }
    if len(topics) == 1:
        attributes["messaging.destination.name"] = topics[0]
    if len(records) == 1:
        attributes["messaging.destination.partition.id"] = str(records[0].partition)
        attributes["messaging.kafka.offset"] = records[0].offset
    name = f"process {topics[0]}" if len(topics) == 1 else "process"
    with tracer.start_as_current_span(
        name, context=parent, kind=SpanKind.CONSUMER, links=links, attributes=attributes
    ) as span:
        yield span


@contextlib.contextmanager
def push_span(
    headers: Iterable[tuple[str, bytes]],
    *,
    name: str = "websocket push",
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Iterator[Span]:
    """A span around pushing what one consumed event announced to WebSocket clients.

    ``headers`` are the event record's headers (``BusRecord.headers``). The span nests
    under the current (consumer) span when that is in the event's trace; otherwise it
    continues the event's trace and links the current span. Yields a span to annotate
    (a non-recording one when tracing is off), e.g. in agent_api's hub::

        for workspace, record in doorbells.items():  # the last record per workspace
            with push_span(record.headers) as span:
                span.set_attribute("omniroute.frames", await self.pull(workspace))
    """
    tracer = _tracer
    if tracer is None:
        yield trace.INVALID_SPAN
        return
    producer = _span_context(headers)
    current = trace.get_current_span().get_span_context()
    parent: Context | None = None  # the current context
    links: list[Link] = []
    if producer.is_valid and producer.trace_id != current.trace_id:
        parent = trace.set_span_in_context(trace.NonRecordingSpan(producer))
        if current.is_valid:
            links.append(Link(current))
    with tracer.start_as_current_span(
        name, context=parent, kind=SpanKind.INTERNAL, links=links, attributes=attributes
    ) as span:
        yield span


# --- HTTP and WebSocket ----------------------------------------------------------------


class TracingMiddleware:
    """A SERVER span per HTTP request or WebSocket connection (outermost ASGI layer).

    Health and metrics endpoints are not traced. The span continues an incoming W3C
    ``traceparent``; its trace id is bound to the log context as ``trace_id``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracer = _tracer
        kind = scope["type"]
        if tracer is None or kind not in ("http", "websocket") or scope["path"] in UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope.get("headers", [])
            if name in (b"traceparent", b"tracestate")
        }
        method = scope.get("method", "GET") if kind == "http" else "WEBSOCKET"
        attributes: dict[str, AttributeValue] = {
            "http.request.method": scope.get("method", "GET"),
            "url.path": scope["path"],
            "url.scheme": scope.get("scheme", "http"),
            "network.protocol.name": kind,
        }
        with tracer.start_as_current_span(
            method,
            context=_PROPAGATOR.extract(headers),
            kind=SpanKind.SERVER,
            attributes=attributes,
        ) as span:
            trace_id = trace.format_trace_id(span.get_span_context().trace_id)

            async def traced_send(message: Message) -> None:
                _observe(span, message)
                await send(message)

            with structlog.contextvars.bound_contextvars(trace_id=trace_id):
                try:
                    await self.app(scope, receive, traced_send)
                finally:
                    route = getattr(scope.get("route"), "path", None)
                    if isinstance(route, str):
                        span.set_attribute("http.route", route)
                        span.update_name(f"{method} {route}")


def _observe(span: Span, message: Message) -> None:
    kind = message["type"]
    if kind in ("http.response.start", "websocket.http.response.start"):
        status = int(message["status"])
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        for name, value in message.get("headers", ()):
            if name == b"x-correlation-id":
                span.set_attribute("omniroute.correlation_id", value.decode("latin-1"))
    elif kind == "websocket.accept":
        span.set_attribute("http.response.status_code", 101)
    elif kind == "websocket.close":
        span.set_attribute("omniroute.websocket.close_code", int(message.get("code", 1000)))


# --- database --------------------------------------------------------------------------


def instrument_engine(engine: Engine, *, system: str, namespace: str | None = None) -> None:
    """CLIENT spans for every SQL statement run inside a traced operation.

    Registers nothing when tracing is off. ``engine`` is the sync engine (for an
    ``AsyncEngine`` pass ``engine.sync_engine``).
    """
    if _tracer is None:
        return
    base: dict[str, AttributeValue] = {"db.system.name": system}
    if namespace:
        base["db.namespace"] = namespace

    def before(
        _conn: Any,
        _cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        tracer = _tracer
        if tracer is None or context is None:
            return
        if not trace.get_current_span().get_span_context().is_valid:
            return  # not inside a traced operation
        operation = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "SQL"
        attributes = {
            **base,
            "db.operation.name": operation,
            "db.query.text": statement[:MAX_STATEMENT_CHARS],
        }
        if executemany:
            attributes["db.operation.batch.size"] = len(parameters or ())
        span = tracer.start_span(operation, kind=SpanKind.CLIENT, attributes=attributes)
        setattr(context, _SPAN_ATTRIBUTE, span)

    def after(
        _conn: Any, _cursor: Any, _statement: str, _parameters: Any, context: Any, _many: bool
    ) -> None:
        span: Span | None = getattr(context, _SPAN_ATTRIBUTE, None)
        if span is not None:
            setattr(context, _SPAN_ATTRIBUTE, None)
            span.end()

    def failed(exception_context: Any) -> None:
        context = exception_context.execution_context
        span: Span | None = getattr(context, _SPAN_ATTRIBUTE, None)
        if span is not None:
            setattr(context, _SPAN_ATTRIBUTE, None)
            error = exception_context.original_exception
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            span.end()

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    event.listen(engine, "handle_error", failed)
