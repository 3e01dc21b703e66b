"""The routing engine's database side: assignment, queues, escalation, reassignment.

Every function works inside the caller's transaction (the caller commits and publishes
the outbox). Safety with several router replicas comes from the database: capacity is
reserved with one conditional UPDATE, at most one open assignment per conversation is a
partial unique index, and queued conversations are locked with SKIP LOCKED while
matched.

Lock order. A transaction that changes a conversation's routing state takes the rows
in this order, so two of them wait for each other instead of deadlocking:

1. the timer row (only the maintenance loop, which claims it first);
2. the conversation row, ``FOR UPDATE`` (several: in id order), read afresh under the
   lock and its state checked again before anything changes;
3. its open assignment (closed by :func:`release_owner` only while still open);
4. agent rows (capacity released or reserved).

Conversation commands of agent_api lock the conversation when they read it
(``get_conversation(lock=True)``); the queue drain takes conversations with SKIP
LOCKED, so it never waits for one. A timer handler never waits for a conversation (or
an absent owner's agent row) either: it holds the claimed timer, and the transaction
holding the conversation may be about to cancel that very timer, which waits for the
claim. It raises :class:`RowBusyError` instead; the timer is rolled back and made due
again shortly (``services.router.maintenance``). Presence changes
(``services.agent_api.agents``) lock an absent owner's conversations before they
change the agent row.

Known exceptions, left to PostgreSQL's deadlock detection: the router's batch may
reserve agents for its new conversations before it updates existing conversations of
the same batch, and queue drains reserve agents in match order, not id order. A
deadlock aborts one transaction (40P01): the router retries its batch, maintenance
tries the timer again shortly and the drain at its next tick, an API command answers
503 with Retry-After.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Final

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from shared.capacity import (
    AGENTS_READ_KEY,
    release_capacity,
    reserve_capacity,
    reserve_capacity_of_agents,
)
from shared.conversations import NoCustomerAddressError, send_to_customer
from shared.db.models import (
    Agent,
    AgentStatus,
    AgentTeam,
    Assignment,
    Contact,
    Conversation,
    ConversationStatus,
    DeliveryStatus,
    Message,
    RoutingPolicyVersion,
    Team,
    TimerKind,
    utcnow,
)
from shared.events import (
    Channel,
    ConversationAssigned,
    ConversationEscalated,
    ConversationQueued,
    ConversationStatusChanged,
    ConversationUnassigned,
    MessageCreated,
    MessageDirection,
    SupervisorAlert,
    Topic,
    conversation_key,
)
from shared.metrics import ROUTING_DECISIONS, SLA_BREACHES
from shared.outbox import record_event
from shared.routing.business_hours import add_business_seconds
from shared.routing.policy import DEFAULT_POLICY, RoutingPolicy
from shared.routing.ranking import (
    AgentState,
    Match,
    QueuedConversation,
    QueueNoticeState,
    Ranking,
    Requirement,
    estimate_wait_seconds,
    match_queue,
    notice_is_due,
    queue_positions,
    rank_agents,
)
from shared.timers import cancel_timers, schedule_timer

log = structlog.get_logger(__name__)

MAX_TIER: Final = 3
QUEUE_SCAN_LIMIT: Final = 500
# Reads of the agents a group of new conversations may take before the undecided rest
# is assigned one by one.
PLAN_ROUNDS: Final = 3
HANDLE_TIME_SAMPLE: Final = 50


class PolicyCache:
    """The policy in force per workspace, re-read after ``ttl_seconds`` (hot changes)."""

    def __init__(self, ttl_seconds: float = 1.0) -> None:
        self._ttl = ttl_seconds
        self._entries: dict[uuid.UUID, tuple[float, int, RoutingPolicy]] = {}

    async def get(self, session: AsyncSession, workspace_id: uuid.UUID) -> RoutingPolicy:
        entry = self._entries.get(workspace_id)
        now = time.monotonic()
        if entry is not None and now - entry[0] < self._ttl:
            return entry[2]
        version, policy = await load_policy(session, workspace_id)
        self._entries[workspace_id] = (now, version, policy)
        return policy


async def load_policy(session: AsyncSession, workspace_id: uuid.UUID) -> tuple[int, RoutingPolicy]:
    """(version, policy) in force; version 0 is the built-in default."""
    row = await session.scalar(
        select(RoutingPolicyVersion)
        .where(RoutingPolicyVersion.workspace_id == workspace_id)
        .order_by(RoutingPolicyVersion.version.desc())
        .limit(1)
    )
    if row is None:
        return 0, DEFAULT_POLICY
    return row.version, RoutingPolicy.model_validate(row.document)


@dataclass(frozen=True)
class RoutingContext:
    session: AsyncSession
    policy: RoutingPolicy
    source: str


class RowBusyError(Exception):
    """A row a timer's handler must change is held by another transaction; nothing was
    changed, and the timer is tried again shortly (see the module's lock order)."""


async def lock_conversation(
    session: AsyncSession, conversation_id: uuid.UUID, *, skip_locked: bool = False
) -> Conversation | None:
    """The conversation, its row locked ``FOR UPDATE`` until the transaction ends and its
    attributes read afresh (a copy read earlier in the session may predate a concurrent
    change); None if there is none. ``skip_locked``: raise :class:`RowBusyError` instead
    of waiting for a transaction that holds the row."""
    conversation = await session.scalar(
        select(Conversation)
        .where(Conversation.id == conversation_id)
        .with_for_update(skip_locked=skip_locked)
        .execution_options(populate_existing=True)
    )
    if conversation is None and skip_locked:
        exists = await session.scalar(
            select(Conversation.id).where(Conversation.id == conversation_id)
        )
        if exists is not None:
            raise RowBusyError(f"conversation {conversation_id} is locked")
    return conversation


async def agent_states(session: AsyncSession, workspace_id: uuid.UUID) -> list[AgentState]:
    """Online agents of the workspace with their teams (the only ones who can take work).

    Plain columns, not ``Agent`` entities: loads are read fresh from the transaction
    (entities already in the session would keep the loads they were first read with,
    as reservations update the table directly), and 500 rows cost no ORM bookkeeping."""
    agents = (
        await session.execute(
            select(
                Agent.id,
                Agent.status,
                Agent.tier,
                Agent.capacity_units,
                Agent.load_units,
                Agent.last_assigned_at,
                Agent.skills,
                Agent.languages,
            ).where(Agent.workspace_id == workspace_id, Agent.status == AgentStatus.ONLINE.value)
        )
    ).all()
    teams: dict[uuid.UUID, set[uuid.UUID]] = defaultdict(set)
    if agents:
        rows = await session.execute(
            select(AgentTeam.agent_id, AgentTeam.team_id).where(
                AgentTeam.workspace_id == workspace_id,
                AgentTeam.agent_id.in_([a.id for a in agents]),
            )
        )
        for agent_id, team_id in rows:
            teams[agent_id].add(team_id)
    return [
        AgentState(
            agent_id=a.id,
            status=a.status,
            tier=a.tier,
            capacity_units=a.capacity_units,
            load_units=a.load_units,
            last_assigned_at=_aware(a.last_assigned_at),
            skills=frozenset(a.skills or ()),
            languages=frozenset(a.languages or ()),
            team_ids=frozenset(teams[a.id]),
        )
        for a in agents
    ]


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite hands timestamps back without their zone (stored as UTC): comparable
    with the aware ones reservations record in the same batch."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


async def _online_agents(
    session: AsyncSession, workspace_id: uuid.UUID, *, fresh: bool
) -> tuple[list[AgentState], bool]:
    """:func:`agent_states`, read once per transaction and workspace while only this
    module's own reservations change them (every other capacity change through
    ``shared.capacity`` drops what was read). A batch of new conversations then reads
    the workspace's agents once instead of once per conversation; stale figures are
    harmless for correctness, since the conditional UPDATE decides. True with states
    read earlier in the transaction, False with states just read."""
    transaction = session.sync_session.get_transaction()
    cached = session.info.get(AGENTS_READ_KEY)
    read: dict[uuid.UUID, list[AgentState]] = (
        cached[1] if cached is not None and cached[0] is transaction else {}
    )
    if not fresh and workspace_id in read:
        return read[workspace_id], True
    states = await agent_states(session, workspace_id)
    if transaction is None:  # the read began the transaction
        transaction = session.sync_session.get_transaction()
    read[workspace_id] = states
    session.info[AGENTS_READ_KEY] = (transaction, read)
    return states, False


def _remember_reservation(
    session: AsyncSession,
    workspace_id: uuid.UUID,
    states: list[AgentState],
    taken: AgentState,
    units: float,
) -> None:
    """Keep the states read in this transaction current after our own reservation
    (which, like any capacity change, dropped them)."""
    session.info[AGENTS_READ_KEY] = (
        session.sync_session.get_transaction(),
        {
            workspace_id: [
                replace(a, load_units=a.load_units + units, last_assigned_at=utcnow())
                if a.agent_id == taken.agent_id
                else a
                for a in states
            ]
        },
    )


def requirement_of(conversation: Conversation, policy: RoutingPolicy) -> Requirement:
    return Requirement(
        units=policy.weight(Channel(conversation.channel)),
        tier=conversation.tier,
        skills=frozenset(conversation.required_skills or ()),
        language=conversation.language,
        team_id=conversation.team_id,
    )


async def sticky_agent_of(
    session: AsyncSession, conversation: Conversation, policy: RoutingPolicy
) -> uuid.UUID | None:
    """The customer's previous agent on any channel within the sticky window."""
    if not policy.sticky_owner.enabled:
        return None
    if any(isinstance(o, Contact) and o.id == conversation.contact_id for o in session.new):
        # A contact not even written yet (new with this message) has had no agent.
        return None
    since = utcnow() - timedelta(hours=policy.sticky_owner.window_hours)
    agent_id: uuid.UUID | None = await session.scalar(
        select(Assignment.agent_id)
        .join(Conversation, Conversation.id == Assignment.conversation_id)
        .where(
            Conversation.workspace_id == conversation.workspace_id,
            Conversation.contact_id == conversation.contact_id,
            Assignment.created_at >= since,
        )
        .order_by(Assignment.created_at.desc())
        .limit(1)
    )
    return agent_id


async def sticky_agents_of(
    session: AsyncSession, conversations: Sequence[Conversation], policy: RoutingPolicy
) -> dict[uuid.UUID, uuid.UUID | None]:
    """:func:`sticky_agent_of` for many conversations of one workspace in one query."""
    if not policy.sticky_owner.enabled or not conversations:
        return {c.id: None for c in conversations}
    since = utcnow() - timedelta(hours=policy.sticky_owner.window_hours)
    rows = await session.execute(
        select(Conversation.contact_id, Assignment.agent_id, Assignment.created_at)
        .join(Conversation, Conversation.id == Assignment.conversation_id)
        .where(
            Conversation.workspace_id == conversations[0].workspace_id,
            Conversation.contact_id.in_({c.contact_id for c in conversations}),
            Assignment.created_at >= since,
        )
    )
    latest: dict[uuid.UUID, tuple[datetime, uuid.UUID]] = {}
    for contact_id, agent_id, created_at in rows:
        if contact_id not in latest or created_at > latest[contact_id][0]:
            latest[contact_id] = (created_at, agent_id)
    return {
        c.id: latest[c.contact_id][1] if c.contact_id in latest else None for c in conversations
    }


async def _agent_name(session: AsyncSession, agent_id: uuid.UUID) -> str:
    name = await session.scalar(select(Agent.display_name).where(Agent.id == agent_id))
    return name or "An agent"


async def add_internal_note(ctx: RoutingContext, conversation: Conversation, text: str) -> None:
    """A note for agents only: the next owner reads why the conversation came to them."""
    now = utcnow()
    note = Message(
        id=uuid.uuid4(),
        workspace_id=conversation.workspace_id,
        conversation_id=conversation.id,
        channel=conversation.channel,
        direction=MessageDirection.NOTE.value,
        text=text,
        delivery_status=DeliveryStatus.SENT.value,
        created_at=now,
    )
    ctx.session.add(note)
    await ctx.session.flush()
    record_event(
        ctx.session,
        MessageCreated(
            workspace_id=conversation.workspace_id,
            conversation_id=conversation.id,
            message_id=note.id,
            channel=Channel(conversation.channel),
            direction=MessageDirection.NOTE,
            text=text,
            assignee_agent_id=conversation.assignee_agent_id,
            created_at=now,
        ),
        topic=Topic.EVENTS,
        key=conversation_key(conversation.workspace_id, conversation.id),
        source=ctx.source,
        subject=str(conversation.id),
    )


async def tell_customer(
    ctx: RoutingContext, conversation: Conversation, text: str, *, flush: bool = True
) -> None:
    try:
        await send_to_customer(ctx.session, conversation, text, source=ctx.source, flush=flush)
    except NoCustomerAddressError:
        log.warning("no customer address to notify", conversation_id=str(conversation.id))


async def _take(
    ctx: RoutingContext,
    conversation: Conversation,
    agent_id: uuid.UUID,
    *,
    ranking: Ranking,
    requirement: Requirement,
    reason: str,
    announce: bool,
    contact: Contact | None = None,
    flush: bool = True,
) -> None:
    """Record the assignment whose capacity was just reserved. ``contact``: the
    conversation's contact, if the caller has it (then no lookup); ``flush=False`` leaves
    the rows to the transaction's next flush."""
    assignment = Assignment(
        id=uuid.uuid4(),
        workspace_id=conversation.workspace_id,
        conversation_id=conversation.id,
        agent_id=agent_id,
        reason=reason,
        explanation=ranking.explanation(agent_id, requirement),
        load_units=requirement.units,
        created_at=utcnow(),
    )
    ctx.session.add(assignment)
    conversation.status = ConversationStatus.ASSIGNED.value
    conversation.assignee_agent_id = agent_id
    conversation.queued_at = None
    conversation.queue_notice = None
    # The latest decision is this assignment's explanation: stored there only, not a
    # second time on the conversation (it lists every online agent).
    conversation.routing_explanation = None
    if flush:
        await ctx.session.flush()
    if contact is None or contact.id != conversation.contact_id:
        # Usually in the session already (the router resolved it for this message).
        contact = await ctx.session.get(Contact, conversation.contact_id)
    contact_name = contact.display_name if contact is not None else None
    record_event(
        ctx.session,
        ConversationAssigned(
            workspace_id=conversation.workspace_id,
            conversation_id=conversation.id,
            assignment_id=assignment.id,
            agent_id=agent_id,
            channel=Channel(conversation.channel),
            contact_display_name=contact_name,
            reason=reason,
            assigned_at=assignment.created_at,
        ),
        topic=Topic.EVENTS,
        key=conversation_key(conversation.workspace_id, conversation.id),
        source=ctx.source,
        subject=str(conversation.id),
    )
    ROUTING_DECISIONS.labels(outcome="assigned").inc()
    if announce:
        name = await _agent_name(ctx.session, agent_id)
        await tell_customer(ctx, conversation, ctx.policy.handoff_message.format(agent_name=name))


async def assign_or_queue(
    ctx: RoutingContext,
    conversation: Conversation,
    *,
    reason: str,
    announce: bool = False,
    exclude: frozenset[uuid.UUID] = frozenset(),
) -> uuid.UUID | None:
    """Give the conversation an owner now, or put it in the queue; the owner's id or None."""
    requirement = requirement_of(conversation, ctx.policy)
    sticky = await sticky_agent_of(ctx.session, conversation, ctx.policy)
    fresh = False
    while True:
        states, was_read_before = await _online_agents(
            ctx.session, conversation.workspace_id, fresh=fresh
        )
        agents = [a for a in states if a.agent_id not in exclude]
        ranking = rank_agents(agents, requirement, sticky_agent_id=sticky)
        for candidate in ranking.eligible:
            # The ranking read may be stale: the conditional UPDATE decides.
            if await reserve_capacity(
                ctx.session,
                workspace_id=conversation.workspace_id,
                agent_id=candidate.agent_id,
                units=requirement.units,
            ):
                _remember_reservation(
                    ctx.session, conversation.workspace_id, states, candidate, requirement.units
                )
                await _take(
                    ctx,
                    conversation,
                    candidate.agent_id,
                    ranking=ranking,
                    requirement=requirement,
                    reason=reason,
                    announce=announce,
                )
                return candidate.agent_id
        if not was_read_before:
            break
        # Nobody could take it by the states this transaction read earlier: read them
        # again before queueing (another process may have freed capacity meanwhile).
        fresh = True
    await _enqueue(ctx, conversation, ranking.explanation(None, requirement))
    return None


@dataclass(frozen=True)
class _Decision:
    agent_id: uuid.UUID | None  # reserved for the conversation; None: to the queue
    ranking: Ranking
    requirement: Requirement


class NewConversationOwners:
    """Owners for a group of new conversations of one workspace, chosen and reserved
    together by :func:`plan_new_conversation_owners`; :meth:`settle` records each
    conversation's outcome, in the order the caller wants their events."""

    def __init__(
        self,
        ctx: RoutingContext,
        reason: str,
        decisions: dict[uuid.UUID, _Decision],
    ) -> None:
        self._ctx = ctx
        self._reason = reason
        self._decisions = decisions
        self._queued_explanations: dict[int, dict[str, object]] = {}

    async def settle(
        self, conversation: Conversation, *, contact: Contact | None = None
    ) -> uuid.UUID | None:
        """Record the conversation's assignment (its capacity is reserved already) or its
        place in the queue; the owner's id or None. A conversation whose planned agent
        filled up meanwhile (another router) is assigned on its own, as
        :func:`assign_or_queue` does."""
        decision = self._decisions.get(conversation.id)
        if decision is None:
            return await assign_or_queue(self._ctx, conversation, reason=self._reason)
        if decision.agent_id is None:
            # Conversations queued on the same ranking share its explanation.
            explanation = self._queued_explanations.get(id(decision.ranking))
            if explanation is None:
                explanation = decision.ranking.explanation(None, decision.requirement)
                self._queued_explanations[id(decision.ranking)] = explanation
            await _enqueue(self._ctx, conversation, explanation)
            return None
        await _take(
            self._ctx,
            conversation,
            decision.agent_id,
            ranking=decision.ranking,
            requirement=decision.requirement,
            reason=self._reason,
            announce=False,
            contact=contact,
            flush=False,
        )
        return decision.agent_id


async def plan_new_conversation_owners(
    ctx: RoutingContext, conversations: Sequence[Conversation], *, reason: str
) -> NewConversationOwners:
    """:func:`assign_or_queue` for many new conversations of one workspace at once.

    The same choice, conversation by conversation in the given order (sticky owner,
    then tier, least loaded, longest idle; each choice sees the loads of the ones
    before), made on the agents read once, and the capacity of all of them reserved in
    one statement (:func:`reserve_capacity_of_agents`: still one atomic conditional
    update per agent). Conversations nobody could take are planned again on a fresh
    read before they are queued, and so are those whose agent another router filled
    since the read (a few rounds; then each on its own). Nothing is flushed here: the
    conversations can still be inserted with their owner, in the transaction's next
    flush, with their rows."""
    session = ctx.session
    decisions: dict[uuid.UUID, _Decision] = {}
    if not conversations:
        return NewConversationOwners(ctx, reason, decisions)
    workspace_id = conversations[0].workspace_id
    requirements = {c.id: requirement_of(c, ctx.policy) for c in conversations}
    sticky = await _sticky_agents_of_new(session, conversations, ctx.policy)
    pending = list(conversations)
    fresh = False
    for _ in range(PLAN_ROUNDS):
        with session.no_autoflush:
            states, was_read_before = await _online_agents(session, workspace_id, fresh=fresh)
        current = {a.agent_id: a for a in states}
        planned: list[tuple[Conversation, AgentState, Ranking]] = []
        unplaced: list[tuple[Conversation, Ranking]] = []
        # While no choice changed the states, the same requirement and sticky agent
        # rank the same (typically: nobody has room for a run of conversations).
        rankings: dict[tuple[Requirement, uuid.UUID | None], Ranking] = {}
        for conversation in pending:
            requirement = requirements[conversation.id]
            sticky_agent_id = sticky.get(conversation.contact_id)
            ranking = rankings.get((requirement, sticky_agent_id))
            if ranking is None:
                ranking = rank_agents(
                    list(current.values()), requirement, sticky_agent_id=sticky_agent_id
                )
                rankings[(requirement, sticky_agent_id)] = ranking
            best = ranking.best
            if best is None:
                unplaced.append((conversation, ranking))
                continue
            current[best.agent_id] = replace(
                best, load_units=best.load_units + requirement.units, last_assigned_at=utcnow()
            )
            rankings.clear()
            # A later conversation of the same customer sticks to this agent, as it
            # would have found this assignment.
            sticky[conversation.contact_id] = best.agent_id
            planned.append((conversation, best, ranking))
        wanted: dict[uuid.UUID, float] = defaultdict(float)
        for conversation, agent, _ in planned:
            wanted[agent.agent_id] += requirements[conversation.id].units
        with session.no_autoflush:
            reserved = await reserve_capacity_of_agents(
                session, workspace_id=workspace_id, units=wanted
            )
        lost: set[uuid.UUID] = set()
        for conversation, agent, ranking in planned:
            if agent.agent_id in reserved:
                decisions[conversation.id] = _Decision(
                    agent.agent_id, ranking, requirements[conversation.id]
                )
            else:  # another router filled the agent since the read
                lost.add(conversation.id)
        if not lost:
            _remember_states(session, workspace_id, list(current.values()))
            if not was_read_before:
                # Nobody could take these by agents read just now: to the queue.
                for conversation, ranking in unplaced:
                    decisions[conversation.id] = _Decision(
                        None, ranking, requirements[conversation.id]
                    )
                break
        # Planned again on a fresh read: the ones whose agent filled up meanwhile, and
        # the ones nobody could take by states read earlier in the transaction (or by
        # states that counted a reservation which then failed).
        pending = [c for c in pending if c.id not in decisions]
        if not pending:
            break
        fresh = True
    # Still undecided after PLAN_ROUNDS (routers racing for the last places): each is
    # settled on its own by assign_or_queue.
    return NewConversationOwners(ctx, reason, decisions)


async def _sticky_agents_of_new(
    session: AsyncSession, conversations: Sequence[Conversation], policy: RoutingPolicy
) -> dict[uuid.UUID, uuid.UUID]:
    """The previous agent per contact of these new conversations (:func:`sticky_agent_of`),
    with one query for the contacts that existed before this transaction."""
    if not policy.sticky_owner.enabled:
        return {}
    new_contacts = {o.id for o in session.new if isinstance(o, Contact)}
    known = [c for c in conversations if c.contact_id not in new_contacts]
    if not known:
        return {}
    found = await sticky_agents_of(session, known, policy)
    return {c.contact_id: agent for c in known if (agent := found[c.id]) is not None}


def _remember_states(
    session: AsyncSession, workspace_id: uuid.UUID, states: list[AgentState]
) -> None:
    """The workspace's agents as this transaction's own reservations left them."""
    session.info[AGENTS_READ_KEY] = (session.sync_session.get_transaction(), {workspace_id: states})


async def _enqueue(
    ctx: RoutingContext, conversation: Conversation, explanation: dict[str, object]
) -> None:
    conversation.routing_explanation = explanation
    if conversation.status == ConversationStatus.QUEUED.value and conversation.queued_at:
        return  # already waiting; keeps its place
    conversation.status = ConversationStatus.QUEUED.value
    conversation.assignee_agent_id = None
    conversation.queued_at = utcnow()
    conversation.queue_notice = None
    ROUTING_DECISIONS.labels(outcome="queued").inc()
    record_event(
        ctx.session,
        ConversationQueued(
            workspace_id=conversation.workspace_id,
            conversation_id=conversation.id,
            channel=Channel(conversation.channel),
            priority=conversation.priority,
            tier=conversation.tier,
            queued_at=conversation.queued_at,
        ),
        topic=Topic.EVENTS,
        key=conversation_key(conversation.workspace_id, conversation.id),
        source=ctx.source,
        subject=str(conversation.id),
    )


async def release_owner(
    ctx: RoutingContext, conversation: Conversation, *, reason: str
) -> uuid.UUID | None:
    """Close the open assignment and free its capacity; the previous owner's id.

    The assignment is closed by one conditional UPDATE (``closed_at IS NULL``), and
    capacity is released only for the row it closed: a caller working from a stale read
    (the assignment closed by another transaction since) closes nothing and releases
    nothing, instead of releasing the owner's capacity a second time."""
    now = utcnow()
    closed = (
        await ctx.session.execute(
            update(Assignment)
            .where(Assignment.conversation_id == conversation.id, Assignment.closed_at.is_(None))
            .values(closed_at=now, closed_reason=reason)
            .returning(Assignment.agent_id, Assignment.load_units)
        )
    ).one_or_none()
    conversation.assignee_agent_id = None
    if closed is None:
        return None
    agent_id, load_units = closed
    await release_capacity(
        ctx.session,
        workspace_id=conversation.workspace_id,
        agent_id=agent_id,
        units=load_units,
    )
    record_event(
        ctx.session,
        ConversationUnassigned(
            workspace_id=conversation.workspace_id,
            conversation_id=conversation.id,
            agent_id=agent_id,
            reason=reason,
            unassigned_at=now,
        ),
        topic=Topic.EVENTS,
        key=conversation_key(conversation.workspace_id, conversation.id),
        source=ctx.source,
        subject=str(conversation.id),
    )
    return agent_id


async def start_sla_clock(
    ctx: RoutingContext, conversation: Conversation, *, new: bool = False
) -> None:
    """(Re)start the first-response clock for the conversation's current tier. ``new``:
    the conversation was created in this transaction, so it has no clock to replace."""
    seconds = ctx.policy.sla_seconds(
        tier=conversation.tier,
        channel=Channel(conversation.channel),
        priority=conversation.priority,
    )
    try:
        due = add_business_seconds(ctx.policy.business_hours, utcnow(), seconds)
    except ValueError:
        # No opening at all within a year (e.g. every day a holiday): no clock to run.
        log.warning(
            "no business hours ahead; SLA clock not started", conversation=str(conversation.id)
        )
        conversation.sla_due_at = None
        return
    conversation.sla_due_at = due
    await schedule_timer(
        ctx.session,
        TimerKind.SLA_FIRST_RESPONSE,
        workspace_id=conversation.workspace_id,
        due_at=due,
        conversation_id=conversation.id,
        replace=not new,
    )


async def team_id_named(
    session: AsyncSession, workspace_id: uuid.UUID, name: str
) -> uuid.UUID | None:
    team_id: uuid.UUID | None = await session.scalar(
        select(Team.id).where(Team.workspace_id == workspace_id, Team.name == name)
    )
    return team_id


@dataclass(frozen=True)
class EscalationOutcome:
    escalated: bool
    new_owner: uuid.UUID | None
    alerted_supervisor: bool = False


async def escalate(
    ctx: RoutingContext,
    conversation: Conversation,
    *,
    trigger: str,
    reason: str,
    by_agent_id: uuid.UUID | None = None,
    team_id: uuid.UUID | None = None,
) -> EscalationOutcome:
    """Move up one tier (or to ``team_id``), tell the customer, find the next owner.

    At the top tier with no team given, nothing moves: a supervisor alert is raised.
    """
    now = utcnow()
    key = conversation_key(conversation.workspace_id, conversation.id)
    if team_id is None and conversation.tier >= MAX_TIER:
        record_event(
            ctx.session,
            SupervisorAlert(
                workspace_id=conversation.workspace_id,
                conversation_id=conversation.id,
                kind="top_tier_exhausted",
                detail=f"{trigger}: {reason}",
                raised_at=now,
            ),
            topic=Topic.EVENTS,
            key=key,
            source=ctx.source,
            subject=str(conversation.id),
        )
        return EscalationOutcome(escalated=False, new_owner=None, alerted_supervisor=True)
    from_tier = conversation.tier
    if team_id is None:
        conversation.tier = from_tier + 1
    else:
        conversation.team_id = team_id
    previous = await release_owner(ctx, conversation, reason=f"escalated_{trigger}")
    target = f"team {team_id}" if team_id else f"tier {conversation.tier}"
    await add_internal_note(
        ctx, conversation, f"Escalated from tier {from_tier} to {target} ({trigger}): {reason}"
    )
    record_event(
        ctx.session,
        ConversationEscalated(
            workspace_id=conversation.workspace_id,
            conversation_id=conversation.id,
            from_tier=from_tier,
            to_tier=conversation.tier,
            team_id=conversation.team_id,
            trigger=trigger,
            reason=reason,
            by_agent_id=by_agent_id,
            escalated_at=now,
        ),
        topic=Topic.EVENTS,
        key=key,
        source=ctx.source,
        subject=str(conversation.id),
    )
    await tell_customer(
        ctx, conversation, ctx.policy.escalation_message.format(tier=conversation.tier)
    )
    if conversation.first_response_at is None:
        await start_sla_clock(ctx, conversation)
    conversation.status = ConversationStatus.QUEUED.value
    conversation.queued_at = None  # a fresh place in the new tier's queue
    owner = await assign_or_queue(
        ctx,
        conversation,
        reason=f"escalated_{trigger}",
        announce=True,
        exclude=frozenset({previous}) if previous else frozenset(),
    )
    return EscalationOutcome(escalated=True, new_owner=owner)


async def sla_breached(ctx: RoutingContext, conversation: Conversation) -> EscalationOutcome | None:
    """The first-response timer fired: escalate if still unanswered."""
    if conversation.first_response_at is not None or conversation.status in (
        ConversationStatus.RESOLVED.value,
        ConversationStatus.SNOOZED.value,
    ):
        return None
    SLA_BREACHES.labels(tier=str(conversation.tier), channel=conversation.channel).inc()
    return await escalate(
        ctx,
        conversation,
        trigger="sla",
        reason=f"no first response within the tier {conversation.tier} target",
    )


async def lock_conversations_owned_by(
    session: AsyncSession, agent: Agent, *, skip_locked: bool = False
) -> list[Conversation]:
    """The agent's assigned conversations, locked ``FOR UPDATE`` in id order and read
    afresh. A presence change takes them before it changes the agent row (the module's
    lock order). ``skip_locked``: raise :class:`RowBusyError` if another transaction
    holds any of them, instead of waiting."""
    owned = (
        Conversation.workspace_id == agent.workspace_id,
        Conversation.assignee_agent_id == agent.id,
        Conversation.status == ConversationStatus.ASSIGNED.value,
    )
    conversations = list(
        await session.scalars(
            select(Conversation)
            .where(*owned)
            .order_by(Conversation.id)
            .with_for_update(skip_locked=skip_locked)
            .execution_options(populate_existing=True)
        )
    )
    if skip_locked:
        held_elsewhere = await session.scalar(
            select(func.count())
            .select_from(Conversation)
            .where(*owned, Conversation.id.not_in([c.id for c in conversations]))
        )
        if held_elsewhere:
            raise RowBusyError(f"{held_elsewhere} conversation(s) of agent {agent.id} locked")
    return conversations


async def reassign_absent_owner(
    ctx: RoutingContext, agent: Agent, *, skip_locked: bool = False
) -> list[uuid.UUID]:
    """The owner stayed away past the grace period: their conversations move on.

    Their assigned conversations are locked first (id order), then the agent row, whose
    status is checked again under the lock (an owner back online keeps everything).
    ``skip_locked`` (the grace timer): raise :class:`RowBusyError` rather than wait for
    any of these rows. Presence changes lock the conversations
    (:func:`lock_conversations_owned_by`) before they change the agent row, then call
    this."""
    conversations = await lock_conversations_owned_by(ctx.session, agent, skip_locked=skip_locked)
    locked = await ctx.session.scalar(
        select(Agent)
        .where(Agent.id == agent.id)
        .with_for_update(skip_locked=skip_locked)
        .execution_options(populate_existing=True)
    )
    if locked is None:
        if skip_locked:
            raise RowBusyError(f"agent {agent.id} is locked")
        return []
    if locked.status == AgentStatus.ONLINE.value:
        return []
    moved = []
    for conversation in conversations:
        await release_owner(ctx, conversation, reason=f"owner_{agent.status}")
        await add_internal_note(
            ctx,
            conversation,
            f"{agent.display_name} was {agent.status} past the grace period; handed on.",
        )
        conversation.status = ConversationStatus.QUEUED.value
        conversation.queued_at = None
        await assign_or_queue(
            ctx,
            conversation,
            reason="owner_absent",
            announce=True,
            exclude=frozenset({agent.id}),
        )
        moved.append(conversation.id)
    return moved


async def average_handle_seconds(
    session: AsyncSession, workspace_id: uuid.UUID, default: float
) -> float:
    recent = (
        select(Assignment.created_at, Assignment.closed_at)
        .where(Assignment.workspace_id == workspace_id, Assignment.closed_at.is_not(None))
        .order_by(Assignment.closed_at.desc())
        .limit(HANDLE_TIME_SAMPLE)
    )
    durations = [
        (closed - created).total_seconds()
        for created, closed in await session.execute(recent)
        if closed is not None
    ]
    return sum(durations) / len(durations) if durations else default


@dataclass(frozen=True)
class DrainResult:
    assigned: int
    waiting: int
    notices: int


async def drain_queue(ctx: RoutingContext, workspace_id: uuid.UUID) -> DrainResult:
    """Match waiting conversations to agents with room; tell the rest where they stand."""
    waiting = list(
        await ctx.session.scalars(
            select(Conversation)
            .where(
                Conversation.workspace_id == workspace_id,
                Conversation.status == ConversationStatus.QUEUED.value,
            )
            .order_by(Conversation.priority.desc(), Conversation.queued_at)
            .limit(QUEUE_SCAN_LIMIT)
            .with_for_update(skip_locked=True)
            # Not needed to match or notify: each waiting conversation's explanation
            # lists every online agent (tens of KB to read and parse, every tick).
            .options(
                defer(Conversation.routing_explanation, raiseload=True),
                defer(Conversation.intake, raiseload=True),
            )
        )
    )
    if not waiting:
        return DrainResult(0, 0, 0)
    by_id = {c.id: c for c in waiting}
    agents = await agent_states(ctx.session, workspace_id)
    sticky = await sticky_agents_of(ctx.session, waiting, ctx.policy)
    queued = [
        QueuedConversation(
            conversation_id=c.id,
            priority=c.priority,
            queued_at=c.queued_at or c.created_at,
            requirement=requirement_of(c, ctx.policy),
            sticky_agent_id=sticky[c.id],
        )
        for c in waiting
    ]
    queued, matches = await _matches_of_unowned(ctx.session, workspace_id, queued, agents)
    assigned: set[uuid.UUID] = set()
    for match in matches:
        conversation = by_id[match.conversation_id]
        if await reserve_capacity(
            ctx.session,
            workspace_id=workspace_id,
            agent_id=match.agent_id,
            units=match.requirement.units,
        ):
            await _take(
                ctx,
                conversation,
                match.agent_id,
                ranking=match.ranking,
                requirement=match.requirement,
                reason="queue",
                announce=False,
            )
            assigned.add(conversation.id)
    still_waiting = [q for q in queued if q.conversation_id not in assigned]
    notices = await _send_queue_notices(ctx, workspace_id, still_waiting, agents, by_id)
    return DrainResult(len(assigned), len(still_waiting), notices)


async def _matches_of_unowned(
    session: AsyncSession,
    workspace_id: uuid.UUID,
    queued: list[QueuedConversation],
    agents: list[AgentState],
) -> tuple[list[QueuedConversation], list[Match]]:
    """The queue's matches, leaving out (logged) any queued conversation that still has
    an open assignment, with the queue left without them.

    Such a conversation cannot be given another owner (one open assignment per
    conversation, a unique index): taking it would fail the whole drain, every time, and
    hold up the workspace's queue for good. No routing path leaves one (each closes the
    open assignment before it queues a conversation); rows written or restored by hand
    can. It is left as it is for a person to look at: which of the two is right, the
    status or the assignment, the data does not say. Only matched conversations are
    checked, so a drain that assigns nothing asks nothing more."""
    matches = match_queue(queued, agents)
    checked: set[uuid.UUID] = set()
    while unchecked := [m.conversation_id for m in matches if m.conversation_id not in checked]:
        owned = set(
            await session.scalars(
                select(Assignment.conversation_id).where(
                    Assignment.conversation_id.in_(unchecked), Assignment.closed_at.is_(None)
                )
            )
        )
        if not owned:
            break
        log.error(
            "queued conversations with an open assignment skipped by the queue",
            workspace_id=str(workspace_id),
            conversation_ids=sorted(str(conversation_id) for conversation_id in owned),
        )
        checked.update(unchecked)
        queued = [q for q in queued if q.conversation_id not in owned]
        matches = match_queue(queued, agents)  # their places go to the next in line
    return queued, matches


async def _send_queue_notices(
    ctx: RoutingContext,
    workspace_id: uuid.UUID,
    waiting: list[QueuedConversation],
    agents: list[AgentState],
    by_id: dict[uuid.UUID, Conversation],
) -> int:
    settings = ctx.policy.queue_notices
    if not settings.enabled or not waiting:
        return 0
    handle = await average_handle_seconds(
        ctx.session, workspace_id, ctx.policy.default_handle_seconds
    )
    concurrency = sum(a.capacity_units for a in agents) / len(agents) if agents else 0.0
    now = utcnow()
    sent = 0
    for conversation_id, position in queue_positions(waiting).items():
        conversation = by_id[conversation_id]
        requirement = requirement_of(conversation, ctx.policy)
        serving = [a for a in agents if a.tier >= requirement.tier]
        wait = estimate_wait_seconds(
            position,
            serving_agents=len(serving),
            concurrency=concurrency / requirement.units if requirement.units else concurrency,
            avg_handle_seconds=handle,
        )
        previous = _notice_state(conversation.queue_notice)
        if not notice_is_due(
            previous,
            position=position,
            wait_seconds=wait,
            now=now,
            min_interval_seconds=settings.min_interval_seconds,
            material_position_change=settings.material_position_change,
            material_wait_change_ratio=settings.material_wait_change_ratio,
        ):
            continue
        wait_minutes = (
            "unknown (no agent is available yet)" if wait is None else str(max(1, round(wait / 60)))
        )
        await tell_customer(
            ctx,
            conversation,
            settings.message.format(position=position, wait_minutes=wait_minutes),
            flush=False,  # all notices in the transaction's one flush
        )
        conversation.queue_notice = {
            "position": position,
            "wait_seconds": wait,
            "sent_at": now.isoformat(),
        }
        sent += 1
    return sent


def _notice_state(stored: dict[str, object] | None) -> QueueNoticeState | None:
    if not stored:
        return None
    wait = stored.get("wait_seconds")
    return QueueNoticeState(
        position=int(str(stored["position"])),
        wait_seconds=float(str(wait)) if wait is not None else None,
        sent_at=datetime.fromisoformat(str(stored["sent_at"])),
    )


async def workspaces_with_waiting(session: AsyncSession) -> list[uuid.UUID]:
    rows = await session.scalars(
        select(Conversation.workspace_id)
        .where(Conversation.status == ConversationStatus.QUEUED.value)
        .group_by(Conversation.workspace_id)
        .order_by(func.min(Conversation.queued_at))
    )
    return list(rows)


async def cancel_sla_clock(session: AsyncSession, conversation: Conversation) -> None:
    await cancel_timers(session, TimerKind.SLA_FIRST_RESPONSE, conversation_id=conversation.id)


def _status_changed(
    ctx: RoutingContext,
    conversation: Conversation,
    previous: str,
    *,
    by_agent_id: uuid.UUID | None,
) -> None:
    record_event(
        ctx.session,
        ConversationStatusChanged(
            workspace_id=conversation.workspace_id,
            conversation_id=conversation.id,
            status=conversation.status,
            previous_status=previous,
            assignee_agent_id=conversation.assignee_agent_id,
            by_agent_id=by_agent_id,
            outcome_code=conversation.outcome_code,
            snoozed_until=conversation.snoozed_until,
            changed_at=utcnow(),
        ),
        topic=Topic.EVENTS,
        key=conversation_key(conversation.workspace_id, conversation.id),
        source=ctx.source,
        subject=str(conversation.id),
    )


async def transfer(
    ctx: RoutingContext,
    conversation: Conversation,
    *,
    reason: str,
    by_agent_id: uuid.UUID | None,
    to_agent_id: uuid.UUID | None = None,
    to_team_id: uuid.UUID | None = None,
    to_tier: int | None = None,
) -> uuid.UUID | None:
    """Hand the conversation to an agent (who must be online with room), a team or a
    tier. The customer hears who helps next; a note tells the next owner why."""
    requirement = requirement_of(conversation, ctx.policy)
    if to_agent_id is not None:
        target = next(
            (
                a
                for a in await agent_states(ctx.session, conversation.workspace_id)
                if a.agent_id == to_agent_id
            ),
            None,
        )
        if target is None:
            raise TransferRefusedError("the agent is not online")
        if target.agent_id == conversation.assignee_agent_id:
            raise TransferRefusedError("the agent already owns the conversation")
    previous = await release_owner(ctx, conversation, reason="transferred")
    if to_tier is not None:
        conversation.tier = to_tier
    if to_team_id is not None:
        conversation.team_id = to_team_id
    target_text = (
        f"agent {to_agent_id}"
        if to_agent_id
        else f"team {to_team_id}"
        if to_team_id
        else f"tier {conversation.tier}"
    )
    by = await _agent_name(ctx.session, by_agent_id) if by_agent_id else "An integration"
    await add_internal_note(ctx, conversation, f"{by} transferred this to {target_text}: {reason}")
    conversation.status = ConversationStatus.QUEUED.value
    conversation.queued_at = None
    if to_agent_id is not None:
        requirement = requirement_of(conversation, ctx.policy)
        if not await reserve_capacity(
            ctx.session,
            workspace_id=conversation.workspace_id,
            agent_id=to_agent_id,
            units=requirement.units,
        ):
            raise TransferRefusedError("the agent has no free capacity")
        ranking = Ranking(eligible=(), excluded={}, rule="transfer_to_agent", sticky_agent_id=None)
        await _take(
            ctx,
            conversation,
            to_agent_id,
            ranking=ranking,
            requirement=requirement,
            reason="transfer",
            announce=True,
        )
        return to_agent_id
    return await assign_or_queue(
        ctx,
        conversation,
        reason="transfer",
        announce=True,
        exclude=frozenset({previous}) if previous else frozenset(),
    )


class TransferRefusedError(Exception):
    """The requested transfer cannot happen (target offline, full, or already owner)."""


async def resolve(
    ctx: RoutingContext,
    conversation: Conversation,
    *,
    outcome_code: str | None,
    by_agent_id: uuid.UUID | None,
) -> None:
    """Close the conversation: the owner's capacity frees (the queue pulls at once)."""
    previous = conversation.status
    last_owner = await release_owner(ctx, conversation, reason="resolved")
    conversation.assignee_agent_id = last_owner  # kept for history; the capacity is freed
    conversation.status = ConversationStatus.RESOLVED.value
    conversation.resolved_at = utcnow()
    conversation.outcome_code = outcome_code
    conversation.snoozed_until = None
    await cancel_timers(ctx.session, TimerKind.SLA_FIRST_RESPONSE, conversation_id=conversation.id)
    await cancel_timers(ctx.session, TimerKind.SNOOZE_END, conversation_id=conversation.id)
    _status_changed(ctx, conversation, previous, by_agent_id=by_agent_id)
    await drain_queue(ctx, conversation.workspace_id)


async def reopen(
    ctx: RoutingContext, conversation: Conversation, *, by_agent_id: uuid.UUID | None
) -> uuid.UUID | None:
    """Back to work: the previous owner first (sticky), else the queue."""
    previous = conversation.status
    conversation.status = ConversationStatus.QUEUED.value
    conversation.resolved_at = None
    conversation.outcome_code = None
    conversation.queued_at = None
    await ctx.session.flush()
    owner = await assign_or_queue(ctx, conversation, reason="reopened")
    _status_changed(ctx, conversation, previous, by_agent_id=by_agent_id)
    return owner


async def snooze(
    ctx: RoutingContext,
    conversation: Conversation,
    *,
    until: datetime,
    by_agent_id: uuid.UUID | None,
) -> None:
    """Park the conversation until ``until``; it keeps its owner and wakes by timer."""
    previous = conversation.status
    conversation.status = ConversationStatus.SNOOZED.value
    conversation.snoozed_until = until
    await schedule_timer(
        ctx.session,
        TimerKind.SNOOZE_END,
        workspace_id=conversation.workspace_id,
        due_at=until,
        conversation_id=conversation.id,
    )
    _status_changed(ctx, conversation, previous, by_agent_id=by_agent_id)
