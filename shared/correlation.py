"""Correlation ids: one id follows a customer's message from HTTP through Kafka, the
database and the outbox to the WebSocket frame, and appears on every log line.

HTTP: taken from ``X-Correlation-ID`` (or ``X-Request-ID``) or minted, echoed back.
Kafka: the CloudEvents extension attribute ``correlationid`` (header
``ce_correlationid``), set from the current context when an event is created.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from contextvars import ContextVar

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CORRELATION_HEADER = "x-correlation-id"
_INCOMING_HEADERS = (b"x-correlation-id", b"x-request-id")
_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")

_current: ContextVar[str | None] = ContextVar("omniroute_correlation_id", default=None)


def current_correlation_id() -> str | None:
    return _current.get()


def new_correlation_id() -> str:
    return uuid.uuid4().hex


@contextlib.contextmanager
def correlation_scope(correlation_id: str | None) -> Iterator[str]:
    """Make ``correlation_id`` (or a new one) current for logs and new events."""
    value = correlation_id if correlation_id and _VALID.match(correlation_id) else None
    value = value or new_correlation_id()
    token = _current.set(value)
    with structlog.contextvars.bound_contextvars(correlation_id=value):
        try:
            yield value
        finally:
            _current.reset(token)


class CorrelationMiddleware:
    """Binds a correlation id per HTTP request or WebSocket and echoes it in responses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", []):
            if name in _INCOMING_HEADERS:
                incoming = value.decode("latin-1")
                break
        with correlation_scope(incoming) as correlation_id:

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    headers = list(message.get("headers", []))
                    headers.append((CORRELATION_HEADER.encode(), correlation_id.encode()))
                    message = {**message, "headers": headers}
                await send(message)

            await self.app(scope, receive, send_with_id)
