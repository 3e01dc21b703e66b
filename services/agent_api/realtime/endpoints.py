"""``/v1/ws``: live pushes for agents and supervisors, resumable by ``seq``."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, WebSocket
from sqlalchemy import select

from services.agent_api.auth import verify_agent_token
from services.agent_api.deps import AgentApiState
from services.agent_api.realtime.hub import SUPERVISOR_ROLES, AgentConnection
from shared.db.models import Consultation, Conversation
from shared.websocket import BoundedSender, accept_authenticated, wait_until_disconnected

router = APIRouter()


@router.websocket("/v1/ws")
async def agent_socket(
    websocket: WebSocket,
    last_seq: Annotated[
        int | None, Query(ge=0, description="Resume after this seq (the last one received).")
    ] = None,
) -> None:
    """Live events for the signed-in agent or supervisor.

    Authenticate with the subprotocols ``bearer, <jwt>`` or a first frame
    ``{"type": "auth", "token": "<jwt>"}``; an invalid or expired token closes with 4401.
    Frames: ``{"type", "seq", "event_id", "time", "correlation_id", "data"}`` with types
    conversation.assigned / unassigned / escalated / queued, message.created and
    supervisor.alert; ``ready`` once caught up, ``heartbeat`` periodically. Reconnect
    with ``?last_seq=<seq>``: what was missed arrives first, in order, then live frames,
    without gaps or repeats. Client frames: ``{"type": "ping"}``, and for supervisors
    ``{"type": "subscribe" | "unsubscribe", "conversation_id": "…"}`` to follow any
    conversation of the workspace. A client that stops reading is closed with 4008.
    """
    state: AgentApiState = websocket.app.state.agent_api
    claims = await accept_authenticated(
        websocket, lambda token: verify_agent_token(token, state.settings)
    )
    if claims is None or claims.agent_id is None:
        return
    agent_id = claims.agent_id
    sender = BoundedSender(
        websocket,
        max_queued=state.settings.ws_send_queue_size,
        service="agent_api",
        send_timeout=state.settings.ws_send_timeout_seconds,
        send_buffer_bytes=state.settings.ws_send_buffer_bytes,
    )
    sender.start()
    connection = AgentConnection(agent_id, claims.workspace_id, claims.role, sender)
    async with state.database.sessions() as session:
        connection.consulting = set(
            await session.scalars(
                select(Consultation.conversation_id).where(
                    Consultation.workspace_id == claims.workspace_id,
                    Consultation.consultant_agent_id == claims.agent_id,
                    Consultation.closed_at.is_(None),
                )
            )
        )

    async def on_frame(frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind not in ("subscribe", "unsubscribe"):
            return
        if claims.role not in SUPERVISOR_ROLES:
            sender.offer({"type": "error", "detail": "only supervisors can subscribe"})
            return
        try:
            conversation_id = uuid.UUID(str(frame.get("conversation_id")))
        except ValueError:
            sender.offer({"type": "error", "detail": "conversation_id must be a UUID"})
            return
        async with state.database.sessions() as session:
            exists = await session.scalar(
                select(Conversation.id).where(
                    Conversation.id == conversation_id,
                    Conversation.workspace_id == claims.workspace_id,
                )
            )
        if exists is None:
            sender.offer({"type": "error", "detail": f"no conversation {conversation_id}"})
            return
        if kind == "subscribe":
            connection.subscriptions.add(conversation_id)
        else:
            connection.subscriptions.discard(conversation_id)
        sender.offer({"type": f"{kind}d", "conversation_id": str(conversation_id)})

    try:
        await state.hub.connect(connection, after=last_seq)
        sender.offer(
            {"type": "ready", "agent_id": str(claims.agent_id), "seq": connection.position}
        )
        await wait_until_disconnected(websocket, sender, on_frame=on_frame)
    finally:
        state.hub.disconnect(connection)
        await sender.close(1000, "bye")
