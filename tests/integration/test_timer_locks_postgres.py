"""Timer handlers against concurrent writers of the same rows, on real PostgreSQL.

Each race is played deterministically: a hook inside the handler's transaction starts
the other writer (an agent_api command, a queue drain) in a session of its own and lets
the handler go on only once that writer has committed or is waiting for a lock. The
outcome must be one a serial order could give: capacity equal to the open assignments,
a conversation's status matching its assignments, a resolved conversation left
resolved.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from services.agent_api.agents import service as agent_admin
from services.agent_api.auth import AgentClaims
from services.agent_api.conversations import service as conversation_commands
from services.router import maintenance as maintenance_module
from services.router import snoozed as snoozed_module
from services.router.maintenance import RoutingMaintenance
from services.router.routing import route_inbound
from shared import capacity as shared_capacity
from shared.bus.memory import MemoryBus
from shared.db.models import (
    Agent,
    Assignment,
    Conversation,
    OutboxEvent,
    Timer,
    TimerKind,
    utcnow,
)
from shared.db.session import Database
from shared.problems import ProblemError
from shared.routing import engine
from shared.routing.engine import PolicyCache, RoutingContext, drain_queue
from shared.routing.policy import DEFAULT_POLICY
from tests.unit.test_router import inbound
from tests.unit.test_routing_maintenance import (
    add_queued_conversation,
    add_sla_timer,
    agent_id,
    aware,
    conversation_row,
    new_workspace,
    timer_row,
)

pytestmark = pytest.mark.integration

ADA = "ada@demo.omniroute.dev"  # online, tier 1, capacity 3
BEN = "ben@demo.omniroute.dev"  # tier 1
SAM = "sam@demo.omniroute.dev"  # supervisor


@pytest.fixture
def maintenance(pg_database: Database) -> RoutingMaintenance:
    return RoutingMaintenance(pg_database, MemoryBus(), PolicyCache(0), interval_seconds=1)


async def backend_waiting_for_a_lock(database: Database, pid: int) -> bool:
    # A session per look: pg_stat_activity is a snapshot per transaction.
    async with database.sessions() as session:
        waiting = await session.scalar(
            text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :pid"),
            {"pid": pid},
        )
    return bool(waiting)


async def backends_blocked_by(database: Database, pid: int) -> list[int]:
    async with database.sessions() as session:
        rows = await session.scalars(
            text("SELECT pid FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
            {"pid": pid},
        )
        return list(rows)


async def until(condition: Callable[[], Awaitable[bool]]) -> None:
    """Wait (bounded) for ``condition``: state, never elapsed time, decides the test."""
    for _ in range(2000):
        if await condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition never came true")


class Concurrently:
    """Another writer in a session of its own, started from inside the handler's
    transaction: :meth:`start` returns once it committed or waits for a lock."""

    def __init__(self, database: Database, write: Callable[[Any], Awaitable[None]]) -> None:
        self._database = database
        self._write = write
        self._pid: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with self._database.sessions() as session:
            self._pid.set_result(int(await session.scalar(text("SELECT pg_backend_pid()"))))
            await self._write(session)
            await session.commit()

    async def start(self) -> None:
        self.task = asyncio.create_task(self._run())
        task = self.task

        async def committed_or_waiting() -> bool:
            if task.done():
                return True
            return self._pid.done() and await backend_waiting_for_a_lock(
                self._database, self._pid.result()
            )

        await until(committed_or_waiting)

    async def finished(self) -> None:
        assert self.task is not None, "the hook never ran"
        await self.task


async def loads_and_open_units(
    database: Database, workspace_id: uuid.UUID
) -> tuple[dict[uuid.UUID, float], dict[uuid.UUID, float]]:
    """Each agent's load, and what its open assignments add up to."""
    async with database.sessions() as session:
        loads = {
            agent: float(load)
            for agent, load in await session.execute(
                select(Agent.id, Agent.load_units).where(Agent.workspace_id == workspace_id)
            )
        }
        held: dict[uuid.UUID, float] = defaultdict(float)
        for agent, units in await session.execute(
            select(Assignment.agent_id, Assignment.load_units).where(
                Assignment.workspace_id == workspace_id, Assignment.closed_at.is_(None)
            )
        ):
            held[agent] += float(units)
    return loads, {agent: held.get(agent, 0.0) for agent in loads}


