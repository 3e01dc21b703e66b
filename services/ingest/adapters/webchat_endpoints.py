"""Web-chat endpoints: open a session, post messages, read history, receive replies live."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Header, Query, Request, WebSocket
from fastapi.responses import Response
from sqlalchemy import select
from starlette.requests import ClientDisconnect, HTTPConnection
from starlette.status import WS_1008_POLICY_VIOLATION

from services.ingest.adapters.channel_endpoints import inbound_request, refusal
from services.ingest.adapters.webchat import (
    ChatMessageAccepted,
    ChatMessageRequest,
    ChatSession,
    SessionCreated,
    SessionRequest,
    issue_session_token,
    new_session_id,
    verify_session_token,
)
from services.ingest.deps import IngestState, StateDep, ingest_state
from services.ingest.inbound import accept_delivery, channel_context
from shared.channels.protocol import ChannelRequestError
from shared.db.models import Conversation, Message, Workspace
from shared.events import Channel, MessageDirection
from shared.problems import ProblemError
from shared.rate_limit import retry_after_seconds
from shared.webchat_origins import is_own_origin
from shared.websocket import (
    CLOSE_NOT_FOUND,
    BoundedSender,
    TokenRejectedError,
    accept_authenticated,
    wait_until_disconnected,
)

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/v1/webchat", tags=["web chat"])


def _secret(ingest: IngestState) -> str:
    return ingest.settings.chat_session_secret.get_secret_value()


async def workspace_id_for(ingest: IngestState, slug: str) -> uuid.UUID:
    cached = ingest.workspace_ids.get(slug)
    if cached is not None:
        return cached
    async with ingest.database.sessions() as session:
        workspace_id = await session.scalar(select(Workspace.id).where(Workspace.slug == slug))
    if workspace_id is None:
        raise ProblemError(404, f"No workspace {slug!r}.")
    ingest.workspace_ids[slug] = workspace_id
    return workspace_id


def chat_session(
    session_id: str,
    ingest: StateDep,
    authorization: Annotated[str | None, Header(description="Bearer <session_token>")] = None,
) -> ChatSession:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ProblemError(
            401,
            "Send the session token as `Authorization: Bearer <session_token>`.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        session = verify_session_token(token.strip(), secret=_secret(ingest))
    except TokenRejectedError as exc:
        raise ProblemError(
            401, str(exc), headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        ) from exc
    if session.session_id != session_id:
        raise ProblemError(404, f"No chat session {session_id!r} for this token.")
    return session


SessionDep = Annotated[ChatSession, Depends(chat_session)]


async def origin_refused(
    ingest: IngestState, connection: HTTPConnection, workspace_id: uuid.UUID
) -> str | None:
    """Why a browser at the request's ``Origin`` may not use this workspace's chat; None
    when it may (no ``Origin``: not a browser's cross-site call; ingest's own pages)."""
    origin = connection.headers.get("origin")
    if origin is None or is_own_origin(
        origin,
        host_header=connection.headers.get("host"),
        public_base_url=ingest.settings.public_base_url,
    ):
        return None
    policy = await ingest.webchat_origins.policy(workspace_id)
    if policy.allows(origin):
        return None
    return f"Origin {origin[:200]!r} is not allowed for this workspace's web chat."


async def require_allowed_origin(
    ingest: IngestState, connection: HTTPConnection, workspace_id: uuid.UUID
) -> None:
    reason = await origin_refused(ingest, connection, workspace_id)
    if reason is not None:
        raise ProblemError(403, reason)


def take_message_token(ingest: IngestState, session: ChatSession) -> None:
    """One message of the session's per-minute allowance; 429 when it is used up."""
    wait = ingest.webchat_buckets.take(session.session_id)
    if wait > 0:
        retry_after = retry_after_seconds(wait)
        per_minute = ingest.webchat_buckets.per_minute
        raise ProblemError(
            429,
            f"More than {per_minute} messages per minute in this chat; retry in {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
        )


@router.post("/{workspace_slug}/sessions", status_code=201, response_model=SessionCreated)
async def open_session(
    workspace_slug: str, body: SessionRequest, ingest: StateDep, request: Request
) -> SessionCreated:
    """Open a customer chat session. The token authorizes posting and the WebSocket.

    A browser's ``Origin`` must be ingest's own or on the workspace's allow-list (403)."""
    settings = ingest.settings
    workspace_id = await workspace_id_for(ingest, workspace_slug)
    await require_allowed_origin(ingest, request, workspace_id)
    session = ChatSession(new_session_id(), workspace_id, body.display_name, body.email)
    token, expires = issue_session_token(
        session, secret=_secret(ingest), ttl=timedelta(seconds=settings.chat_session_ttl_seconds)
    )
    base = f"/v1/webchat/sessions/{session.session_id}"
    return SessionCreated(
        session_id=session.session_id,
        session_token=token,
        expires_at=expires,
        messages_url=f"{base}/messages",
        websocket_url=f"{base}/ws",
    )


