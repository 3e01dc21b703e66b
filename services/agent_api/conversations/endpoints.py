"""Conversations of the signed-in agent: list, read, reply."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from services.agent_api.conversations import service
from services.agent_api.conversations.schemas import (
    AssignmentOut,
    ConversationOut,
    ConversationPage,
    EscalationOut,
    EscalationRequest,
    MessageOut,
    ReplyRequest,
    RoutingOut,
)
from services.agent_api.deps import CurrentAgent, SessionDep, StateDep
from shared.db.models import Conversation, ConversationStatus, Message
from shared.outbox import commit_and_publish
from shared.routing.engine import load_policy

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


@router.post("/{conversation_id}/escalations", response_model=EscalationOut)
async def escalate(
    conversation_id: uuid.UUID,
    body: EscalationRequest,
    session: SessionDep,
    claims: CurrentAgent,
    state: StateDep,
) -> EscalationOut:
    """Escalate to the next tier (or to a team). The customer is told who helps next; at
    tier 3 with no team a supervisor alert is raised instead."""
    _, policy = await load_policy(session, claims.workspace_id)
    outcome = await service.escalate(
        session, claims, conversation_id, reason=body.reason, team=body.team, policy=policy
    )
    conversation = await service.get_conversation(session, claims, conversation_id)
    result = EscalationOut(
        escalated=outcome.escalated,
        tier=conversation.tier,
        team_id=conversation.team_id,
        new_owner_agent_id=outcome.new_owner,
        supervisor_alerted=outcome.alerted_supervisor,
    )
    await commit_and_publish(session, state.bus, state.database.sessions)
    return result


@router.get("/{conversation_id}/routing", response_model=RoutingOut)
async def routing(
    conversation_id: uuid.UUID, session: SessionDep, claims: CurrentAgent
) -> RoutingOut:
    """Why the conversation is where it is: intake decision, every assignment with its
    candidates, scores and deciding rule, and the latest routing decision."""
    conversation, assignments = await service.routing_history(session, claims, conversation_id)
    return RoutingOut(
        conversation_id=conversation.id,
        status=ConversationStatus(conversation.status),
        tier=conversation.tier,
        priority=conversation.priority,
        team_id=conversation.team_id,
        required_skills=list(conversation.required_skills or []),
        sla_due_at=conversation.sla_due_at,
        intake=conversation.intake,
        latest_decision=conversation.routing_explanation,
        assignments=[AssignmentOut.model_validate(a) for a in assignments],
    )
