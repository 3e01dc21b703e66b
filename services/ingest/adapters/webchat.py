"""Web chat: our own widget protocol, as a channel adapter of the SDK.

A customer opens a session (anonymous or with a name and email), posts messages over
HTTP and receives agents' replies over a WebSocket. The session is a signed token, so
ingest keeps no state: any replica verifies any session. An email given at the start
is a contact identity: the chat and that customer's emails are one contact.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.ingest.webchat_hub import WebChatHub
from shared.channels.identities import InvalidIdentityError, normalize_email
from shared.channels.protocol import (
    BaseChannelAdapter,
    ChannelContext,
    ChannelRequestError,
    ChannelRuntime,
    InboundRequest,
    ProviderResponse,
    SendResult,
    Verification,
)
from shared.events import (
    Channel,
    IdentityClaim,
    IdentityKind,
    MessageReceived,
    OutboundMessageRequested,
    Sender,
)
from shared.websocket import TokenRejectedError

SESSION_TOKEN_ISSUER = "omniroute-webchat"  # noqa: S105 - issuer name
SESSION_TOKEN_ALGORITHM = "HS256"  # noqa: S105 - algorithm name
CLIENT_MESSAGE_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"


class SessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    display_name: str | None = Field(
        None, min_length=1, max_length=200, description="Name the customer gave, if any."
    )
    email: str | None = Field(
        None,
        max_length=320,
        description="Email the customer gave, if any: their emails and this chat are one contact.",
    )

    @field_validator("email")
    @classmethod
    def _email_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return normalize_email(value)
        except InvalidIdentityError as exc:
            raise ValueError("not an email address") from exc


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
    email: str | None = None


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
        "email": session.email,
        "iat": issued,
        "exp": expires,
    }
    return jwt.encode(claims, secret, algorithm=SESSION_TOKEN_ALGORITHM), expires


def _decode_session_token(token: str, *, secret: str) -> tuple[ChatSession, float]:
    """The session a token proves and its expiry (epoch seconds); TokenRejectedError."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[SESSION_TOKEN_ALGORITHM],
            issuer=SESSION_TOKEN_ISSUER,
            options={"require": ["exp", "iss", "sub", "ws"]},
        )
        workspace_id = uuid.UUID(str(claims["ws"]))
        expires = float(claims["exp"])
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise TokenRejectedError("invalid or expired session token") from exc
    name = claims.get("name")
    email = claims.get("email")
    session = ChatSession(
        session_id=str(claims["sub"]),
        workspace_id=workspace_id,
        display_name=name if isinstance(name, str) else None,
        email=email if isinstance(email, str) else None,
    )
    return session, expires


