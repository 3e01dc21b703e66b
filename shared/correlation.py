"""Correlation ids: one id follows a customer's message from HTTP through Kafka, the
database and the outbox to the WebSocket frame, and appears on every log line.

HTTP: taken from ``X-Correlation-ID`` (or ``X-Request-ID``) or minted, echoed back.
Kafka: the CloudEvents extension attribute ``correlationid`` (header
``ce_correlationid``), set from the current context when an event is created.
"""

from __future__ import annotations

import re
import uuid
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


class CorrelationScope:
    """``with``: makes a correlation id current for logs and new events, then restores
    what was current before. A small object, not a generator: an agent WebSocket keeps
    its scope open for the socket's whole life, thousands of them per replica."""

    __slots__ = ("_log_tokens", "_token", "value")

    def __init__(self, correlation_id: str | None) -> None:
        valid = correlation_id if correlation_id and _VALID.match(correlation_id) else None
        self.value = valid or new_correlation_id()

    def __enter__(self) -> str:
        self._token = _current.set(self.value)
        self._log_tokens = structlog.contextvars.bind_contextvars(correlation_id=self.value)
        return self.value

    def __exit__(self, *exc_info: object) -> None:
        structlog.contextvars.reset_contextvars(**self._log_tokens)
        _current.reset(self._token)


def correlation_scope(correlation_id: str | None) -> CorrelationScope:
    """Make ``correlation_id`` (or a new one, when missing or malformed) current."""
    return CorrelationScope(correlation_id)


def incoming_correlation_id(scope: Scope) -> str | None:
    """The id a client sent with an HTTP request or WebSocket handshake, if any."""
    for name, value in scope.get("headers", []):
        if name in _INCOMING_HEADERS:
            incoming: str = value.decode("latin-1")
            return incoming
    return None


class CorrelationMiddleware:
    """Binds a correlation id per HTTP request or WebSocket and echoes it in responses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        with correlation_scope(incoming_correlation_id(scope)) as correlation_id:
            if scope["type"] == "websocket":  # no response headers to add to
                await self.app(scope, receive, send)
                return

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    headers = list(message.get("headers", []))
                    headers.append((CORRELATION_HEADER.encode(), correlation_id.encode()))
                    message = {**message, "headers": headers}
                await send(message)

            await self.app(scope, receive, send_with_id)
