"""One bad timer, workspace or step does not stop the router's maintenance for everyone.

Rows are written directly (the states a bug elsewhere could leave behind); time moves by
writing due times, never by sleeping.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import structlog
from prometheus_client import REGISTRY
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from devmode.seed import DEMO_AGENTS, seed_demo
from services.router import maintenance as maintenance_module
from services.router.maintenance import RoutingMaintenance
from shared.bus.memory import MemoryBus
from shared.db.models import (
    Agent,
    Assignment,
    Conversation,
    Timer,
    TimerKind,
    utcnow,
)
from shared.db.session import Database
from shared.routing.engine import (
    PolicyCache,
    RoutingContext,
    RowBusyError,
    drain_queue,
    sla_breached,
)
from shared.timers import TIMER_RETRY_FIRST_DELAY, TIMER_RETRY_MAX_DELAY, timer_retry_delay
from tests.conftest import add_conversation
from tests.unit.test_transient_errors import wrapped

ADA = DEMO_AGENTS[0].email  # online, tier 1, capacity 3
STEPS = ("fire_due_timers", "drain_queues", "measure_queues", "settle_receipts")


def aware(moment: datetime) -> datetime:
    """SQLite gives naive UTC datetimes back."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def failures_counted(work: str) -> float:
    value = REGISTRY.get_sample_value("omni_routing_maintenance_failures_total", {"work": work})
    return value or 0.0


@pytest.fixture
def maintenance(database: Database, memory_bus: MemoryBus) -> RoutingMaintenance:
    return RoutingMaintenance(database, memory_bus, PolicyCache(0), interval_seconds=1)


async def new_workspace(database: Database) -> uuid.UUID:
    return await seed_demo(database, slug=f"maint-{uuid.uuid4().hex[:8]}")


async def agent_id(database: Database, workspace_id: uuid.UUID, email: str) -> uuid.UUID:
    async with database.sessions() as session:
        found = await session.scalar(
            select(Agent.id).where(Agent.workspace_id == workspace_id, Agent.email == email)
        )
    assert found is not None
    return found


async def add_queued_conversation(
    database: Database, workspace_id: uuid.UUID, *, waiting_since: timedelta
) -> uuid.UUID:
    async with database.sessions() as session:
        conversation = await add_conversation(
            session, workspace_id, status="queued", queued_at=utcnow() - waiting_since
        )
        await session.commit()
    return conversation.id


async def add_sla_timer(
    database: Database, workspace_id: uuid.UUID, conversation_id: uuid.UUID, *, overdue: timedelta
) -> uuid.UUID:
    async with database.sessions() as session:
        timer = Timer(
            id=uuid.uuid4(),
            workspace_id=workspace_id,
            kind=TimerKind.SLA_FIRST_RESPONSE.value,
            conversation_id=conversation_id,
            due_at=utcnow() - overdue,
        )
        session.add(timer)
        await session.commit()
    return timer.id


async def timer_row(database: Database, timer_id: uuid.UUID) -> Timer:
    async with database.sessions() as session:
        timer = await session.get(Timer, timer_id)
    assert timer is not None
    return timer


async def conversation_row(database: Database, conversation_id: uuid.UUID) -> Conversation:
    async with database.sessions() as session:
        conversation = await session.get(Conversation, conversation_id)
    assert conversation is not None
    return conversation


def sla_handler_failing_for(
    conversation_id: uuid.UUID, error: Exception
) -> Callable[[RoutingContext, Conversation], Awaitable[Any]]:
    """The SLA handler, except that it raises ``error`` for one conversation."""
    handle = sla_breached

    async def handler(ctx: RoutingContext, conversation: Conversation) -> Any:
        if conversation.id == conversation_id:
            raise error
        return await handle(ctx, conversation)

    return handler


