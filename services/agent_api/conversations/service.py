"""Conversation use cases; the caller commits (and publishes the outbox) at the edge."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.agent_api.auth import AgentClaims
from services.agent_api.deps import require_agent
from shared.conversations import NoCustomerAddressError, send_to_customer
from shared.db.models import (
    Agent,
    AgentRole,
    AgentTeam,
    Assignment,
    Consultation,
    Contact,
    Conversation,
    ConversationStatus,
    DeliveryStatus,
    Message,
    OutcomeCode,
    utcnow,
)
from shared.events import (
    AgentMentioned,
    Channel,
    ConsultationRequested,
    MessageCreated,
    MessageDirection,
    Topic,
    conversation_key,
)
from shared.outbox import record_event
from shared.problems import ProblemError
from shared.routing.engine import (
    EscalationOutcome,
    RoutingContext,
    TransferRefusedError,
    cancel_sla_clock,
    team_id_named,
)
from shared.routing.engine import escalate as escalate_conversation
from shared.routing.engine import reopen as reopen_conversation
from shared.routing.engine import resolve as resolve_conversation
from shared.routing.engine import snooze as snooze_conversation
from shared.routing.engine import transfer as transfer_conversation
from shared.routing.policy import RoutingPolicy

EVENT_SOURCE = "omniroute/agent-api"
MENTION = re.compile(r"(?<![\w.])@([A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,})")


class SortField(StrEnum):
    LAST_MESSAGE_AT = "last_message_at"
    CREATED_AT = "created_at"


def encode_cursor(sort_value: datetime, conversation_id: uuid.UUID) -> str:
    raw = f"{sort_value.isoformat()}|{conversation_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        stamp, conversation_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(stamp), uuid.UUID(conversation_id)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProblemError(400, "The cursor is not one this API issued.") from exc


@dataclass(frozen=True)
class ConversationFilter:
    status: ConversationStatus | None = None
    channel: Channel | None = None
    assignee: str | None = None  # "me", "none" or an agent id
    tier: int | None = None
    team_id: uuid.UUID | None = None
    text: str | None = None


async def list_conversations(
    session: AsyncSession,
    claims: AgentClaims,
    filters: ConversationFilter,
    *,
    sort: SortField,
    descending: bool,
    limit: int,
    cursor: str | None,
) -> tuple[list[Conversation], str | None]:
    """Filtered and keyset-paginated (stable under inserts) conversations of the workspace."""
    query = select(Conversation).where(Conversation.workspace_id == claims.workspace_id)
    if filters.status is not None:
        query = query.where(Conversation.status == filters.status.value)
    if filters.channel is not None:
        query = query.where(Conversation.channel == filters.channel.value)
    if filters.tier is not None:
        query = query.where(Conversation.tier == filters.tier)
    if filters.team_id is not None:
        query = query.where(Conversation.team_id == filters.team_id)
    if filters.assignee == "me":
        query = query.where(Conversation.assignee_agent_id == require_agent(claims))
    elif filters.assignee == "none":
        query = query.where(Conversation.assignee_agent_id.is_(None))
    elif filters.assignee is not None:
        try:
            assignee = uuid.UUID(filters.assignee)
        except ValueError as exc:
            raise ProblemError(422, "assignee must be `me`, `none` or an agent id.") from exc
        query = query.where(Conversation.assignee_agent_id == assignee)
    if filters.text:
        escaped = filters.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
        query = query.where(
            Conversation.id.in_(
                select(Message.conversation_id).where(
                    Message.workspace_id == claims.workspace_id,
                    Message.text.ilike(pattern, escape="\\"),
                )
            )
        )
    column = (
        Conversation.last_message_at
        if sort is SortField.LAST_MESSAGE_AT
        else Conversation.created_at
    )
    if cursor is not None:
        value, last_id = decode_cursor(cursor)
        if descending:
            query = query.where(
                or_(column < value, and_(column == value, Conversation.id < last_id))
            )
        else:
            query = query.where(
                or_(column > value, and_(column == value, Conversation.id > last_id))
            )
    order = (column.desc(), Conversation.id.desc()) if descending else (column, Conversation.id)
    rows = list(await session.scalars(query.order_by(*order).limit(limit + 1)))
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(getattr(last, sort.value), last.id)
    return rows[:limit], next_cursor


async def get_conversation(
    session: AsyncSession, claims: AgentClaims, conversation_id: uuid.UUID, *, lock: bool = False
) -> Conversation:
    """A conversation of the caller's workspace; any other id answers 404.

    ``lock``: for a command that changes it, the row is locked ``FOR UPDATE`` and read
    afresh, first of the rows the command takes (the lock order of
    ``shared.routing.engine``), so its checks (owner, status) hold until the commit:
    a timer or a drain changing the conversation meanwhile is waited for, not
    overwritten."""
    query = select(Conversation).where(
        Conversation.id == conversation_id,
        Conversation.workspace_id == claims.workspace_id,
    )
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    conversation = await session.scalar(query)
    if conversation is None:
        raise ProblemError(404, f"No conversation {conversation_id}.")
    return conversation


async def list_messages(
    session: AsyncSession, claims: AgentClaims, conversation_id: uuid.UUID, *, limit: int
) -> list[Message]:
    await get_conversation(session, claims, conversation_id)
    return list(
        await session.scalars(
            select(Message)
            .where(
                Message.workspace_id == claims.workspace_id,
                Message.conversation_id == conversation_id,
            )
            .order_by(Message.created_at, Message.id)
            .limit(limit)
        )
    )


async def reply(
    session: AsyncSession, claims: AgentClaims, conversation_id: uuid.UUID, text: str
) -> Message:
    """Store the agent's reply and, in the same transaction, the events to deliver it."""
    conversation = await get_conversation(session, claims, conversation_id, lock=True)
    if conversation.status == ConversationStatus.RESOLVED.value:
        raise ProblemError(409, "The conversation is resolved; reopen it to reply.")
    _require_owner_or_supervisor(conversation, claims, "reply")
    agent_name = await session.scalar(select(Agent.display_name).where(Agent.id == claims.agent_id))
    try:
        message = await send_to_customer(
            session,
            conversation,
            text,
            source=EVENT_SOURCE,
            direction=MessageDirection.OUTBOUND,
            author_agent_id=claims.agent_id,
            author_display_name=agent_name,
        )
    except NoCustomerAddressError as exc:
        raise ProblemError(
            409, "The customer has no address on this conversation's channel."
        ) from exc
    if conversation.first_response_at is None:
        conversation.first_response_at = message.created_at
        await cancel_sla_clock(session, conversation)
    return message


