"""WebSocket plumbing shared by the customer chat socket and the agent socket.

Tokens never travel in the URL: a client offers them as the subprotocol pair
``bearer, <token>`` or sends ``{"type": "auth", "token": "…"}`` as its first frame.
Every connection has a bounded send queue; a client that does not read fast enough is
closed with 4008 instead of growing the server's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, TypeVar, cast

import orjson
import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from shared.metrics import WEBSOCKET_SLOW_CLIENTS_DROPPED
from shared.problems import problem_response
from shared.queues import SingleConsumerQueue
from shared.websocket_protocol import LeanWebSocketProtocol

log = structlog.get_logger(__name__)

CLOSE_UNAUTHORIZED: Final = 4401
CLOSE_FORBIDDEN: Final = 4403
CLOSE_NOT_FOUND: Final = 4404
CLOSE_SLOW_CONSUMER: Final = 4008
CLOSE_SERVICE_RESTART: Final = 1012
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_POLICY_VIOLATION: Final = 1008
AUTH_FRAME_TIMEOUT_SECONDS: Final = 10.0
DEFAULT_SEND_TIMEOUT_SECONDS: Final = 10.0
ROOM_POLL_SECONDS: Final = 0.005
CONNECTION_EXTENSION: Final = "omniroute.connection"

Claims = TypeVar("Claims")


async def refuse_handshake(websocket: WebSocket, status: int, detail: str) -> None:
    """Refuse the handshake with an HTTP ``status`` and a problem+json body saying why,
    where the server can answer a handshake with a response of its own (uvicorn's
    WebSocket denial response extension); elsewhere close with 1008 and ``detail`` as
    the reason (keep it within a close frame's 123 bytes)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(problem_response(websocket, status, detail))
    else:
        await websocket.close(CLOSE_POLICY_VIOLATION, detail)


class TokenRejectedError(Exception):
    """The token offered on a WebSocket is invalid or expired."""


def _subprotocol_token(websocket: WebSocket) -> str | None:
    offered = [
        p.strip()
        for header in websocket.headers.getlist("sec-websocket-protocol")
        for p in header.split(",")
    ]
    if len(offered) >= 2 and offered[0].lower() == "bearer":
        return offered[1]
    return None


async def accept_authenticated(
    websocket: WebSocket, verify: Callable[[str], Claims]
) -> Claims | None:
    """Accept the socket and authenticate it; on failure close it and return None."""
    token = _subprotocol_token(websocket)
    if token is not None:
        await websocket.accept(subprotocol="bearer")
    else:
        await websocket.accept()
        try:
            frame = await asyncio.wait_for(
                websocket.receive_json(), timeout=AUTH_FRAME_TIMEOUT_SECONDS
            )
        except (TimeoutError, ValueError, WebSocketDisconnect, KeyError):
            await _close(websocket, CLOSE_UNAUTHORIZED, "authentication required")
            return None
        if not isinstance(frame, dict) or frame.get("type") != "auth":
            await _close(websocket, CLOSE_UNAUTHORIZED, "first frame must be an auth frame")
            return None
        raw = frame.get("token")
        token = raw if isinstance(raw, str) else ""
    try:
        return verify(token)
    except TokenRejectedError as exc:
        await _close(websocket, CLOSE_UNAUTHORIZED, str(exc) or "invalid token")
        return None


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    if websocket.application_state != WebSocketState.DISCONNECTED:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close(code=code, reason=reason[:120])


class WebSocketProtocol(LeanWebSocketProtocol):
    """uvicorn's WebSocket protocol (``websockets``, sans-I/O; trimmed per connection by
    :class:`~shared.websocket_protocol.LeanWebSocketProtocol`) that shares its connection
    with the app through the scope extension ``omniroute.connection``.

    A client that stops reading leaves the server's writes in the kernel's send buffer,
    which Linux autotunes up to megabytes per socket, and a close frame cannot overtake
    them. With the transport, ``BoundedSender`` caps that buffer and cuts a connection
    whose client does not take its close frame in time. A client that does not answer a
    keepalive ping in time (``ws_ping_timeout``) is not reading either: uvicorn would
    close it with 1011 and then wait, without bound, for it to read what is queued ahead
    of that close frame; the app's ``on_unanswered_ping`` closes it as too slow instead.
    Run the services with ``uvicorn.Config(..., ws=WebSocketProtocol)``; under another
    server (or the test client) the extension is missing and only these bounds are lost."""

    async def run_asgi(self) -> None:
        self.scope.setdefault("extensions", {})[CONNECTION_EXTENSION] = {
            "transport": self.transport
        }
        await super().run_asgi()

    def keepalive_timeout(self) -> None:
        extension = self.scope.get("extensions", {}).get(CONNECTION_EXTENSION, {})
        handler = extension.get("on_unanswered_ping")
        if not callable(handler) or self.close_sent or self.transport.is_closing():
            super().keepalive_timeout()
            return
        self.pong_timer = None
        self.pending_ping_payload = None
        handler()


class ConnectionTransport(Protocol):
    """What ``BoundedSender`` uses of a transport: asyncio's and uvloop's (which does not
    derive from ``asyncio.Transport``) both have it."""

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...

    def abort(self) -> None: ...


def connection_extension(websocket: WebSocket) -> dict[object, object] | None:
    """The ``omniroute.connection`` extension, when the server provides it."""
    scope = getattr(websocket, "scope", None) or {}
    found = scope.get("extensions", {}).get(CONNECTION_EXTENSION)
    return found if isinstance(found, dict) else None


def transport_of(websocket: WebSocket) -> ConnectionTransport | None:
    """The connection's transport, when the server exposes it (``WebSocketProtocol``)."""
    found = (connection_extension(websocket) or {}).get("transport")
    if callable(getattr(found, "abort", None)) and callable(getattr(found, "get_extra_info", None)):
        return cast(ConnectionTransport, found)
    return None


class BoundedSender:
    """Frames to one client through a bounded queue, written by one task.

    A client that does not keep up is closed with 4008 (and counted in
    ``omni_websocket_slow_clients_dropped_total``) when its queue overflows, when a frame
    has waited ``send_timeout`` seconds for room in its socket, or when it leaves a
    keepalive ping unanswered (under ``WebSocketProtocol``). Beyond the queue, a
    client holds at most the transport's write buffer and the kernel's send buffer, which
    ``send_buffer_bytes`` caps (SO_SNDBUF) where the server exposes the transport. The
    close frame queues behind what the socket holds already: a client that does not take
    it within ``send_timeout`` has its connection cut (it sees 1006)."""

    def __init__(
        self,
        websocket: WebSocket,
        *,
        max_queued: int,
        service: str,
        send_timeout: float = DEFAULT_SEND_TIMEOUT_SECONDS,
        send_buffer_bytes: int = 0,
    ) -> None:
        self.websocket = websocket
        self._max_queued = max_queued
        self._queue: SingleConsumerQueue[str | None] = SingleConsumerQueue(max_queued)
        self._service = service
        self._send_timeout = send_timeout
        self._send_buffer_bytes = send_buffer_bytes
        self._transport = transport_of(websocket)
        self._task: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._sending_since: float | None = None
        self._watch: asyncio.TimerHandle | None = None
        self.closed = asyncio.Event()

    def start(self) -> None:
        extension = connection_extension(self.websocket)
        if extension is not None:
            extension["on_unanswered_ping"] = self._on_unanswered_ping
        if self._transport is not None and self._send_buffer_bytes > 0:
            sock = self._transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer_bytes)
        self._task = asyncio.create_task(self._write_loop())

    def offer(self, frame: dict[str, Any]) -> bool:
        """Queue a frame; a full queue means a slow client, which is disconnected."""
        return self.offer_text(orjson.dumps(frame).decode())

    def offer_text(self, frame: str) -> bool:
        """Queue a frame encoded already (one encoding shared by every receiver)."""
        if self.closed.is_set():
            return False
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self._drop("send queue full")
            return False
        return True

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                frame = await self._queue.get()
                if frame is None:
                    return
                self._sending_since = loop.time()
                if self._watch is None:
                    # One timer per timeout period at most, not one per frame.
                    self._watch = loop.call_later(self._send_timeout, self._check_stalled)
                await self.websocket.send_text(frame)
                self._sending_since = None
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            self._sending_since = None
            self.closed.set()

    async def wait_for_room(self, frames: int) -> bool:
        """Until ``frames`` more fit in the queue (at most all of it); False when the sender
        closed, or dropped the client for not taking a frame within ``send_timeout``."""
        needed = min(frames, self._max_queued)
        deadline = asyncio.get_running_loop().time() + self._send_timeout
        while self._queue.qsize() + needed > self._max_queued:
            if self.closed.is_set():
                return False
            if asyncio.get_running_loop().time() >= deadline:
                self._drop("queued frames not taken while catching up")
                return False
            await asyncio.sleep(ROOM_POLL_SECONDS)
        return not self.closed.is_set()

    def _check_stalled(self) -> None:
        self._watch = None
        since = self._sending_since
        if since is None or self.closed.is_set():
            return  # idle: the next send arms the watch again
        loop = asyncio.get_running_loop()
        waited = loop.time() - since
        if waited >= self._send_timeout:
            self._drop(f"no frame taken for {waited:.1f} s")
        else:
            self._watch = loop.call_later(self._send_timeout - waited, self._check_stalled)

    def _on_unanswered_ping(self) -> None:
        if not self.closed.is_set():
            self._drop("no answer to a keepalive ping")

    def _drop(self, why: str) -> None:
        WEBSOCKET_SLOW_CLIENTS_DROPPED.labels(service=self._service).inc()
        log.warning(
            "websocket client too slow, closing with 4008",
            service=self._service,
            why=why,
            queued=self._queue.qsize(),
        )
        self.closed.set()
        self._closing = asyncio.create_task(self._shut(CLOSE_SLOW_CONSUMER, "client too slow"))

    async def _shut(self, code: int, reason: str) -> None:
        """Stop writing, free what is queued, send the close frame, and cut the
        connection if the client has not taken it within ``send_timeout``."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        writer = self._task
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()  # it may wait for room in a socket that never drains
            await asyncio.wait({writer})
        while not self._queue.empty():
            self._queue.get_nowait()
        if self._transport is not None:
            # A no-op when the close handshake finished first.
            asyncio.get_running_loop().call_later(self._send_timeout, self._transport.abort)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_close(self.websocket, code, reason), self._send_timeout)

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code`` (or finish the 4008 close already under way)."""
        self.closed.set()
        if self._closing is None:
            self._closing = asyncio.create_task(self._shut(code, reason))
        await asyncio.wait({self._closing})


