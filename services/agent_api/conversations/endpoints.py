"""Conversations of the signed-in agent: list, read, reply."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from services.agent_api.conversations import service
from services.agent_api.conversations.schemas import (
    ConversationOut,
    ConversationPage,
    MessageOut,
    ReplyRequest,
)
from services.agent_api.deps import CurrentAgent, SessionDep, StateDep
from shared.db.models import Conversation, ConversationStatus, Message
from shared.outbox import commit_and_publish

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])


@router.get("", response_model=ConversationPage)
async def list_conversations(
    session: SessionDep,
    claims: CurrentAgent,
    status: ConversationStatus | None = None,
    everyone: Annotated[
        bool, Query(description="Supervisors and admins: all conversations of the workspace.")
    ] = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> ConversationPage:
    """The caller's conversations, most recent activity first."""
    rows, next_cursor = await service.list_conversations(
        session, claims, status=status, everyone=everyone, limit=limit, cursor=cursor
    )
    return ConversationPage(
        items=[ConversationOut.model_validate(row) for row in rows], next_cursor=next_cursor
    )


@router.get("/{conversation_id}", response_model=ConversationOut)
async def get_conversation(
    conversation_id: uuid.UUID, session: SessionDep, claims: CurrentAgent
) -> Conversation:
    """One conversation of the caller's workspace."""
    return await service.get_conversation(session, claims, conversation_id)


@router.get("/{conversation_id}/messages", response_model=list[MessageOut])
async def list_messages(
    conversation_id: uuid.UUID,
    session: SessionDep,
    claims: CurrentAgent,
    limit: Annotated[int, Query(ge=1, le=500)] = 200,
) -> list[Message]:
    """The conversation's messages, oldest first."""
    return await service.list_messages(session, claims, conversation_id, limit=limit)


@router.post("/{conversation_id}/replies", status_code=201, response_model=MessageOut)
async def reply(
    conversation_id: uuid.UUID,
    body: ReplyRequest,
    session: SessionDep,
    claims: CurrentAgent,
    state: StateDep,
) -> Message:
    """Reply to the customer on the conversation's channel."""
    message = await service.reply(session, claims, conversation_id, body.text)
    await commit_and_publish(session, state.bus, state.database.sessions)
    return message