def _require_owner_or_supervisor(
    conversation: Conversation, claims: AgentClaims, action: str
) -> None:
    if conversation.assignee_agent_id == claims.agent_id or claims.role in (
        AgentRole.SUPERVISOR.value,
        AgentRole.ADMIN.value,
    ):
        return
    raise ProblemError(403, f"Only the conversation's owner (or a supervisor) can {action}.")


async def escalate(
    session: AsyncSession,
    claims: AgentClaims,
    conversation_id: uuid.UUID,
    *,
    reason: str,
    team: str | None,
    policy: RoutingPolicy,
) -> EscalationOutcome:
    """Manual escalation by the owner: next tier, or to a named team."""
    conversation = await get_conversation(session, claims, conversation_id, lock=True)
    _require_owner_or_supervisor(conversation, claims, "escalate")
    if conversation.status == ConversationStatus.RESOLVED.value:
        raise ProblemError(409, "The conversation is resolved.")
    team_id = None
    if team is not None:
        team_id = await team_id_named(session, claims.workspace_id, team)
        if team_id is None:
            raise ProblemError(422, f"No team named {team!r} in this workspace.")
    ctx = RoutingContext(session=session, policy=policy, source=EVENT_SOURCE)
    return await escalate_conversation(
        ctx,
        conversation,
        trigger="agent",
        reason=reason,
        by_agent_id=claims.agent_id,
        team_id=team_id,
    )


async def routing_history(
    session: AsyncSession, claims: AgentClaims, conversation_id: uuid.UUID
) -> tuple[Conversation, list[Assignment]]:
    conversation = await get_conversation(session, claims, conversation_id)
    assignments = list(
        await session.scalars(
            select(Assignment)
            .where(
                Assignment.workspace_id == claims.workspace_id,
                Assignment.conversation_id == conversation_id,
            )
            .order_by(Assignment.created_at)
        )
    )
    return conversation, assignments