def is_ping(message: str) -> bool:
    """A client heartbeat: ``{"type": "ping"}``."""
    try:
        frame = orjson.loads(message)
    except orjson.JSONDecodeError:
        return False
    return isinstance(frame, dict) and frame.get("type") == "ping"


FrameHandler = Callable[[dict[str, Any]], Awaitable[None]]


async def wait_until_disconnected(
    websocket: WebSocket, sender: BoundedSender, *, on_frame: FrameHandler | None = None
) -> None:
    """Read client frames until the client or server closes: pings are answered with
    pongs, other JSON objects go to ``on_frame``, anything else is ignored.

    The frames are read in the caller's task (a socket lives for hours and every task it
    keeps costs memory). When the sender closes first (slow client, shutdown), the read
    is interrupted the way ``asyncio.timeout`` interrupts: this task is cancelled and the
    cancellation is absorbed here, while a cancellation from elsewhere propagates."""
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("wait_until_disconnected runs in a task")
    reading = True
    interrupted = False

    def interrupt(_: object) -> None:
        nonlocal interrupted
        if reading and not interrupted:
            interrupted = True
            task.cancel()

    watch = asyncio.create_task(sender.closed.wait())
    watch.add_done_callback(interrupt)
    try:
        await _read_frames(websocket, sender, on_frame)
    except asyncio.CancelledError:
        if interrupted and task.uncancel() == 0:
            return
        raise
    finally:
        reading = False
        watch.cancel()


async def _read_frames(
    websocket: WebSocket, sender: BoundedSender, on_frame: FrameHandler | None
) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            received = await websocket.receive()
            if received["type"] == "websocket.disconnect":
                return
            message = received.get("text")
            if message is None:  # a binary frame: the protocol is JSON text
                await _close(websocket, CLOSE_UNSUPPORTED_DATA, "send JSON text frames")
                return
            if is_ping(message):
                sender.offer({"type": "pong"})
            elif on_frame is not None:
                try:
                    frame = orjson.loads(message)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(frame, dict):
                    await on_frame(frame)
