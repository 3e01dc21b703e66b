"""``/v1/ws``: live pushes for agents and supervisors, resumable by ``seq``.

:class:`~services.agent_api.app.AgentApi` calls :func:`agent_socket` ahead of its
middleware stack and routing (see there why); what the stack would give a socket, the
correlation id, it binds itself.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Final

from pydantic import Field, TypeAdapter, ValidationError
from sqlalchemy import select
from starlette.websockets import WebSocket

from services.agent_api.auth import AgentClaims, verify_agent_token
from services.agent_api.deps import AgentApiState
from services.agent_api.realtime.hub import SUPERVISOR_ROLES, AgentConnection
from shared.db.models import Consultation, Conversation
from shared.db.session import Database
from shared.websocket import (
    BoundedSender,
    accept_authenticated,
    refuse_handshake,
    wait_until_disconnected,
)

AGENT_SOCKET_PATH: Final = "/v1/ws"
# Stream positions are PostgreSQL bigints.
MAX_SEQ: Final = 2**63 - 1
_last_seq: TypeAdapter[int] = TypeAdapter(Annotated[int, Field(ge=0, le=MAX_SEQ)])


async def agent_socket(websocket: WebSocket) -> None:
    """Live events for the signed-in agent or supervisor.

    Authenticate with the subprotocols ``bearer, <jwt>`` or a first frame
    ``{"type": "auth", "token": "<jwt>"}``; an invalid or expired token closes with 4401.
    Frames: ``{"type", "seq", "event_id", "time", "correlation_id", "data"}`` with types
    conversation.assigned / unassigned / escalated / queued, message.created and
    supervisor.alert; ``ready`` once caught up, ``heartbeat`` periodically. Reconnect
    with ``?last_seq=<seq>``: what was missed arrives first, in order, then live frames,
    without gaps or repeats. A ``last_seq`` that is not an integer from 0 to ``MAX_SEQ``
    refuses the handshake (400, problem+json); one beyond the workspace's stream (e.g.
    kept across a database restore) is answered with a ``reset`` frame: refetch state
    over REST; live frames follow from the stream's end. Client frames:
    ``{"type": "ping"}``, and for supervisors
    ``{"type": "subscribe" | "unsubscribe", "conversation_id": "…"}`` to follow any
    conversation of the workspace. A client that stops reading is closed with 4008.
    """
    raw_last_seq = websocket.query_params.get("last_seq")
    try:
        last_seq = None if raw_last_seq is None else _last_seq.validate_python(raw_last_seq)
    except ValidationError:
        await refuse_handshake(
            websocket, 400, f"last_seq must be an integer from 0 to {MAX_SEQ} (a frame's seq)"
        )
        return
    state: AgentApiState = websocket.app.state.agent_api
    claims = await accept_authenticated(
        websocket, lambda token: verify_agent_token(token, state.settings)
    )
    if claims is None or claims.agent_id is None:
        return
    sender = BoundedSender(
        websocket,
        max_queued=state.settings.ws_send_queue_size,
        service="agent_api",
        send_timeout=state.settings.ws_send_timeout_seconds,
        send_buffer_bytes=state.settings.ws_send_buffer_bytes,
    )
    sender.start()
    connection = AgentConnection(claims.agent_id, claims.workspace_id, claims.role, sender)
    connection.consulting = await open_consultations(state.database, claims)

    async def on_frame(frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind not in ("subscribe", "unsubscribe"):
            return
        if connection.role not in SUPERVISOR_ROLES:
            sender.offer({"type": "error", "detail": "only supervisors can subscribe"})
            return
        try:
            conversation_id = uuid.UUID(str(frame.get("conversation_id")))
        except ValueError:
            sender.offer({"type": "error", "detail": "conversation_id must be a UUID"})
            return
        if not await conversation_exists(state.database, connection.workspace_id, conversation_id):
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
            {"type": "ready", "agent_id": str(connection.agent_id), "seq": connection.position}
        )
        await wait_until_disconnected(websocket, sender, on_frame=on_frame)
    finally:
        state.hub.disconnect(connection)
        await sender.close(1000, "bye")


async def open_consultations(database: Database, claims: AgentClaims) -> set[uuid.UUID]:
    """Conversations the agent was asked to consult on and that are still open. (Its own
    function, so the session is gone once the handshake read it, not kept by the socket.)"""
    async with database.sessions() as session:
        return set(
            await session.scalars(
                select(Consultation.conversation_id).where(
                    Consultation.workspace_id == claims.workspace_id,
                    Consultation.consultant_agent_id == claims.agent_id,
                    Consultation.closed_at.is_(None),
                )
            )
        )


async def conversation_exists(
    database: Database, workspace_id: uuid.UUID, conversation_id: uuid.UUID
) -> bool:
    async with database.sessions() as session:
        found = await session.scalar(
            select(Conversation.id).where(
                Conversation.id == conversation_id, Conversation.workspace_id == workspace_id
            )
        )
    return found is not None