def latest_decision(
    conversation: Conversation, assignments: Sequence[Assignment]
) -> dict[str, Any] | None:
    """The conversation's latest routing decision: its own record when that was no
    assignment (e.g. queued), else the latest assignment's explanation."""
    if conversation.routing_explanation is not None:
        return conversation.routing_explanation
    latest = max(assignments, key=lambda a: a.created_at, default=None)
    return latest.explanation if latest is not None else None


def routing_context(session: AsyncSession, policy: RoutingPolicy) -> RoutingContext:
    return RoutingContext(session=session, policy=policy, source=EVENT_SOURCE)


async def _open_consultation(
    session: AsyncSession, claims: AgentClaims, conversation_id: uuid.UUID
) -> bool:
    if claims.agent_id is None:
        return False
    found = await session.scalar(
        select(Consultation.id).where(
            Consultation.conversation_id == conversation_id,
            Consultation.consultant_agent_id == claims.agent_id,
            Consultation.closed_at.is_(None),
        )
    )
    return found is not None


async def _mentioned_agents(
    session: AsyncSession, claims: AgentClaims, text: str, explicit: list[uuid.UUID]
) -> list[uuid.UUID]:
    """Agents named with ``@email`` in the text or listed explicitly, of this workspace."""
    emails = {m.lower() for m in MENTION.findall(text)}
    query = select(Agent.id).where(
        Agent.workspace_id == claims.workspace_id, Agent.deactivated_at.is_(None)
    )
    conditions = []
    if emails:
        conditions.append(func.lower(Agent.email).in_(emails))
    if explicit:
        conditions.append(Agent.id.in_(explicit))
    if not conditions:
        return []
    found = list(await session.scalars(query.where(or_(*conditions))))
    unknown = set(explicit) - set(found)
    if unknown:
        raise ProblemError(422, f"Unknown agent(s) mentioned: {sorted(map(str, unknown))}.")
    return found


async def add_note(
    session: AsyncSession,
    claims: AgentClaims,
    conversation_id: uuid.UUID,
    text: str,
    mentions: list[uuid.UUID],
) -> Message:
    """An internal note (never sent to the customer). Owner, consultants and supervisors
    may write; mentioned agents are told live."""
    conversation = await get_conversation(session, claims, conversation_id)
    is_owner = claims.agent_id is not None and conversation.assignee_agent_id == claims.agent_id
    if not (
        is_owner
        or claims.is_supervisor
        or await _open_consultation(session, claims, conversation.id)
    ):
        raise ProblemError(403, "Only the owner, a consultant or a supervisor can add notes.")
    mentioned = await _mentioned_agents(session, claims, text, mentions)
    now = utcnow()
    note = Message(
        id=uuid.uuid4(),
        workspace_id=claims.workspace_id,
        conversation_id=conversation.id,
        channel=conversation.channel,
        direction=MessageDirection.NOTE.value,
        author_agent_id=claims.agent_id,
        text=text,
        delivery_status=DeliveryStatus.SENT.value,
        mentions=[str(m) for m in mentioned] or None,
        created_at=now,
    )
    session.add(note)
    await session.flush()
    key = conversation_key(claims.workspace_id, conversation.id)
    record_event(
        session,
        MessageCreated(
            workspace_id=claims.workspace_id,
            conversation_id=conversation.id,
            message_id=note.id,
            channel=Channel(conversation.channel),
            direction=MessageDirection.NOTE,
            text=text,
            author_agent_id=claims.agent_id,
            assignee_agent_id=conversation.assignee_agent_id,
            created_at=now,
        ),
        topic=Topic.EVENTS,
        key=key,
        source=EVENT_SOURCE,
        subject=str(conversation.id),
    )
    if mentioned:
        record_event(
            session,
            AgentMentioned(
                workspace_id=claims.workspace_id,
                conversation_id=conversation.id,
                message_id=note.id,
                mentioned_agent_ids=mentioned,
                by_agent_id=claims.agent_id,
                text=text,
                mentioned_at=now,
            ),
            topic=Topic.EVENTS,
            key=key,
            source=EVENT_SOURCE,
            subject=str(conversation.id),
        )
    return note


