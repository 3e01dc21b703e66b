"""HTTP pieces both HTTP services use: body size limit and health endpoints."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.metrics import metrics_endpoint
from shared.problems import PROBLEM_CONTENT_TYPE, status_title


class BodySizeLimitMiddleware:
    """Refuse request bodies above ``max_bytes`` with 413 before the endpoint reads them.

    Checks the declared Content-Length up front and counts streamed bytes too, so a
    chunked body cannot slip past the limit.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._refuse(scope, send, 400, "Content-Length is not a number.")
                    return
                if declared > self.max_bytes:
                    await self._refuse(scope, send, 413, self._too_large())
                    return
        received = 0
        refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Answer now and tell the app the client left, so it stops reading.
                    refused = True
                    await self._refuse(scope, send, 413, self._too_large())
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:  # the app's own answer to a refused body is dropped
                await send(message)

        await self.app(scope, limited_receive, guarded_send)

    def _too_large(self) -> str:
        return f"The request body is larger than {self.max_bytes} bytes."

    @staticmethod
    async def _refuse(scope: Scope, send: Send, status: int, detail: str) -> None:
        body = json.dumps(
            {
                "type": "about:blank",
                "title": status_title(status),
                "status": status,
                "detail": detail,
                "instance": scope.get("path", ""),
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


HealthCheck = Callable[[], Awaitable[bool]]
# Under the readinessProbe's timeoutSeconds (3 s): a dependency that accepts connections
# and never answers makes /readyz answer "not ready" instead of timing the probe out.
READY_CHECK_SECONDS = 2.0


def add_health_routes(app: FastAPI, checks: dict[str, HealthCheck]) -> None:
    """``/healthz`` (alive) and ``/readyz`` (every dependency answers, not shutting down)."""

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def bounded(check: HealthCheck) -> bool:
        try:
            return await asyncio.wait_for(check(), timeout=READY_CHECK_SECONDS)
        except TimeoutError:  # a dependency that accepts and never answers is not ready
            return False

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        # All at once, each bounded: the answer comes within the probe's timeout.
        answers = await asyncio.gather(*(bounded(check) for check in checks.values()))
        results = dict(zip(checks, answers, strict=True))
        shutting_down = bool(getattr(app.state, "shutting_down", False))
        ready = all(results.values()) and not shutting_down
        body = {
            "status": "ready" if ready else "unavailable",
            "checks": results,
            "shutting_down": shutting_down,
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)


# A NUL character or an unpaired UTF-16 surrogate cannot be stored as text in
# PostgreSQL (or encoded as UTF-8); they are refused at the door as bad input.
_NUL_ESCAPE = re.compile(rb"\\u0000", re.IGNORECASE)
_SURROGATE_ESCAPE = re.compile(rb"\\u(d[89ab][0-9a-f]{2})(\\u(d[c-f][0-9a-f]{2}))?", re.IGNORECASE)
_LONE_LOW_SURROGATE = re.compile(
    rb"(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def unstorable_text(raw: bytes) -> str | None:
    """Why ``raw`` (a request body, path or query) holds text we cannot store, or None."""
    if b"\x00" in raw or _NUL_ESCAPE.search(raw):
        return "Text must not contain NUL characters."
    for match in _SURROGATE_ESCAPE.finditer(raw):
        if match.group(2) is None:
            return "Text contains an unpaired UTF-16 surrogate."
    if _LONE_LOW_SURROGATE.search(raw):
        return "Text contains an unpaired UTF-16 surrogate."
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "The request is not valid UTF-8."
    return None


class StorableTextMiddleware:
    """Refuse (422) requests whose body, path or query carries text that cannot be
    stored, before any endpoint sees them: nothing is stored or published for them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        location = scope.get("raw_path") or scope.get("path", "").encode()
        problem = unstorable_text(unquote_to_bytes(location)) or unstorable_text(
            unquote_to_bytes(scope.get("query_string", b"").replace(b"+", b" "))
        )
        chunks: list[bytes] = []
        more = True
        while more and problem is None:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if problem is None:
            problem = unstorable_text(body)
        if problem is not None:
            await BodySizeLimitMiddleware._refuse(scope, send, 422, problem)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
