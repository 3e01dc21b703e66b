"""LeanWebSocketProtocol: uvicorn's WebSocket protocol with less kept per connection,
run through uvicorn with real clients: the handshake, frames both ways, close codes
either way, refusal before accept and 1012 on shutdown behave as before."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shared.websocket_protocol import LeanWebSocketProtocol
from tests.conftest import free_port


class EchoApp:
    """Accepts (offering back the client's first subprotocol), echoes text frames,
    closes with the code a frame ``close <code>`` names, refuses the path ``/refuse``;
    notes the disconnect events it receives."""

    def __init__(self) -> None:
        self.disconnects: list[MutableMapping[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert (await receive())["type"] == "websocket.connect"
        if scope["path"] == "/refuse":
            await send({"type": "websocket.close", "code": 1008})
            return
        offered = list(scope.get("subprotocols", []))
        await send({"type": "websocket.accept", "subprotocol": offered[0] if offered else None})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.disconnects.append(message)
                return
            text = message.get("text") or ""
            if text.startswith("close "):
                await send({"type": "websocket.close", "code": int(text.split()[1])})
                continue
            await send({"type": "websocket.send", "text": f"echo {text}"})


@contextlib.asynccontextmanager
async def serving(app: EchoApp) -> AsyncIterator[tuple[uvicorn.Server, str]]:
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, ws=LeanWebSocketProtocol
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield server, f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


async def until(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


async def test_frames_go_both_ways_and_the_client_close_reaches_the_app() -> None:
    app = EchoApp()
    async with serving(app) as (server, url):
        async with connect(url, subprotocols=["bearer", "tok"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "bearer"
            for i in range(20):
                await ws.send(f"m{i}")
            assert [await ws.recv() for _ in range(20)] == [f"echo m{i}" for i in range(20)]
            (protocol,) = server.server_state.connections
            assert isinstance(protocol, LeanWebSocketProtocol)
            # The handshake's response is let go once sent.
            assert "response" not in vars(protocol)
            assert "request" not in vars(protocol)
            await ws.close(4000, "done")
        await until(lambda: app.disconnects)
    assert app.disconnects[0]["code"] == 4000


async def test_the_app_close_code_reaches_the_client() -> None:
    app = EchoApp()
    async with serving(app) as (_, url), connect(url) as ws:
        await ws.send("close 4008")
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4008


async def test_a_close_before_accept_refuses_the_handshake() -> None:
    app = EchoApp()
    async with serving(app) as (_, url):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{url}/refuse"):
                pass
    assert refused.value.response.status_code == 403


async def test_shutdown_closes_open_sockets_with_1012() -> None:
    app = EchoApp()
    async with serving(app) as (server, url), connect(url) as ws:
        await ws.send("hello")
        assert await ws.recv() == "echo hello"
        server.should_exit = True
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1012
        await until(lambda: app.disconnects)
    assert app.disconnects[0]["code"] == 1012
