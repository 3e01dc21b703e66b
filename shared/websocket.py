"""WebSocket plumbing shared by the customer chat socket and the agent socket.

Tokens never travel in the URL: a client offers them as the subprotocol pair
``bearer, <token>`` or sends ``{"type": "auth", "token": "…"}`` as its first frame.
Every connection has a bounded send queue; a client that does not read fast enough is
closed with 4008 instead of growing the server's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from shared.metrics import WEBSOCKET_SLOW_CLIENTS_DROPPED
from shared.queues import SingleConsumerQueue

CLOSE_UNAUTHORIZED: Final = 4401
CLOSE_FORBIDDEN: Final = 4403
CLOSE_NOT_FOUND: Final = 4404
CLOSE_SLOW_CONSUMER: Final = 4008
CLOSE_SERVICE_RESTART: Final = 1012
CLOSE_UNSUPPORTED_DATA: Final = 1003
AUTH_FRAME_TIMEOUT_SECONDS: Final = 10.0

Claims = TypeVar("Claims")


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


class BoundedSender:
    """Frames to one client through a bounded queue, written by one task."""

    def __init__(self, websocket: WebSocket, *, max_queued: int, service: str) -> None:
        self.websocket = websocket
        self._queue: SingleConsumerQueue[str | None] = SingleConsumerQueue(max_queued)
        self._service = service
        self._task: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    def start(self) -> None:
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
            WEBSOCKET_SLOW_CLIENTS_DROPPED.labels(service=self._service).inc()
            self.closed.set()
            self._closing = asyncio.create_task(
                _close(self.websocket, CLOSE_SLOW_CONSUMER, "client too slow")
            )
            return False
        return True

    async def _write_loop(self) -> None:
        try:
            while True:
                frame = await self._queue.get()
                if frame is None:
                    return
                await self.websocket.send_text(frame)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            self.closed.set()

    async def close(self, code: int, reason: str) -> None:
        self.closed.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await _close(self.websocket, code, reason)


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