async def consult(
    session: AsyncSession,
    claims: AgentClaims,
    conversation_id: uuid.UUID,
    *,
    note: str,
    agent_id: uuid.UUID | None,
    team: str | None,
) -> Consultation:
    """Ask a colleague (or a team) for help in a private note thread; the owner keeps
    the conversation and the consultant is notified live and may read and add notes."""
    conversation = await get_conversation(session, claims, conversation_id)
    _require_owner_or_supervisor(conversation, claims, "ask for a consultation")
    if (agent_id is None) == (team is None):
        raise ProblemError(422, "Name exactly one of `agent_id` or `team`.")
    team_id = None
    consultants: list[uuid.UUID] = []
    if team is not None:
        team_id = await team_id_named(session, claims.workspace_id, team)
        if team_id is None:
            raise ProblemError(422, f"No team named {team!r} in this workspace.")
        consultants = list(
            await session.scalars(
                select(AgentTeam.agent_id).where(
                    AgentTeam.team_id == team_id, AgentTeam.agent_id != claims.agent_id
                )
            )
        )
    else:
        found = await session.scalar(
            select(Agent.id).where(
                Agent.id == agent_id,
                Agent.workspace_id == claims.workspace_id,
                Agent.deactivated_at.is_(None),
            )
        )
        if found is None:
            raise ProblemError(422, f"No agent {agent_id} in this workspace.")
        if found == claims.agent_id:
            raise ProblemError(422, "You cannot consult yourself.")
        consultants = [found]
    consultation = Consultation(
        id=uuid.uuid4(),
        workspace_id=claims.workspace_id,
        conversation_id=conversation.id,
        requested_by_agent_id=claims.agent_id,
        consultant_agent_id=consultants[0] if agent_id is not None else None,
        team_id=team_id,
    )
    session.add(consultation)
    # Team consultations open one row per member so each may read and add notes.
    if team_id is not None:
        for member in consultants:
            session.add(
                Consultation(
                    workspace_id=claims.workspace_id,
                    conversation_id=conversation.id,
                    requested_by_agent_id=claims.agent_id,
                    consultant_agent_id=member,
                    team_id=team_id,
                )
            )
    await add_note(session, claims, conversation.id, note, mentions=consultants)
    record_event(
        session,
        ConsultationRequested(
            workspace_id=claims.workspace_id,
            conversation_id=conversation.id,
            consultation_id=consultation.id,
            requested_by_agent_id=claims.agent_id,
            consultant_agent_ids=consultants,
            team_id=team_id,
            note=note,
            requested_at=utcnow(),
        ),
        topic=Topic.EVENTS,
        key=conversation_key(claims.workspace_id, conversation.id),
        source=EVENT_SOURCE,
        subject=str(conversation.id),
    )
    await session.flush()
    return consultation


async def close_consultation(
    session: AsyncSession, claims: AgentClaims, conversation_id: uuid.UUID
) -> int:
    """End the caller's consultations on the conversation (consultant or owner)."""
    conversation = await get_conversation(session, claims, conversation_id)
    query = select(Consultation).where(
        Consultation.conversation_id == conversation.id, Consultation.closed_at.is_(None)
    )
    is_owner = conversation.assignee_agent_id == claims.agent_id
    if not (is_owner or claims.is_supervisor):
        query = query.where(Consultation.consultant_agent_id == require_agent(claims))
    rows = list(await session.scalars(query))
    for row in rows:
        row.closed_at = utcnow()
    return len(rows)


async def transfer(
    session: AsyncSession,
    claims: AgentClaims,
    conversation_id: uuid.UUID,
    *,
    reason: str,
    agent_id: uuid.UUID | None,
    team: str | None,
    tier: int | None,
    policy: RoutingPolicy,
) -> uuid.UUID | None:
    conversation = await get_conversation(session, claims, conversation_id, lock=True)
    _require_owner_or_supervisor(conversation, claims, "transfer")
    if conversation.status == ConversationStatus.RESOLVED.value:
        raise ProblemError(409, "The conversation is resolved; reopen it first.")
    if sum(x is not None for x in (agent_id, team, tier)) != 1:
        raise ProblemError(422, "Name exactly one of `agent_id`, `team` or `tier`.")
    team_id = None
    if team is not None:
        team_id = await team_id_named(session, claims.workspace_id, team)
        if team_id is None:
            raise ProblemError(422, f"No team named {team!r} in this workspace.")
    if agent_id is not None:
        exists = await session.scalar(
            select(Agent.id).where(Agent.id == agent_id, Agent.workspace_id == claims.workspace_id)
        )
        if exists is None:
            raise ProblemError(422, f"No agent {agent_id} in this workspace.")
    try:
        return await transfer_conversation(
            routing_context(session, policy),
            conversation,
            reason=reason,
            by_agent_id=claims.agent_id,
            to_agent_id=agent_id,
            to_team_id=team_id,
            to_tier=tier,
        )
    except TransferRefusedError as exc:
        raise ProblemError(409, f"Cannot transfer: {exc}.") from exc