@router.post(
    "/sessions/{session_id}/messages",
    status_code=202,
    response_model=ChatMessageAccepted,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ChatMessageRequest.model_json_schema()}},
        },
        "parameters": [
            {
                "name": "authorization",
                "in": "header",
                "required": True,
                "description": "Bearer <session_token>",
                "schema": {"type": "string"},
            }
        ],
    },
)
async def post_message(session_id: str, request: Request, ingest: StateDep) -> Response:
    """Send a customer message. Answered only after the broker acknowledged it.

    Refused with nothing stored: a browser ``Origin`` not allowed for the workspace
    (403); more messages than the session's per-minute allowance (429, ``Retry-After``)."""
    session = chat_session(session_id, ingest, request.headers.get("authorization"))
    await require_allowed_origin(ingest, request, session.workspace_id)
    take_message_token(ingest, session)
    adapter = ingest.registry.get(Channel.WEBCHAT.value)
    try:
        body = await request.body()
    except ClientDisconnect:  # the body limit already answered 413 (or the client left)
        return Response(status_code=400)
    try:
        ctx = channel_context(ingest, None)
        messages = await accept_delivery(ingest, adapter, inbound_request(request, body), ctx)
    except ChannelRequestError as error:
        if error.status == 503:
            error.detail = (
                "The message could not be stored yet; retry with the same client_message_id."
            )
        return refusal(request, adapter, error)
    answer = adapter.acknowledge(messages)
    return Response(answer.body, status_code=answer.status, media_type=answer.content_type)


@router.get("/sessions/{session_id}/messages")
async def history(
    session: SessionDep,
    ingest: StateDep,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
) -> dict[str, Any]:
    """The conversation as the customer sees it (no internal notes), oldest first."""
    await require_allowed_origin(ingest, request, session.workspace_id)
    async with ingest.database.sessions() as db:
        conversation_id = await db.scalar(
            select(Conversation.id)
            .where(
                Conversation.workspace_id == session.workspace_id,
                Conversation.channel == Channel.WEBCHAT.value,
                Conversation.thread_key == session.session_id,
            )
            .order_by(Conversation.created_at.desc())
            .limit(1)
        )
        messages = (
            []
            if conversation_id is None
            else list(
                await db.scalars(
                    select(Message)
                    .where(
                        Message.workspace_id == session.workspace_id,
                        Message.conversation_id == conversation_id,
                        # System notices (queue position, handoffs) reached the
                        # customer too; internal notes never did.
                        Message.direction.in_(
                            [
                                MessageDirection.INBOUND.value,
                                MessageDirection.OUTBOUND.value,
                                MessageDirection.SYSTEM.value,
                            ]
                        ),
                    )
                    .order_by(Message.created_at, Message.id)
                    .limit(limit)
                )
            )
        )
    return {
        "conversation_id": str(conversation_id) if conversation_id else None,
        "messages": [
            {
                "message_id": str(m.id),
                "direction": m.direction,
                "text": m.text,
                "created_at": m.created_at.isoformat(),
            }
            for m in messages
        ],
    }


@router.websocket("/sessions/{session_id}/ws")
async def customer_socket(websocket: WebSocket, session_id: str) -> None:
    """Agents' replies, pushed live. Authenticate with subprotocol or first frame."""
    ingest = ingest_state(websocket)
    secret = _secret(ingest)
    session = await accept_authenticated(
        websocket, lambda token: verify_session_token(token, secret=secret)
    )
    if session is None:
        return
    if session.session_id != session_id:
        await websocket.close(code=CLOSE_NOT_FOUND, reason="unknown session")
        return
    if await origin_refused(ingest, websocket, session.workspace_id) is not None:
        await websocket.close(code=WS_1008_POLICY_VIOLATION, reason="origin not allowed")
        return
    hub = ingest.webchat
    sender = BoundedSender(
        websocket,
        max_queued=ingest.settings.ws_send_queue_size,
        service="ingest",
        send_timeout=ingest.settings.ws_send_timeout_seconds,
        send_buffer_bytes=ingest.settings.ws_send_buffer_bytes,
    )
    sender.start()
    hub.add(session_id, sender)
    try:
        sender.offer({"type": "ready", "session_id": session_id})
        await wait_until_disconnected(websocket, sender)
    finally:
        hub.remove(session_id, sender)
        await sender.close(1000, "bye")
