"""``/v1/ws``: live conversation pushes to agents, resumable by ``seq``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, WebSocket
from sqlalchemy import select

from services.agent_api.auth import verify_agent_token
from services.agent_api.deps import AgentApiState
from services.agent_api.realtime.hub import AgentConnection, frame_of, receives
from shared.db.models import OutboxEvent
from shared.events import Topic
from shared.outbox import event_of
from shared.websocket import BoundedSender, accept_authenticated, wait_until_disconnected

router = APIRouter()

REPLAY_LIMIT = 1000


@router.websocket("/v1/ws")
async def agent_socket(
    websocket: WebSocket,
    last_seq: Annotated[int | None, Query(ge=0, description="Resume after this seq.")] = None,
) -> None:
    """Authenticate with subprotocol ``bearer, <jwt>`` or a first ``auth`` frame.

    Frames: ``{"type": "conversation.assigned" | "message.created", "seq", "data"}``.
    Reconnect with ``?last_seq=<seq>`` to receive what was missed, then live frames.
    """
    state: AgentApiState = websocket.app.state.agent_api
    claims = await accept_authenticated(
        websocket, lambda token: verify_agent_token(token, state.settings)
    )
    if claims is None:
        return
    sender = BoundedSender(
        websocket, max_queued=state.settings.ws_send_queue_size, service="agent_api"
    )
    sender.start()
    connection = AgentConnection(claims.agent_id, claims.workspace_id, claims.role, sender)
    if last_seq is not None:
        connection.hold()
    state.hub.add(connection)
    try:
        if last_seq is not None:
            async with state.database.sessions() as session:
                rows = await session.scalars(
                    select(OutboxEvent)
                    .where(
                        OutboxEvent.workspace_id == claims.workspace_id,
                        OutboxEvent.topic == Topic.EVENTS.value,
                        OutboxEvent.id > last_seq,
                    )
                    .order_by(OutboxEvent.id)
                    .limit(REPLAY_LIMIT)
                )
                replay = [event_of(row) for row in rows]
            connection.finish_replay(
                [
                    frame
                    for event in replay
                    if receives(event, claims.agent_id, claims.role)
                    and (frame := frame_of(event)) is not None
                ]
            )
        sender.offer({"type": "ready", "agent_id": str(claims.agent_id)})
        await wait_until_disconnected(websocket, sender)
    finally:
        state.hub.remove(connection)
        await sender.close(1000, "bye")