async def resolve(
    session: AsyncSession,
    claims: AgentClaims,
    conversation_id: uuid.UUID,
    *,
    outcome_code: str | None,
    policy: RoutingPolicy,
) -> Conversation:
    conversation = await get_conversation(session, claims, conversation_id, lock=True)
    if conversation.status == ConversationStatus.RESOLVED.value:
        raise ProblemError(409, "The conversation is already resolved.")
    _require_owner_or_supervisor(conversation, claims, "resolve")
    if outcome_code is not None:
        known = await session.scalar(
            select(OutcomeCode.id).where(
                OutcomeCode.workspace_id == claims.workspace_id, OutcomeCode.code == outcome_code
            )
        )
        if known is None:
            raise ProblemError(422, f"Unknown outcome code {outcome_code!r}.")
    await resolve_conversation(
        routing_context(session, policy),
        conversation,
        outcome_code=outcome_code,
        by_agent_id=claims.agent_id,
    )
    return conversation


async def reopen(
    session: AsyncSession, claims: AgentClaims, conversation_id: uuid.UUID, policy: RoutingPolicy
) -> Conversation:
    conversation = await get_conversation(session, claims, conversation_id, lock=True)
    if conversation.status != ConversationStatus.RESOLVED.value:
        raise ProblemError(409, "Only a resolved conversation can be reopened.")
    newer = await session.scalar(
        select(Conversation.id).where(
            Conversation.workspace_id == claims.workspace_id,
            Conversation.channel == conversation.channel,
            Conversation.thread_key == conversation.thread_key,
            Conversation.status != ConversationStatus.RESOLVED.value,
        )
    )
    if newer is not None:
        raise ProblemError(
            409, f"The customer's thread continues in conversation {newer}; work there."
        )
    await reopen_conversation(
        routing_context(session, policy), conversation, by_agent_id=claims.agent_id
    )
    return conversation


async def snooze(
    session: AsyncSession,
    claims: AgentClaims,
    conversation_id: uuid.UUID,
    *,
    until: datetime,
    policy: RoutingPolicy,
) -> Conversation:
    conversation = await get_conversation(session, claims, conversation_id, lock=True)
    _require_owner_or_supervisor(conversation, claims, "snooze")
    if conversation.status not in (
        ConversationStatus.ASSIGNED.value,
        ConversationStatus.PENDING.value,
    ):
        raise ProblemError(409, f"A {conversation.status} conversation cannot be snoozed.")
    if until.tzinfo is None:
        raise ProblemError(422, "`until` needs a time zone (e.g. 2026-01-01T09:00:00Z).")
    if until <= utcnow():
        raise ProblemError(422, "`until` must be in the future.")
    await snooze_conversation(
        routing_context(session, policy), conversation, until=until, by_agent_id=claims.agent_id
    )
    return conversation


async def timeline(
    session: AsyncSession, claims: AgentClaims, conversation_id: uuid.UUID, *, limit: int
) -> list[Message]:
    """Every message with this customer on every channel (merged contacts included)."""
    conversation = await get_conversation(session, claims, conversation_id)
    contact_ids = select(Contact.id).where(
        Contact.workspace_id == claims.workspace_id,
        or_(
            Contact.id == conversation.contact_id,
            Contact.merged_into_contact_id == conversation.contact_id,
        ),
    )
    conversations = select(Conversation.id).where(
        Conversation.workspace_id == claims.workspace_id,
        Conversation.contact_id.in_(contact_ids),
    )
    return list(
        await session.scalars(
            select(Message)
            .where(
                Message.workspace_id == claims.workspace_id,
                Message.conversation_id.in_(conversations),
            )
            .order_by(Message.created_at.desc(), Message.id.desc())
            .limit(limit)
        )
    )[::-1]
