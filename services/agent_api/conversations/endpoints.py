"""Conversations of the signed-in agent: list, read, reply."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from services.agent_api.conversations import service
from services.agent_api.conversations.schemas import (
    AssignmentOut,
    ConsultationOut,
    ConsultationRequest,
    ConversationOut,
    ConversationPage,
    EscalationOut,
    EscalationRequest,
    MessageOut,
    NoteRequest,
    ReplyRequest,
    ResolveRequest,
    RoutingOut,
    SnoozeRequest,
    TransferOut,
    TransferRequest,
)
from services.agent_api.csat.service import survey_on_resolve
from services.agent_api.deps import CurrentAgent, SessionDep, StateDep
from shared.db.models import Consultation, Conversation, ConversationStatus, Message
from shared.events import Channel
from shared.outbox import commit_and_publish
from shared.routing.engine import load_policy

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])


@router.get("", response_model=ConversationPage)
async def list_conversations(
    session: SessionDep,
    claims: CurrentAgent,
    status: ConversationStatus | None = None,
    channel: Channel | None = None,
    assignee: Annotated[
        str | None, Query(description="`me`, `none` (queued) or an agent id.", max_length=36)
    ] = None,
    tier: Annotated[int | None, Query(ge=1, le=3)] = None,
    team_id: Annotated[uuid.UUID | None, Query(description="The team's queue.")] = None,
    q: Annotated[
        str | None, Query(min_length=1, max_length=200, description="Text in any message.")
    ] = None,
    sort: service.SortField = service.SortField.LAST_MESSAGE_AT,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> ConversationPage:
    """Conversations of the workspace, filtered and sorted; pass `next_cursor` back as
    `cursor` for the next page."""
    rows, next_cursor = await service.list_conversations(
        session,
        claims,
        service.ConversationFilter(
            status=status, channel=channel, assignee=assignee, tier=tier, team_id=team_id, text=q
        ),
        sort=sort,
        descending=order == "desc",
        limit=limit,
        cursor=cursor,
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
        latest_decision=service.latest_decision(conversation, assignments),
        assignments=[AssignmentOut.model_validate(a) for a in assignments],
    )


@router.get("/{conversation_id}/timeline", response_model=list[MessageOut])
async def timeline(
    conversation_id: uuid.UUID,
    session: SessionDep,
    claims: CurrentAgent,
    limit: Annotated[int, Query(ge=1, le=1000)] = 300,
) -> list[Message]:
    """The customer's whole history with us across channels (all their conversations,
    merged contacts included), oldest first, with internal notes."""
    return await service.timeline(session, claims, conversation_id, limit=limit)


@router.post("/{conversation_id}/notes", status_code=201, response_model=MessageOut)
async def add_note(
    conversation_id: uuid.UUID,
    body: NoteRequest,
    session: SessionDep,
    claims: CurrentAgent,
    state: StateDep,
) -> Message:
    """An internal note; `@email` mentions and `mentions` notify those agents live."""
    note = await service.add_note(session, claims, conversation_id, body.text, body.mentions)
    await commit_and_publish(session, state.bus, state.database.sessions)
    return note


@router.post("/{conversation_id}/consultations", status_code=201, response_model=ConsultationOut)
async def consult(
    conversation_id: uuid.UUID,
    body: ConsultationRequest,
    session: SessionDep,
    claims: CurrentAgent,
    state: StateDep,
) -> Consultation:
    """Ask an agent or a team for help without handing off: they are notified live, may
    read the conversation and add notes; ownership stays."""
    consultation = await service.consult(
        session, claims, conversation_id, note=body.note, agent_id=body.agent_id, team=body.team
    )
    await commit_and_publish(session, state.bus, state.database.sessions)
    return consultation


@router.delete("/{conversation_id}/consultations", status_code=204)
async def close_consultations(
    conversation_id: uuid.UUID, session: SessionDep, claims: CurrentAgent
) -> None:
    """End consultations: a consultant ends their own, the owner or a supervisor all."""
    await service.close_consultation(session, claims, conversation_id)
    await session.commit()


@router.post("/{conversation_id}/transfers", response_model=TransferOut)
async def transfer(
    conversation_id: uuid.UUID,
    body: TransferRequest,
    session: SessionDep,
    claims: CurrentAgent,
    state: StateDep,
) -> TransferOut:
    """Hand over to an agent, a team or a tier. The customer is told who helps next and
    the reason stays as an internal note. 409 when the agent is offline or full."""
    _, policy = await load_policy(session, claims.workspace_id)
    owner = await service.transfer(
        session,
        claims,
        conversation_id,
        reason=body.reason,
        agent_id=body.agent_id,
        team=body.team,
        tier=body.tier,
        policy=policy,
    )
    conversation = await service.get_conversation(session, claims, conversation_id)
    result = TransferOut(
        conversation=ConversationOut.model_validate(conversation), new_owner_agent_id=owner
    )
    await commit_and_publish(session, state.bus, state.database.sessions)
    return result


@router.post("/{conversation_id}/resolve", response_model=ConversationOut)
async def resolve(
    conversation_id: uuid.UUID,
    body: ResolveRequest,
    session: SessionDep,
    claims: CurrentAgent,
    state: StateDep,
) -> Conversation:
    """Resolve with an optional outcome code; the owner's capacity is freed at once. If
    the workspace turned CSAT surveys on, the customer is asked on their channel."""
    _, policy = await load_policy(session, claims.workspace_id)
    conversation = await service.resolve(
        session, claims, conversation_id, outcome_code=body.outcome_code, policy=policy
    )
    await survey_on_resolve(session, conversation, state.settings)
    await commit_and_publish(session, state.bus, state.database.sessions)
    return conversation


@router.post("/{conversation_id}/reopen", response_model=ConversationOut)
async def reopen(
    conversation_id: uuid.UUID, session: SessionDep, claims: CurrentAgent, state: StateDep
) -> Conversation:
    """Reopen a resolved conversation: back to its previous owner if they can take it."""
    _, policy = await load_policy(session, claims.workspace_id)
    conversation = await service.reopen(session, claims, conversation_id, policy)
    await commit_and_publish(session, state.bus, state.database.sessions)
    return conversation


@router.post("/{conversation_id}/snooze", response_model=ConversationOut)
async def snooze(
    conversation_id: uuid.UUID,
    body: SnoozeRequest,
    session: SessionDep,
    claims: CurrentAgent,
    state: StateDep,
) -> Conversation:
    """Park the conversation until `until`; it keeps its owner and comes back then."""
    _, policy = await load_policy(session, claims.workspace_id)
    conversation = await service.snooze(
        session, claims, conversation_id, until=body.until, policy=policy
    )
    await commit_and_publish(session, state.bus, state.database.sessions)
    return conversation