async def open_assignments(database: Database, conversation_id: uuid.UUID) -> list[Assignment]:
    async with database.sessions() as session:
        return list(
            await session.scalars(
                select(Assignment).where(
                    Assignment.conversation_id == conversation_id, Assignment.closed_at.is_(None)
                )
            )
        )


async def assert_consistent(database: Database, conversation_id: uuid.UUID) -> Conversation:
    """Status, owner, queue place and open assignment agree with one another."""
    conversation = await conversation_row(database, conversation_id)
    owned = await open_assignments(database, conversation_id)
    if conversation.status == "assigned":
        assert [a.agent_id for a in owned] == [conversation.assignee_agent_id]
        assert conversation.queued_at is None
    elif conversation.status == "queued":
        assert owned == []
        assert conversation.assignee_agent_id is None
        assert conversation.queued_at is not None
    elif conversation.status == "resolved":
        assert owned == []
    return conversation


async def set_agent(database: Database, agent: uuid.UUID, **values: Any) -> None:
    async with database.sessions() as session:
        await session.execute(update(Agent).where(Agent.id == agent).values(**values))
        await session.commit()


async def add_grace_timer(database: Database, workspace_id: uuid.UUID, agent: uuid.UUID) -> None:
    async with database.sessions() as session:
        session.add(
            Timer(
                workspace_id=workspace_id,
                kind=TimerKind.OWNER_OFFLINE_GRACE.value,
                agent_id=agent,
                due_at=utcnow() - timedelta(seconds=1),
            )
        )
        await session.commit()


