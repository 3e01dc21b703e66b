"""A small client for the routing journeys: agents with live sockets, customers in chat."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from devmode.seed import DEMO_PASSWORD


@dataclass
class LiveSocket:
    """Collects every frame of a WebSocket in the background."""

    ws: ClientConnection
    frames: list[dict[str, Any]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        async def collect() -> None:
            with contextlib.suppress(Exception):
                async for raw in self.ws:
                    self.frames.append(json.loads(raw))

        self._task = asyncio.create_task(collect())

    async def wait_for(
        self, predicate: Any, *, within_seconds: float = 30, what: str = "frame"
    ) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + within_seconds
        while asyncio.get_running_loop().time() < deadline:
            for frame in self.frames:
                if predicate(frame):
                    return frame
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {what} within {within_seconds}s; got {self.frames}")


@dataclass
class AgentClient:
    email: str
    auth: dict[str, str]
    socket: LiveSocket

    async def assigned(self, conversation_id: str | None = None) -> dict[str, Any]:
        return await self.socket.wait_for(
            lambda f: (
                f["type"] == "conversation.assigned"
                and (conversation_id is None or f["data"]["conversation_id"] == conversation_id)
            ),
            what=f"conversation.assigned for {self.email}",
        )


@contextlib.asynccontextmanager
async def agent_online(
    api: httpx.AsyncClient, api_url: str, workspace: str, email: str, *, status: str = "online"
) -> AsyncIterator[AgentClient]:
    token = await api.post(
        "/v1/auth/token",
        json={"workspace": workspace, "email": email, "password": DEMO_PASSWORD},
    )
    token.raise_for_status()
    bearer = token.json()["access_token"]
    auth = {"authorization": f"Bearer {bearer}"}
    ws_url = api_url.replace("http://", "ws://") + "/v1/ws"
    async with connect(ws_url, subprotocols=["bearer", bearer]) as ws:  # type: ignore[list-item]
        socket = LiveSocket(ws)
        socket.start()
        await socket.wait_for(lambda f: f["type"] == "ready", what="ready")
        (await api.put("/v1/me/status", json={"status": status}, headers=auth)).raise_for_status()
        yield AgentClient(email, auth, socket)


@dataclass
class CustomerClient:
    session_id: str
    auth: dict[str, str]
    socket: LiveSocket
    ingest: httpx.AsyncClient

    async def write(self, text: str) -> None:
        response = await self.ingest.post(
            f"/v1/webchat/sessions/{self.session_id}/messages",
            json={"text": text},
            headers=self.auth,
        )
        assert response.status_code == 202, response.text

    async def told(self, fragment: str, *, within_seconds: float = 30) -> dict[str, Any]:
        return await self.socket.wait_for(
            lambda f: f["type"] == "message" and fragment in f["text"],
            within_seconds=within_seconds,
            what=f"customer message containing {fragment!r}",
        )


@contextlib.asynccontextmanager
async def customer_chat(
    ingest: httpx.AsyncClient, ingest_url: str, workspace: str
) -> AsyncIterator[CustomerClient]:
    opened = await ingest.post(f"/v1/webchat/{workspace}/sessions", json={"display_name": "Kim"})
    assert opened.status_code == 201, opened.text
    session = opened.json()
    ws_url = ingest_url.replace("http://", "ws://") + session["websocket_url"]
    async with connect(ws_url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": session["session_token"]}))
        socket = LiveSocket(ws)
        socket.start()
        await socket.wait_for(lambda f: f["type"] == "ready", what="ready")
        yield CustomerClient(
            session["session_id"],
            {"authorization": f"Bearer {session['session_token']}"},
            socket,
            ingest,
        )
