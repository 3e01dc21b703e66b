"""A customer writes to a snoozed conversation: it wakes at once.

The snooze kept the owner's assignment (and its capacity). The owner takes it back if
they could take it now (online, tier, skills, language, team; the capacity the
conversation already holds counts as theirs); otherwise the assignment is closed and
the conversation is routed like any other, the owner excluded. Either way the snooze
timer is cancelled and agents hear of the status change; the message's own event,
recorded after this, names the owner so their client gets the live frame.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Final

from sqlalchemy import select

from shared.db.models import (
    Agent,
    AgentTeam,
    Assignment,
    Conversation,
    ConversationStatus,
    TimerKind,
    utcnow,
)
from shared.events import ConversationStatusChanged, Topic, conversation_key
from shared.outbox import record_event
from shared.routing.engine import (
    RoutingContext,
    add_internal_note,
    assign_or_queue,
    release_owner,
    requirement_of,
)
from shared.routing.ranking import AgentState, Requirement, exclusion_reason
from shared.timers import cancel_timers

WOKEN_REASON: Final = "customer_wrote_while_snoozed"
SNOOZE_ENDED_REASON: Final = "snooze_ended"


def owner_refusal(
    owner: AgentState | None, requirement: Requirement, *, held_units: float
) -> str | None:
    """Why the snoozing owner cannot take the conversation back; None if they can.

    ``held_units`` is what the conversation already takes of the owner's capacity."""
    if owner is None:
        return "no longer an agent of the workspace"
    return exclusion_reason(
        dataclasses.replace(owner, load_units=max(0.0, owner.load_units - held_units)),
        requirement,
    )


async def wake_on_customer_message(
    ctx: RoutingContext, conversation: Conversation
) -> uuid.UUID | None:
    """Wake ``conversation`` (if snoozed); the owner afterwards, or None when queued."""
    return await wake_snoozed(
        ctx, conversation, reason=WOKEN_REASON, why="The customer wrote while this was snoozed"
    )


async def wake_at_snooze_end(ctx: RoutingContext, conversation: Conversation) -> uuid.UUID | None:
    """The snooze timer fired: the same rule, so an owner who went away meanwhile is not
    handed a conversation they cannot see to."""
    return await wake_snoozed(ctx, conversation, reason=SNOOZE_ENDED_REASON, why="The snooze ended")


async def wake_snoozed(
    ctx: RoutingContext, conversation: Conversation, *, reason: str, why: str
) -> uuid.UUID | None:
    """Back to the owner if they can take it now, else routed without them (or queued).

    The conversation row is locked and read afresh first: the snooze timer and a
    customer's message may wake it at the same moment, and the second must see what
    the first did (no second release of the owner's assignment)."""
    await ctx.session.flush()  # the caller's changes to it, before it is read afresh
    await ctx.session.refresh(conversation, with_for_update=True)
    if conversation.status != ConversationStatus.SNOOZED.value:
        return conversation.assignee_agent_id
    previous = conversation.status
    conversation.snoozed_until = None
    await cancel_timers(ctx.session, TimerKind.SNOOZE_END, conversation_id=conversation.id)
    owner_id = conversation.assignee_agent_id
    held = await ctx.session.scalar(
        select(Assignment.load_units).where(
            Assignment.conversation_id == conversation.id, Assignment.closed_at.is_(None)
        )
    )
    refusal: str | None = "no open assignment"
    if owner_id is not None and held is not None:
        refusal = owner_refusal(
            await _agent_state(ctx, conversation.workspace_id, owner_id),
            requirement_of(conversation, ctx.policy),
            held_units=held,
        )
    if refusal is None:
        conversation.status = ConversationStatus.ASSIGNED.value
    else:
        released = await release_owner(ctx, conversation, reason=reason)
        if released is not None:
            await add_internal_note(
                ctx,
                conversation,
                f"{why}; its owner could not take it back ({refusal}), so it was handed on.",
            )
        conversation.status = ConversationStatus.QUEUED.value
        conversation.queued_at = None
        await assign_or_queue(
            ctx,
            conversation,
            reason=reason,
            announce=released is not None,
            exclude=frozenset({released}) if released else frozenset(),
        )
    record_event(
        ctx.session,
        ConversationStatusChanged(
            workspace_id=conversation.workspace_id,
            conversation_id=conversation.id,
            status=conversation.status,
            previous_status=previous,
            assignee_agent_id=conversation.assignee_agent_id,
            by_agent_id=None,
            outcome_code=conversation.outcome_code,
            snoozed_until=None,
            changed_at=utcnow(),
        ),
        topic=Topic.EVENTS,
        key=conversation_key(conversation.workspace_id, conversation.id),
        source=ctx.source,
        subject=str(conversation.id),
    )
    return conversation.assignee_agent_id


async def _agent_state(
    ctx: RoutingContext, workspace_id: uuid.UUID, agent_id: uuid.UUID
) -> AgentState | None:
    agent = await ctx.session.scalar(
        select(Agent).where(
            Agent.workspace_id == workspace_id,
            Agent.id == agent_id,
            Agent.deactivated_at.is_(None),
        )
    )
    if agent is None:
        return None
    team_ids = await ctx.session.scalars(
        select(AgentTeam.team_id).where(
            AgentTeam.workspace_id == workspace_id, AgentTeam.agent_id == agent_id
        )
    )
    return AgentState(
        agent_id=agent.id,
        status=agent.status,
        tier=agent.tier,
        capacity_units=agent.capacity_units,
        load_units=agent.load_units,
        last_assigned_at=agent.last_assigned_at,
        skills=frozenset(agent.skills or ()),
        languages=frozenset(agent.languages or ()),
        team_ids=frozenset(team_ids),
    )
