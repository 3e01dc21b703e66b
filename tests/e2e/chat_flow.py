"""The foundation's user journey, driven over real HTTP and WebSockets.

A customer writes in web chat; the online agent's WebSocket receives the assignment
and the message; the agent replies over REST; the customer's WebSocket receives it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from devmode.seed import DEMO_AGENTS, DEMO_PASSWORD


@dataclass(frozen=True)
class ChatRoundTrip:
    conversation_id: str
    agent_frames: list[dict[str, Any]]
    customer_frames: list[dict[str, Any]]
    reply_text: str


async def next_frame(
    ws: ClientConnection, *, frame_type: str, within_seconds: float = 30
) -> dict[str, Any]:
    """The next frame of ``frame_type``, skipping others (pongs, other events)."""

    async def wait() -> dict[str, Any]:
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            if frame.get("type") == frame_type:
                return frame

    return await asyncio.wait_for(wait(), within_seconds)


async def agent_token(api: httpx.AsyncClient, workspace: str) -> str:
    response = await api.post(
        "/v1/auth/token",
        json={"workspace": workspace, "email": DEMO_AGENTS[0].email, "password": DEMO_PASSWORD},
    )
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


async def chat_round_trip(ingest_url: str, api_url: str, *, workspace: str) -> ChatRoundTrip:
    ws_api = api_url.replace("http://", "ws://")
    ws_ingest = ingest_url.replace("http://", "ws://")
    async with (
        httpx.AsyncClient(base_url=api_url, timeout=30) as api,
        httpx.AsyncClient(base_url=ingest_url, timeout=30) as ingest,
    ):
        token = await agent_token(api, workspace)
        headers = {"authorization": f"Bearer {token}"}
        status = await api.put("/v1/me/status", json={"status": "online"}, headers=headers)
        status.raise_for_status()
        async with connect(f"{ws_api}/v1/ws", subprotocols=["bearer", token]) as agent_ws:  # type: ignore[list-item]
            await next_frame(agent_ws, frame_type="ready")
            opened = await ingest.post(
                f"/v1/webchat/{workspace}/sessions", json={"display_name": "Grace"}
            )
            assert opened.status_code == 201, opened.text
            session = opened.json()
            customer_auth = {"authorization": f"Bearer {session['session_token']}"}
            async with connect(f"{ws_ingest}{session['websocket_url']}") as customer_ws:
                await customer_ws.send(
                    json.dumps({"type": "auth", "token": session["session_token"]})
                )
                await next_frame(customer_ws, frame_type="ready")
                text = f"Where is my order? {uuid.uuid4().hex[:8]}"
                posted = await ingest.post(
                    session["messages_url"], json={"text": text}, headers=customer_auth
                )
                assert posted.status_code == 202, posted.text

                assigned = await next_frame(agent_ws, frame_type="conversation.assigned")
                created = await next_frame(agent_ws, frame_type="message.created")
                assert created["data"]["text"] == text
                conversation_id = assigned["data"]["conversation_id"]
                assert created["data"]["conversation_id"] == conversation_id

                reply_text = f"It ships today. {uuid.uuid4().hex[:8]}"
                replied = await api.post(
                    f"/v1/conversations/{conversation_id}/replies",
                    json={"text": reply_text},
                    headers=headers,
                )
                assert replied.status_code == 201, replied.text
                delivered = await next_frame(customer_ws, frame_type="message")
                own_echo = await next_frame(agent_ws, frame_type="message.created")
    return ChatRoundTrip(
        conversation_id=conversation_id,
        agent_frames=[assigned, created, own_echo],
        customer_frames=[delivered],
        reply_text=reply_text,
    )
