"""Web chat: our own widget protocol.

A customer opens a session (anonymous or with a name), posts messages over HTTP and
receives agents' replies over a WebSocket. The session is a signed token, so ingest
keeps no state: any replica verifies any session.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from pydantic import BaseModel, ConfigDict, Field

from shared.events import Channel, MessageReceived, Sender
from shared.websocket import TokenRejectedError

SESSION_TOKEN_ISSUER = "omniroute-webchat"  # noqa: S105 - issuer name
SESSION_TOKEN_ALGORITHM = "HS256"  # noqa: S105 - algorithm name
CLIENT_MESSAGE_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"


class SessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    display_name: str | None = Field(
        None, min_length=1, max_length=200, description="Name the customer gave, if any."
    )


class SessionCreated(BaseModel):
    session_id: str
    session_token: str = Field(description="Send as `Authorization: Bearer …`.")
    expires_at: datetime
    messages_url: str
    websocket_url: str


class ChatMessageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, description="The customer's message.")
    client_message_id: str | None = Field(
        None,
        pattern=CLIENT_MESSAGE_ID_PATTERN,
        description="Widget-chosen id; a retried POST with the same id is stored once.",
    )


class ChatMessageAccepted(BaseModel):
    message_id: str = Field(description="The provider message id the router dedupes on.")
    status: str = "accepted"


@dataclass(frozen=True)
class ChatSession:
    session_id: str
    workspace_id: uuid.UUID
    display_name: str | None


def new_session_id() -> str:
    return f"wcs_{uuid.uuid4().hex}"


def issue_session_token(
    session: ChatSession, *, secret: str, ttl: timedelta, now: datetime | None = None
) -> tuple[str, datetime]:
    issued = now or datetime.now(UTC)
    expires = issued + ttl
    claims = {
        "iss": SESSION_TOKEN_ISSUER,
        "sub": session.session_id,
        "ws": str(session.workspace_id),
        "name": session.display_name,
        "iat": issued,
        "exp": expires,
    }
    return jwt.encode(claims, secret, algorithm=SESSION_TOKEN_ALGORITHM), expires


def verify_session_token(token: str, *, secret: str) -> ChatSession:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[SESSION_TOKEN_ALGORITHM],
            issuer=SESSION_TOKEN_ISSUER,
            options={"require": ["exp", "iss", "sub", "ws"]},
        )
        workspace_id = uuid.UUID(str(claims["ws"]))
    except (jwt.PyJWTError, ValueError) as exc:
        raise TokenRejectedError("invalid or expired session token") from exc
    name = claims.get("name")
    return ChatSession(
        session_id=str(claims["sub"]),
        workspace_id=workspace_id,
        display_name=name if isinstance(name, str) else None,
    )


def normalize_message(
    session: ChatSession, request: ChatMessageRequest, *, received_at: datetime
) -> MessageReceived:
    """The normalized inbound event for one chat message; the session is the thread."""
    local_id = request.client_message_id or uuid.uuid4().hex
    return MessageReceived(
        workspace_id=session.workspace_id,
        channel=Channel.WEBCHAT,
        provider_message_id=f"{session.session_id}:{local_id}",
        thread_key=session.session_id,
        sender=Sender(address=session.session_id, display_name=session.display_name),
        text=request.text,
        received_at=received_at,
    )