async def test_a_resolve_during_the_owner_grace_timer_releases_the_owner_once(
    pg_database: Database, maintenance: RoutingMaintenance, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace_id = await new_workspace(pg_database)
    ada = await agent_id(pg_database, workspace_id, ADA)
    ben = await agent_id(pg_database, workspace_id, BEN)
    sam = await agent_id(pg_database, workspace_id, SAM)
    resolved = await add_queued_conversation(
        pg_database, workspace_id, waiting_since=timedelta(minutes=2)
    )
    snoozed = await add_queued_conversation(
        pg_database, workspace_id, waiting_since=timedelta(minutes=1)
    )
    await maintenance.drain_workspace_queue(workspace_id)  # both to Ada, the one online
    async with pg_database.sessions() as session:
        # A snoozed conversation keeps its owner's capacity and is not handed on: Ada's
        # load stays above 0, so a second release shows instead of failing the CHECK.
        await session.execute(
            update(Conversation)
            .where(Conversation.id == snoozed)
            .values(status="snoozed", snoozed_until=utcnow() + timedelta(days=1))
        )
        await session.commit()
    await set_agent(pg_database, ada, status="offline")
    await set_agent(pg_database, ben, status="online")
    await add_grace_timer(pg_database, workspace_id, ada)
    supervisor = AgentClaims(agent_id=sam, workspace_id=workspace_id, role="supervisor")

    async def resolve(session: Any) -> None:
        await conversation_commands.resolve(
            session, supervisor, resolved, outcome_code=None, policy=DEFAULT_POLICY
        )

    resolving = Concurrently(pg_database, resolve)
    release = shared_capacity.release_capacity

    async def release_with_a_resolve_in_between(*args: Any, **kwargs: Any) -> None:
        # The handler has read the owner's conversation and its open assignment.
        if resolving.task is None:
            await resolving.start()
        await release(*args, **kwargs)

    monkeypatch.setattr(engine, "release_capacity", release_with_a_resolve_in_between)

    assert await maintenance.fire_one_timer()
    await resolving.finished()

    loads, held = await loads_and_open_units(pg_database, workspace_id)
    assert loads == held
    assert loads[ada] == 1.0  # the snoozed conversation's unit: released once, not twice
    conversation = await assert_consistent(pg_database, resolved)
    assert conversation.status == "resolved"
    assert (await conversation_row(pg_database, snoozed)).status == "snoozed"


async def test_a_drain_during_the_sla_timer_leaves_a_consistent_conversation(
    pg_database: Database, maintenance: RoutingMaintenance, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace_id = await new_workspace(pg_database)
    waiting = await add_queued_conversation(
        pg_database, workspace_id, waiting_since=timedelta(minutes=5)
    )
    await add_sla_timer(pg_database, workspace_id, waiting, overdue=timedelta(0))

    async def drain(session: Any) -> None:
        ctx = RoutingContext(session=session, policy=DEFAULT_POLICY, source="test")
        await drain_queue(ctx, workspace_id)

    draining = Concurrently(pg_database, drain)
    breached = engine.sla_breached

    async def breached_with_a_drain_in_between(ctx: RoutingContext, conversation: Any) -> Any:
        # The handler has read the conversation: queued, tier 1, no first response.
        await draining.start()
        return await breached(ctx, conversation)

    monkeypatch.setattr(maintenance_module, "sla_breached", breached_with_a_drain_in_between)

    assert await maintenance.fire_one_timer()
    await draining.finished()

    loads, held = await loads_and_open_units(pg_database, workspace_id)
    assert loads == held
    conversation = await assert_consistent(pg_database, waiting)
    # The timer held the conversation: the drain passed it by, the breach moved it to
    # tier 2, where nobody is online.
    assert conversation.tier == 2
    assert conversation.status == "queued"


async def test_a_timer_does_not_wait_for_a_conversation_another_transaction_holds(
    pg_database: Database, maintenance: RoutingMaintenance
) -> None:
    """A drain holds the conversation (assigning it) when its SLA timer comes due: the
    handler does not wait (the holder may be about to cancel the timer, which waits for
    the claim) but tries again shortly, then acts on what the drain left."""
    workspace_id = await new_workspace(pg_database)
    ada = await agent_id(pg_database, workspace_id, ADA)
    waiting = await add_queued_conversation(
        pg_database, workspace_id, waiting_since=timedelta(minutes=5)
    )
    timer_id = await add_sla_timer(pg_database, workspace_id, waiting, overdue=timedelta(0))
    async with pg_database.sessions() as holder:
        holder_pid = int(await holder.scalar(text("SELECT pg_backend_pid()")))
        await drain_queue(
            RoutingContext(session=holder, policy=DEFAULT_POLICY, source="test"), workspace_id
        )
        before = utcnow()
        firing = asyncio.create_task(maintenance.fire_one_timer())

        async def done_or_blocked() -> bool:
            return firing.done() or bool(await backends_blocked_by(pg_database, holder_pid))

        await until(done_or_blocked)
        blocked = not firing.done()
        if blocked:
            await holder.rollback()  # let the handler finish before failing
            await firing
        assert not blocked, "the timer handler waited for the drain's conversation"
        assert firing.result() is True
        await holder.commit()

    tried_later = await timer_row(pg_database, timer_id)
    assert tried_later.fired_at is None
    assert aware(tried_later.due_at) > before
    assigned = await assert_consistent(pg_database, waiting)
    assert (assigned.status, assigned.assignee_agent_id, assigned.tier) == ("assigned", ada, 1)

    async with pg_database.sessions() as session:
        await session.execute(update(Timer).where(Timer.id == timer_id).values(due_at=utcnow()))
        await session.commit()
    assert await maintenance.fire_one_timer()

    loads, held = await loads_and_open_units(pg_database, workspace_id)
    assert loads == held
    escalated = await assert_consistent(pg_database, waiting)
    assert (escalated.status, escalated.tier) == ("queued", 2)  # Ada's unanswered: breach
    assert (await timer_row(pg_database, timer_id)).fired_at is not None


async def test_a_resolve_waits_for_a_timer_holding_the_conversation(
    pg_database: Database, maintenance: RoutingMaintenance
) -> None:
    """agent_api commands lock the conversation before they read it: a resolve that
    comes while a handler holds it is decided on the handler's outcome."""
    workspace_id = await new_workspace(pg_database)
    sam = await agent_id(pg_database, workspace_id, SAM)
    conversation_id = await add_queued_conversation(
        pg_database, workspace_id, waiting_since=timedelta(minutes=1)
    )
    await maintenance.drain_workspace_queue(workspace_id)  # to Ada
    supervisor = AgentClaims(agent_id=sam, workspace_id=workspace_id, role="supervisor")

    async with pg_database.sessions() as handler:
        held = await handler.scalar(
            select(Conversation).where(Conversation.id == conversation_id).with_for_update()
        )
        assert held is not None

        async def resolve(session: Any) -> None:
            await conversation_commands.resolve(
                session, supervisor, conversation_id, outcome_code=None, policy=DEFAULT_POLICY
            )

        resolving = Concurrently(pg_database, resolve)
        await resolving.start()
        assert resolving.task is not None
        assert not resolving.task.done()  # waiting for the conversation's row
        # The handler resolves it first (as a concurrent resolve would).
        ctx = RoutingContext(session=handler, policy=DEFAULT_POLICY, source="test")
        await engine.resolve(ctx, held, outcome_code=None, by_agent_id=None)
        await handler.commit()

    with pytest.raises(ProblemError, match="already resolved"):
        await resolving.finished()
    loads, held_units = await loads_and_open_units(pg_database, workspace_id)
    assert loads == held_units
    assert (await assert_consistent(pg_database, conversation_id)).status == "resolved"


async def test_an_assignment_closed_by_two_transactions_at_once_is_released_once(
    pg_database: Database, maintenance: RoutingMaintenance
) -> None:
    """Whatever the callers read before: the second close finds the assignment closed
    (it waits for the first's row, then sees it) and releases nothing."""
    workspace_id = await new_workspace(pg_database)
    ada = await agent_id(pg_database, workspace_id, ADA)
    first = await add_queued_conversation(
        pg_database, workspace_id, waiting_since=timedelta(minutes=2)
    )
    await add_queued_conversation(pg_database, workspace_id, waiting_since=timedelta(minutes=1))
    await maintenance.drain_workspace_queue(workspace_id)  # both to Ada: load 2

    async def release(session: Any) -> None:
        conversation = await session.get(Conversation, first)
        assert conversation is not None
        ctx = RoutingContext(session=session, policy=DEFAULT_POLICY, source="test")
        await engine.release_owner(ctx, conversation, reason="second")

    async with pg_database.sessions() as session:
        conversation = await session.get(Conversation, first)
        assert conversation is not None
        ctx = RoutingContext(session=session, policy=DEFAULT_POLICY, source="test")
        assert await engine.release_owner(ctx, conversation, reason="first") == ada
        second = Concurrently(pg_database, release)
        await second.start()
        await session.commit()
    await second.finished()

    loads, held = await loads_and_open_units(pg_database, workspace_id)
    assert loads == held
    assert loads[ada] == 1.0
    async with pg_database.sessions() as session:
        reasons = list(
            await session.scalars(
                select(Assignment.closed_reason).where(Assignment.conversation_id == first)
            )
        )
    assert reasons == ["first"]


async def test_deactivating_an_agent_locks_their_conversations_before_the_agent_row(
    pg_database: Database, maintenance: RoutingMaintenance
) -> None:
    """The lock order of a conversation command (conversation, then the owner's agent
    row) holds for presence changes too: a resolve holding the conversation can still
    release the owner's capacity while the deactivation waits (no deadlock)."""
    workspace_id = await new_workspace(pg_database)
    ada = await agent_id(pg_database, workspace_id, ADA)
    conversation_id = await add_queued_conversation(
        pg_database, workspace_id, waiting_since=timedelta(minutes=1)
    )
    await maintenance.drain_workspace_queue(workspace_id)  # to Ada

    async def deactivate(session: Any) -> None:
        await agent_admin.deactivate_agent(session, workspace_id, ada, by=None)

    async with pg_database.sessions() as resolver:
        resolver_pid = int(await resolver.scalar(text("SELECT pg_backend_pid()")))
        held = await resolver.scalar(
            select(Conversation).where(Conversation.id == conversation_id).with_for_update()
        )
        assert held is not None
        deactivating = Concurrently(pg_database, deactivate)
        await deactivating.start()
        assert deactivating.task is not None
        assert not deactivating.task.done()  # waiting for a row the resolver holds
        ctx = RoutingContext(session=resolver, policy=DEFAULT_POLICY, source="test")
        resolving = asyncio.create_task(
            engine.resolve(ctx, held, outcome_code=None, by_agent_id=None)
        )

        async def resolved_or_blocked() -> bool:
            if resolving.done():
                return True
            async with pg_database.sessions() as probe:
                blockers = await probe.scalar(
                    text("SELECT cardinality(pg_blocking_pids(:pid))"), {"pid": resolver_pid}
                )
            return bool(blockers)

        await until(resolved_or_blocked)
        blocked = not resolving.done()
        with contextlib.suppress(Exception):
            await resolving  # a deadlock ends one of the two when blocked
        assert not blocked, "the resolve waited for the agent row the deactivation held"
        await resolver.commit()
    await deactivating.finished()

    loads, held_units = await loads_and_open_units(pg_database, workspace_id)
    assert loads == held_units
    assert (await assert_consistent(pg_database, conversation_id)).status == "resolved"


async def test_a_customer_message_during_the_snooze_timer_sees_the_conversation_woken(
    pg_database: Database, maintenance: RoutingMaintenance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snooze ends while the customer writes: the timer wakes it (its owner went
    offline, so Ben takes it); the message, which read it snoozed, must not wake it a
    second time (closing Ben's new assignment and queueing it without him)."""
    workspace_id = await new_workspace(pg_database)
    ada = await agent_id(pg_database, workspace_id, ADA)
    ben = await agent_id(pg_database, workspace_id, BEN)
    chat = f"wcs_{uuid.uuid4().hex}"
    async with pg_database.sessions() as session:
        first = await route_inbound(session, inbound(workspace_id, chat, "m1"), PolicyCache(0))
        await session.commit()
    conversation_id = first.conversation_id
    assert conversation_id is not None
    assert first.assigned_agent_id == ada
    async with pg_database.sessions() as session:
        await session.execute(
            update(Conversation)
            .where(Conversation.id == conversation_id)
            .values(status="snoozed", snoozed_until=utcnow() - timedelta(seconds=1))
        )
        session.add(
            Timer(
                workspace_id=workspace_id,
                kind=TimerKind.SNOOZE_END.value,
                conversation_id=conversation_id,
                due_at=utcnow() - timedelta(seconds=1),
            )
        )
        await session.commit()
    await set_agent(pg_database, ada, status="offline")
    await set_agent(pg_database, ben, status="online")

    async def customer_writes(session: Any) -> None:
        await route_inbound(
            session, inbound(workspace_id, chat, "m2", "still there?"), PolicyCache(0)
        )

    writing = Concurrently(pg_database, customer_writes)
    wake = snoozed_module.wake_at_snooze_end

    async def wake_with_a_message_in_between(ctx: RoutingContext, conversation: Any) -> Any:
        await writing.start()
        return await wake(ctx, conversation)

    monkeypatch.setattr(maintenance_module, "wake_at_snooze_end", wake_with_a_message_in_between)

    assert await maintenance.fire_one_timer()
    await writing.finished()

    loads, held = await loads_and_open_units(pg_database, workspace_id)
    assert loads == held
    woken = await assert_consistent(pg_database, conversation_id)
    assert (woken.status, woken.assignee_agent_id) == ("assigned", ben)
    async with pg_database.sessions() as session:
        status_changes = await session.scalar(
            select(func.count())
            .select_from(OutboxEvent)
            .where(
                OutboxEvent.workspace_id == workspace_id,
                OutboxEvent.event_type == "omniroute.conversation.status_changed.v1",
            )
        )
    assert status_changes == 1