class VerifiedSessionTokens:
    """Tokens whose signature was checked already, with their session and expiry.

    A chat posts many messages with one token; checking its HMAC and claims once and
    then only its expiry saves most of a message's CPU in ingest. Keyed by secret and
    token (an exact byte match of a token that verified), bounded (least recently used
    out), and an expired token is refused from the cache as it would be by a decode.
    """

    def __init__(self, *, max_entries: int = 10_000) -> None:
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], tuple[ChatSession, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def verify(self, token: str, *, secret: str, now: float | None = None) -> ChatSession:
        key = (secret, token)
        entry = self._entries.get(key)
        if entry is None:
            entry = _decode_session_token(token, secret=secret)
            self._entries[key] = entry
            if len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        session, expires = entry
        if expires <= (time.time() if now is None else now):
            self._entries.pop(key, None)
            raise TokenRejectedError("invalid or expired session token")
        return session


_verified_tokens = VerifiedSessionTokens()


def verify_session_token(token: str, *, secret: str) -> ChatSession:
    """The chat session a signed token proves; TokenRejectedError when it does not."""
    return _verified_tokens.verify(token, secret=secret)


def normalize_message(
    session: ChatSession, request: ChatMessageRequest, *, received_at: datetime
) -> MessageReceived:
    """The normalized inbound event for one chat message; the session is the thread."""
    local_id = request.client_message_id or uuid.uuid4().hex
    identities = (
        (IdentityClaim(kind=IdentityKind.EMAIL, address=session.email),) if session.email else ()
    )
    return MessageReceived(
        workspace_id=session.workspace_id,
        channel=Channel.WEBCHAT,
        provider_message_id=f"{session.session_id}:{local_id}",
        thread_key=session.session_id,
        sender=Sender(
            address=session.session_id,
            display_name=session.display_name,
            identities=identities,
        ),
        text=request.text,
        received_at=received_at,
    )


@dataclass(frozen=True)
class WebChatConfig:
    session_secret: str
    max_message_chars: int = 4000


def _unauthorized(detail: str, challenge: str) -> ChannelRequestError:
    return ChannelRequestError(401, detail, headers={"WWW-Authenticate": challenge})


class WebChatAdapter(BaseChannelAdapter):
    """Inbound: a message POSTed by the widget. Outbound: a frame to the session's sockets."""

    name = "webchat"
    channel = Channel.WEBCHAT

    def __init__(self, runtime: ChannelRuntime) -> None:
        self._config = runtime.service(WebChatConfig)
        self._hub = runtime.service(WebChatHub)

    def session_of(self, request: InboundRequest) -> ChatSession:
        """The chat session the request's bearer token proves; 401/404 otherwise."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized(
                "Send the session token as `Authorization: Bearer <session_token>`.", "Bearer"
            )
        try:
            session = verify_session_token(token.strip(), secret=self._config.session_secret)
        except TokenRejectedError as exc:
            raise _unauthorized(str(exc), 'Bearer error="invalid_token"') from exc
        session_id = request.path_params.get("session_id")
        if session.session_id != session_id:
            raise ChannelRequestError(404, f"No chat session {session_id!r} for this token.")
        return session

    async def verify(self, request: InboundRequest, ctx: ChannelContext) -> Verification:  # noqa: ARG002
        self.session_of(request)
        return Verification()

    async def parse(self, request: InboundRequest, ctx: ChannelContext) -> list[MessageReceived]:
        session = self.session_of(request)
        if request.content_type.split(";", 1)[0].strip().lower() != "application/json":
            raise ChannelRequestError(422, "Send the message as JSON (application/json).")
        try:
            document = json.loads(request.body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ChannelRequestError(400, "The request body is not valid JSON.") from exc
        try:
            body = ChatMessageRequest.model_validate(document)
        except ValidationError as exc:
            fields = ", ".join(
                ".".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in exc.errors()[:5]
            )
            raise ChannelRequestError(
                422, f"The request does not match the schema ({fields or 'body'})."
            ) from exc
        if len(body.text) > self._config.max_message_chars:
            raise ChannelRequestError(
                422, f"The message is longer than {self._config.max_message_chars} characters."
            )
        if not body.text.strip():
            raise ChannelRequestError(422, "The message is empty.")
        return [normalize_message(session, body, received_at=ctx.now)]

    async def send(self, message: OutboundMessageRequested, ctx: ChannelContext) -> SendResult:  # noqa: ARG002
        self._hub.deliver(message.recipient_address, outbound_frame(message))
        # A customer not connected here reads the history when they come back.
        return SendResult(provider_message_id=str(message.message_id))

    def acknowledge(self, messages: Sequence[MessageReceived]) -> ProviderResponse:
        accepted = ChatMessageAccepted(
            message_id=messages[0].provider_message_id if messages else ""
        )
        return ProviderResponse(
            status=202, body=accepted.model_dump_json().encode(), content_type="application/json"
        )


def outbound_frame(message: OutboundMessageRequested) -> dict[str, Any]:
    return {
        "type": "message",
        "message_id": str(message.message_id),
        "conversation_id": str(message.conversation_id),
        "direction": "outbound",
        "text": message.text,
        "agent_name": message.agent_display_name,
        "created_at": message.created_at.isoformat(),
    }
