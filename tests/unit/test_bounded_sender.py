"""A client that stops reading is cut off with 4008 instead of growing the server's memory."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import structlog.testing
import uvicorn
import uvloop
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketState
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from shared.websocket import (
    CLOSE_SLOW_CONSUMER,
    CONNECTION_EXTENSION,
    BoundedSender,
    WebSocketProtocol,
)
from tests.conftest import free_port


def dropped(service: str) -> float:
    return (
        REGISTRY.get_sample_value("omni_websocket_slow_clients_dropped_total", {"service": service})
        or 0.0
    )


async def eventually(condition: Callable[[], bool], within: float = 30) -> None:
    for _ in range(int(within / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


class StalledClient:
    """A peer whose socket never drains: every send blocks."""

    def __init__(self, scope: dict[str, Any] | None = None) -> None:
        self.scope = scope or {"type": "websocket"}
        self.application_state = WebSocketState.CONNECTED
        self.sent: list[str] = []
        self.closed_with: tuple[int, str] | None = None
        self._never = asyncio.Event()

    async def send_text(self, text: str) -> None:
        self.sent.append(text)
        await self._never.wait()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = (code, reason)
        self.application_state = WebSocketState.DISCONNECTED


class StalledServerClient(StalledClient):
    """As uvicorn behaves: the close frame also waits for room in the full socket."""

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.application_state = WebSocketState.DISCONNECTED
        await self._never.wait()
        self.closed_with = (code, reason)


class RecordingTransport(asyncio.Transport):
    """What the server hands over in the ``omniroute.transport`` extension."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        super().__init__()
        self.sock = sock
        self.aborted = asyncio.Event()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default

    def abort(self) -> None:
        self.aborted.set()


def with_transport(transport: asyncio.Transport) -> dict[str, Any]:
    return {"type": "websocket", "extensions": {CONNECTION_EXTENSION: {"transport": transport}}}


async def test_a_stalled_client_is_closed_with_4008_once_its_queue_is_full() -> None:
    client = StalledClient()
    before = dropped("test-queue")
    sender = BoundedSender(client, max_queued=3, service="test-queue")  # type: ignore[arg-type]
    sender.start()
    await asyncio.sleep(0)

    first = sender.offer({"n": 0})
    await asyncio.sleep(0.01)  # the writer takes it and blocks on the stalled socket
    accepted = [sender.offer({"n": i}) for i in range(1, 10)]
    await asyncio.wait_for(sender.closed.wait(), 5)
    await sender.close(1000, "test over")

    # One frame is stuck in the socket, three wait in the queue, the next overflows.
    assert first is True
    assert client.sent == ['{"n":0}']
    assert accepted[:3] == [True] * 3
    assert accepted[3:] == [False] * 6
    assert client.closed_with == (CLOSE_SLOW_CONSUMER, "client too slow")
    assert dropped("test-queue") == before + 1


async def test_a_send_that_never_completes_closes_the_client_with_4008_before_the_queue_fills() -> (
    None
):
    client = StalledClient()
    before = dropped("test-timeout")
    sender = BoundedSender(
        client,  # type: ignore[arg-type]
        max_queued=1000,
        service="test-timeout",
        send_timeout=0.05,
    )
    sender.start()
    assert sender.offer({"n": 0})
    assert sender.offer({"n": 1})

    await asyncio.wait_for(sender.closed.wait(), 5)
    await sender.close(1000, "test over")

    # Far from a full queue: the frame stuck in the socket is what gave the client away.
    assert client.sent == ['{"n":0}']
    assert client.closed_with == (CLOSE_SLOW_CONSUMER, "client too slow")
    assert dropped("test-timeout") == before + 1
    assert sender.offer({"n": 2}) is False


async def test_a_client_that_does_not_take_its_close_frame_has_its_connection_cut() -> None:
    transport = RecordingTransport()
    client = StalledServerClient(with_transport(transport))
    sender = BoundedSender(
        client,  # type: ignore[arg-type]
        max_queued=1000,
        service="test-cut",
        send_timeout=0.05,
    )
    sender.start()
    sender.offer({"n": 0})

    await asyncio.wait_for(transport.aborted.wait(), 5)
    await asyncio.wait_for(sender.close(1000, "test over"), 5)  # bounded too

    assert client.closed_with is None  # the close frame never got out
    assert sender.closed.is_set()


async def test_a_reading_client_gets_every_frame_in_order_and_is_never_cut() -> None:
    received: list[Any] = []
    transport = RecordingTransport()

    class ReadingClient(StalledClient):
        async def send_text(self, text: str) -> None:
            received.append(text)

    client = ReadingClient(with_transport(transport))
    before = dropped("test-reading")
    sender = BoundedSender(client, max_queued=3, service="test-reading", send_timeout=0.05)  # type: ignore[arg-type]
    sender.start()
    for i in range(50):
        assert sender.offer({"n": i})
        await asyncio.sleep(0)
    await asyncio.sleep(0.2)  # several send timeouts pass while idle

    assert received == [f'{{"n":{i}}}' for i in range(50)]
    assert not sender.closed.is_set()
    assert not transport.aborted.is_set()
    assert dropped("test-reading") == before
    await sender.close(1000, "test over")