async def a_failing_timer_is_put_back_and_the_timers_behind_it_fire(
    database: Database,
    maintenance: RoutingMaintenance,
    workspace_id: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On any database (the PostgreSQL suite runs it too)."""
    poisoned = await add_queued_conversation(database, workspace_id, waiting_since=timedelta(0))
    healthy = await add_queued_conversation(database, workspace_id, waiting_since=timedelta(0))
    # The failing timer is the oldest due: the one claimed first.
    poison_timer = await add_sla_timer(database, workspace_id, poisoned, overdue=timedelta(days=9))
    healthy_timer = await add_sla_timer(database, workspace_id, healthy, overdue=timedelta(0))
    monkeypatch.setattr(
        maintenance_module,
        "sla_breached",
        sla_handler_failing_for(poisoned, RuntimeError("a state the handler rejects")),
    )
    started = utcnow()

    with structlog.testing.capture_logs() as logs:
        await maintenance.tick()

    fired = await timer_row(database, healthy_timer)
    assert fired.fired_at is not None
    assert (await conversation_row(database, healthy)).tier == 2  # escalated by its SLA timer
    put_back = await timer_row(database, poison_timer)
    assert put_back.fired_at is None
    assert put_back.cancelled_at is None
    assert aware(put_back.due_at) >= started + TIMER_RETRY_FIRST_DELAY
    assert (await conversation_row(database, poisoned)).tier == 1
    [logged] = [entry for entry in logs if entry.get("timer_id") == str(poison_timer)]
    assert logged["event"] == "timer failed; put back"
    assert logged["log_level"] == "error"
    assert logged["kind"] == TimerKind.SLA_FIRST_RESPONSE.value
    assert logged["workspace_id"] == str(workspace_id)
    assert logged["conversation_id"] == str(poisoned)
    assert logged["error_type"] == "RuntimeError"


async def test_a_failing_timer_is_put_back_and_the_timers_behind_it_fire(
    database: Database,
    maintenance: RoutingMaintenance,
    workspace_id: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failures_before = failures_counted("timer")

    await a_failing_timer_is_put_back_and_the_timers_behind_it_fire(
        database, maintenance, workspace_id, monkeypatch
    )

    assert failures_counted("timer") == failures_before + 1


async def test_a_timer_that_keeps_failing_waits_longer_each_time(
    database: Database,
    maintenance: RoutingMaintenance,
    workspace_id: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    poisoned = await add_queued_conversation(database, workspace_id, waiting_since=timedelta(0))
    poison_timer = await add_sla_timer(database, workspace_id, poisoned, overdue=timedelta(0))
    monkeypatch.setattr(
        maintenance_module, "sla_breached", sla_handler_failing_for(poisoned, RuntimeError("no"))
    )
    await maintenance.tick()
    # Its retry time comes: it fails a second time.
    async with database.sessions() as session:
        await session.execute(update(Timer).where(Timer.id == poison_timer).values(due_at=utcnow()))
        await session.commit()
    started = utcnow()

    await maintenance.tick()

    put_back = await timer_row(database, poison_timer)
    assert put_back.fired_at is None
    assert aware(put_back.due_at) >= started + timer_retry_delay(2)


@pytest.mark.parametrize(
    "meeting",
    [
        pytest.param(lambda c: RowBusyError(f"conversation {c} is locked"), id="row held"),
        pytest.param(
            lambda _: wrapped(asyncpg.exceptions.DeadlockDetectedError("deadlock detected")),
            id="deadlock",
        ),
    ],
)
async def test_a_timer_whose_conversation_another_transaction_holds_is_tried_again_shortly(
    database: Database,
    maintenance: RoutingMaintenance,
    workspace_id: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
    meeting: Callable[[uuid.UUID], Exception],
) -> None:
    """Not a failure: the handler does not wait for the row (see the lock order), or
    its transaction lost to a concurrent one, and the timer comes back after
    TIMER_BUSY_DELAY, sooner than a failed one."""
    conversation = await add_queued_conversation(database, workspace_id, waiting_since=timedelta(0))
    timer_id = await add_sla_timer(database, workspace_id, conversation, overdue=timedelta(0))

    async def held_elsewhere(*_: object, **__: object) -> Conversation | None:
        raise meeting(conversation)

    monkeypatch.setattr(maintenance_module, "lock_conversation", held_elsewhere)
    failures_before = failures_counted("timer")
    started = utcnow()

    with structlog.testing.capture_logs() as logs:
        assert await maintenance.fire_one_timer()

    timer = await timer_row(database, timer_id)
    assert timer.fired_at is None
    assert timer.cancelled_at is None
    assert started + maintenance_module.TIMER_BUSY_DELAY <= aware(timer.due_at)
    assert aware(timer.due_at) < started + TIMER_RETRY_FIRST_DELAY
    assert failures_counted("timer") == failures_before
    assert (await conversation_row(database, conversation)).tier == 1
    [logged] = [entry for entry in logs if entry.get("timer_id") == str(timer_id)]
    assert logged["log_level"] == "info"
    assert "tried again shortly" in logged["event"]


def test_the_retry_delay_doubles_up_to_a_cap_and_never_gives_up() -> None:
    assert timer_retry_delay(1) == TIMER_RETRY_FIRST_DELAY
    assert timer_retry_delay(2) == 2 * TIMER_RETRY_FIRST_DELAY
    assert timer_retry_delay(3) == 4 * TIMER_RETRY_FIRST_DELAY
    assert timer_retry_delay(10) == TIMER_RETRY_MAX_DELAY
    assert timer_retry_delay(10**6) == TIMER_RETRY_MAX_DELAY


async def test_database_trouble_ends_the_tick_and_leaves_the_timer_due(
    database: Database,
    maintenance: RoutingMaintenance,
    workspace_id: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conversation = await add_queued_conversation(database, workspace_id, waiting_since=timedelta(0))
    timer_id = await add_sla_timer(database, workspace_id, conversation, overdue=timedelta(0))
    due_before = (await timer_row(database, timer_id)).due_at
    outage = OperationalError("SELECT …", {}, ConnectionRefusedError("connection refused"))
    monkeypatch.setattr(
        maintenance_module, "sla_breached", sla_handler_failing_for(conversation, outage)
    )

    with pytest.raises(OperationalError):
        await maintenance.tick()

    timer = await timer_row(database, timer_id)
    assert timer.fired_at is None
    assert timer.due_at == due_before  # not the timer's fault: tried again next tick


async def test_a_workspace_whose_drain_fails_does_not_keep_the_others_waiting(
    database: Database, maintenance: RoutingMaintenance, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing_workspace = await new_workspace(database)
    other_workspace = await new_workspace(database)
    # The failing workspace's queue is the older: drained first.
    await add_queued_conversation(database, failing_workspace, waiting_since=timedelta(hours=1))
    waiting = await add_queued_conversation(
        database, other_workspace, waiting_since=timedelta(minutes=1)
    )
    drain = drain_queue

    async def drain_failing_for_one_workspace(ctx: RoutingContext, workspace: uuid.UUID) -> Any:
        if workspace == failing_workspace:
            raise RuntimeError("a conversation the drain cannot handle")
        return await drain(ctx, workspace)

    monkeypatch.setattr(maintenance_module, "drain_queue", drain_failing_for_one_workspace)
    failures_before = failures_counted("queue_drain")

    with structlog.testing.capture_logs() as logs:
        await maintenance.tick()

    assigned = await conversation_row(database, waiting)
    assert assigned.status == "assigned"
    assert assigned.assignee_agent_id == await agent_id(database, other_workspace, ADA)
    assert failures_counted("queue_drain") == failures_before + 1
    [logged] = [entry for entry in logs if entry["event"].startswith("queue drain failed")]
    assert logged["workspace_id"] == str(failing_workspace)


@pytest.mark.parametrize("failing", STEPS)
async def test_a_failing_step_does_not_stop_the_steps_after_it(
    maintenance: RoutingMaintenance, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    ran: list[str] = []

    def recorded(step: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            ran.append(step)
            if step == failing:
                raise RuntimeError(f"{step} broke")

        return run

    for step in STEPS:
        monkeypatch.setattr(maintenance, step, recorded(step))

    with structlog.testing.capture_logs() as logs:
        await maintenance.tick()

    assert ran == list(STEPS)
    [logged] = [entry for entry in logs if entry["event"].startswith("routing maintenance step")]
    assert logged["log_level"] == "error"
    assert logged["error"] == f"{failing} broke"


async def test_a_failing_timer_step_still_lets_the_queue_drain(
    database: Database,
    maintenance: RoutingMaintenance,
    workspace_id: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waiting = await add_queued_conversation(database, workspace_id, waiting_since=timedelta(0))

    async def claim_failing(*_: object, **__: object) -> Timer | None:
        raise RuntimeError("a bug in claiming")

    monkeypatch.setattr(maintenance_module, "claim_due_timer", claim_failing)

    await maintenance.tick()

    assert (await conversation_row(database, waiting)).status == "assigned"


async def test_database_trouble_in_a_step_ends_the_tick(
    maintenance: RoutingMaintenance, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []

    async def outage() -> None:
        raise OperationalError("SELECT …", {}, ConnectionRefusedError("connection refused"))

    async def drain() -> None:
        ran.append("drain_queues")

    monkeypatch.setattr(maintenance, "fire_due_timers", outage)
    monkeypatch.setattr(maintenance, "drain_queues", drain)

    with pytest.raises(OperationalError):
        await maintenance.tick()
    assert ran == []


async def a_queued_conversation_that_still_has_an_open_assignment_is_skipped(
    database: Database, maintenance: RoutingMaintenance, workspace_id: uuid.UUID
) -> None:
    """No routing path leaves this state (each closes the open assignment before it
    queues a conversation); rows written by hand can. It must not hold up the queue.
    On any database (the PostgreSQL suite runs it too)."""
    ada = await agent_id(database, workspace_id, ADA)
    inconsistent = await add_queued_conversation(
        database, workspace_id, waiting_since=timedelta(days=9)
    )
    behind_it = await add_queued_conversation(
        database, workspace_id, waiting_since=timedelta(minutes=1)
    )
    async with database.sessions() as session:
        session.add(
            Assignment(
                workspace_id=workspace_id,
                conversation_id=inconsistent,
                agent_id=ada,
                reason="test",
                explanation={},
                load_units=1.0,
            )
        )
        # Room for one more conversation only: the inconsistent one, first in line,
        # must not take the place of the one behind it.
        await session.execute(update(Agent).where(Agent.id == ada).values(load_units=2.0))
        await session.commit()

    with structlog.testing.capture_logs() as logs:
        await maintenance.tick()

    assigned = await conversation_row(database, behind_it)
    assert assigned.status == "assigned"
    assert assigned.assignee_agent_id == ada
    assert (await conversation_row(database, inconsistent)).status == "queued"
    async with database.sessions() as session:
        open_assignments = list(
            await session.scalars(
                select(Assignment.conversation_id).where(
                    Assignment.workspace_id == workspace_id, Assignment.closed_at.is_(None)
                )
            )
        )
    assert sorted(open_assignments) == sorted([inconsistent, behind_it])
    ours = [entry for entry in logs if entry.get("workspace_id") == str(workspace_id)]
    [logged] = [entry for entry in ours if "open assignment" in entry["event"]]
    assert logged["log_level"] == "error"
    assert logged["conversation_ids"] == [str(inconsistent)]
    assert not [entry for entry in ours if entry["event"].startswith("queue drain failed")]


async def test_a_queued_conversation_that_still_has_an_open_assignment_is_skipped(
    database: Database, maintenance: RoutingMaintenance, workspace_id: uuid.UUID
) -> None:
    await a_queued_conversation_that_still_has_an_open_assignment_is_skipped(
        database, maintenance, workspace_id
    )