@pytest.fixture
def connected_pair() -> Iterator[socket.socket]:
    server, client = socket.socketpair()
    with server, client:
        yield server


async def test_the_kernel_send_buffer_of_the_socket_is_capped(
    connected_pair: socket.socket,
) -> None:
    default = connected_pair.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    wanted = 8192
    assert default > 2 * wanted  # otherwise the test proves nothing
    client = StalledClient(with_transport(RecordingTransport(connected_pair)))
    sender = BoundedSender(
        client,  # type: ignore[arg-type]
        max_queued=3,
        service="test-sndbuf",
        send_buffer_bytes=wanted,
    )
    sender.start()

    # Linux doubles the value for its bookkeeping.
    assert wanted <= connected_pair.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) <= 2 * wanted
    await sender.close(1000, "test over")


@dataclass
class Stalled:
    """What happened to a client that stopped reading, on a real uvicorn server."""

    offered: list[bool]
    dropped: float
    why: list[str]
    seen: int


async def stall_a_reader_on_uvicorn(
    *, frames: int, send_timeout: float, ping_seconds: float | None = None
) -> Stalled:
    """uvicorn with WebSocketProtocol; a client whose library queue holds one frame, then
    stops reading; up to ``frames`` incompressible frames of 4 KB, one a millisecond,
    until the server drops the client (or after the last one, until it does)."""
    offered: list[bool] = []
    done = asyncio.Event()

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        sender = BoundedSender(
            websocket,
            max_queued=64,
            service="test-uvicorn",
            send_timeout=send_timeout,
            send_buffer_bytes=16384,
        )
        sender.start()
        while not sender.closed.is_set() and len(offered) < frames:
            frame = base64.b64encode(os.urandom(3000)).decode()
            offered.append(sender.offer({"pad": frame}))
            await asyncio.sleep(0.001)
        await sender.closed.wait()
        await sender.close(1000, "bye")
        done.set()

    port = free_port()
    config = uvicorn.Config(
        Starlette(routes=[WebSocketRoute("/ws", endpoint)]),
        host="127.0.0.1",
        port=port,
        log_config=None,
        ws=WebSocketProtocol,
        ws_ping_interval=ping_seconds,
        ws_ping_timeout=ping_seconds,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    before = dropped("test-uvicorn")
    try:
        with structlog.testing.capture_logs() as logs:
            await eventually(lambda: server.started)
            raw = socket.socket()
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            raw.connect(("127.0.0.1", port))
            raw.setblocking(False)
            client = await connect(
                f"ws://127.0.0.1:{port}/ws",
                sock=raw,
                max_queue=1,
                compression=None,
                ping_interval=None,
                close_timeout=1,
            )
            await asyncio.wait_for(done.wait(), 30)
            await eventually(lambda: not server.server_state.connections)  # cut, not lingering

        async def read_to_the_end() -> None:
            while True:
                await client.recv()

        # Reading again, the client gets what was already on its side, then the cut.
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(read_to_the_end(), 30)
    finally:
        server.should_exit = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(serving, 15)
    return Stalled(
        offered=offered,
        dropped=dropped("test-uvicorn") - before,
        why=[str(entry.get("why")) for entry in logs if "too slow" in str(entry.get("event"))],
        seen=closed.value.rcvd.code if closed.value.rcvd is not None else 1006,
    )


# The services run on uvloop (uvicorn's default when installed), whose transports are not
# asyncio.Transport subclasses; the test suite's loop is asyncio's.
LOOPS = pytest.mark.parametrize(
    "new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)


@LOOPS
def test_uvicorn_cuts_off_a_client_that_stops_reading_with_its_backlog_bounded(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """The kernel's buffers hold a bounded amount, the writer stalls, and the server closes
    the client (4008, counted) and cuts the connection."""
    with asyncio.Runner(loop_factory=new_loop) as runner:
        stalled = runner.run(stall_a_reader_on_uvicorn(frames=20_000, send_timeout=0.5))

    accepted = sum(stalled.offered)
    assert stalled.dropped == 1
    assert len(stalled.offered) < 20_000  # it stopped because the client was dropped
    # A stalled client costs its queue (64 frames) plus what the capped kernel buffer, the
    # transport's 64 KiB and the client's own socket hold: ~90 frames of 4 KB here. With
    # Linux autotuning the send buffer instead, the kernel alone takes ~700 more; an
    # unbounded server would hold all 20 000 (~80 MB).
    assert accepted < 200, accepted
    assert stalled.seen in (CLOSE_SLOW_CONSUMER, 1006)  # 1006: no close frame got through


@LOOPS
def test_a_client_that_does_not_answer_a_keepalive_ping_is_closed_as_too_slow(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """Three frames fill neither the queue nor the socket, and no send waits: the
    unanswered ping is what shows the client is not reading. uvicorn alone would close it
    with 1011, uncounted, and leave the connection to the client."""
    with asyncio.Runner(loop_factory=new_loop) as runner:
        stalled = runner.run(
            stall_a_reader_on_uvicorn(frames=3, send_timeout=1.0, ping_seconds=0.2)
        )

    assert stalled.offered == [True, True, True]
    assert stalled.dropped == 1
    assert stalled.why == ["no answer to a keepalive ping"]
    assert stalled.seen in (CLOSE_SLOW_CONSUMER, 1006)
