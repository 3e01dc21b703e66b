"""The router's timed work: due timers (SLA, snooze end, owner absence) and the queue.

Runs in every router replica; rows are claimed with SKIP LOCKED so replicas share the
work without doing any of it twice.

One bad item must not stop the work for everyone: a timer whose handling fails is put
back with a growing delay (so the other due timers fire), one workspace's failing queue
drain does not keep the others from draining, and a failing step does not keep the next
ones from running. Database or broker trouble is different: nothing can get done, so it
ends the tick, and the next tick tries everything again (the failed timer's claim was
rolled back with its transaction, so it is still due).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.router.delivery import DEFAULT_RECEIPT_RETENTION, settle_pending_receipts
from services.router.snoozed import wake_at_snooze_end
from shared.bus.port import Bus
from shared.db.models import Agent, Conversation, ConversationStatus, Timer, TimerKind, utcnow
from shared.db.session import Database
from shared.metrics import QUEUE_DEPTH, QUEUE_OLDEST_WAIT, ROUTING_MAINTENANCE_FAILURES
from shared.outbox import commit_and_publish, discard_pending
from shared.routing.engine import (
    PolicyCache,
    RoutingContext,
    RowBusyError,
    drain_queue,
    lock_conversation,
    reassign_absent_owner,
    sla_breached,
    workspaces_with_waiting,
)
from shared.timers import claim_due_timer, postpone_timer, timer_retry_delay
from shared.transient import is_conflict_error, is_transient_error

log = structlog.get_logger(__name__)

EVENT_SOURCE = "omniroute/router"
MAX_TIMERS_PER_TICK = 200
# A timer whose conversation (or absent owner) another transaction holds is tried
# again after this long: that transaction is usually done in milliseconds.
TIMER_BUSY_DELAY = timedelta(seconds=1)
# Failure counts of timers this replica saw fail (their retry delay grows with it); a
# bound so a flood of failing timers cannot grow it without end.
MAX_REMEMBERED_TIMER_FAILURES = 10_000


@dataclass(frozen=True)
class ClaimedTimer:
    """What the log and the put-back need of a claimed timer, read before handling it
    (after a rollback the row's attributes are expired)."""

    id: uuid.UUID
    kind: str
    workspace_id: uuid.UUID
    conversation_id: uuid.UUID | None
    agent_id: uuid.UUID | None

    @classmethod
    def of(cls, timer: Timer) -> ClaimedTimer:
        return cls(timer.id, timer.kind, timer.workspace_id, timer.conversation_id, timer.agent_id)


class RoutingMaintenance:
    def __init__(
        self,
        database: Database,
        bus: Bus,
        policies: PolicyCache,
        *,
        interval_seconds: float,
        receipt_retention: timedelta = DEFAULT_RECEIPT_RETENTION,
    ) -> None:
        self._database = database
        self._bus = bus
        self._policies = policies
        self._interval = interval_seconds
        self._receipt_retention = receipt_retention
        self._stopping = asyncio.Event()
        self._timer_failures: dict[uuid.UUID, int] = {}

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
            except Exception as exc:  # DB or broker trouble: try again next tick
                ROUTING_MAINTENANCE_FAILURES.labels(work="tick").inc()
                log.warning("routing maintenance failed", error=str(exc))
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=self._interval)
            except TimeoutError:
                pass

    async def tick(self) -> None:
        """Due timers, queue drains, queue gauges, early receipts: each step runs even if
        an earlier one failed for its own reasons (logged, counted). Database or broker
        trouble ends the tick (raised)."""
        await self._step("timer", self.fire_due_timers)
        await self._step("queue_drain", self.drain_queues)
        await self._step("queue_measure", self.measure_queues)
        await self._step("receipt_settle", self.settle_receipts)

    async def _step(self, work: str, run: Callable[[], Awaitable[object]]) -> None:
        try:
            await run()
        except Exception as exc:
            if is_transient_error(exc):
                raise
            ROUTING_MAINTENANCE_FAILURES.labels(work=work).inc()
            log.error(
                "routing maintenance step failed; the next steps go on",
                work=work,
                error_type=type(exc).__name__,
                error=str(exc),
            )

    async def fire_due_timers(self) -> int:
        """Fire (or put back, see :meth:`fire_one_timer`) due timers, at most
        MAX_TIMERS_PER_TICK; how many were claimed."""
        claimed = 0
        while claimed < MAX_TIMERS_PER_TICK and await self.fire_one_timer():
            claimed += 1
        return claimed

    async def settle_receipts(self) -> None:
        """Early delivery receipts whose message is known by now; expired ones dropped."""
        async with self._database.sessions() as session:
            try:
                applied, expired = await settle_pending_receipts(
                    session, retention=self._receipt_retention
                )
                await commit_and_publish(
                    session, self._bus, self._database.sessions, publish_wait_seconds=None
                )
            except BaseException:
                discard_pending(session)
                raise
        if applied or expired:
            log.info("pending delivery receipts settled", applied=applied, expired=expired)

    async def measure_queues(self) -> None:
        async with self._database.sessions() as session:
            rows = await session.execute(
                select(Conversation.tier, func.count(), func.min(Conversation.queued_at))
                .where(Conversation.status == ConversationStatus.QUEUED.value)
                .group_by(Conversation.tier)
            )
            stats = {tier: (count, oldest) for tier, count, oldest in rows}
        now = utcnow()
        for tier in (1, 2, 3):
            count, oldest = stats.get(tier, (0, None))
            QUEUE_DEPTH.labels(tier=str(tier)).set(count)
            QUEUE_OLDEST_WAIT.labels(tier=str(tier)).set(
                (now - _aware(oldest)).total_seconds() if oldest else 0
            )

    async def fire_one_timer(self) -> bool:
        """Claim and handle one due timer in one transaction; False when none is due.

        If handling it fails for reasons of its own (not database or broker trouble,
        which is raised), the transaction is rolled back and, in a transaction of its
        own, the timer is made due again after :func:`timer_retry_delay` of its failures
        in a row: 10 s, doubling, at most 5 minutes, retried without end (it may be an
        SLA breach, and the failure may be gone by the next try: a conflict with a
        concurrent transaction, a state another change is about to fix). So it is no
        longer the oldest due timer, claimed first and failing again ahead of every
        other. The count of failures in a row lives in this replica's memory: a restart
        or another replica starts again at 10 s, which only means an earlier retry.

        A handler does not wait for the rows it changes while it holds the timer (see the
        lock order in ``shared.routing.engine``): when another transaction holds them, it
        raises :class:`RowBusyError`, the transaction is rolled back (nothing changed)
        and the timer is made due again after ``TIMER_BUSY_DELAY``, not counted as a
        failure; the next try sees what that transaction left (a conversation resolved
        meanwhile stays resolved, a timer it cancelled does not fire).
        """
        claimed: ClaimedTimer | None = None
        async with self._database.sessions() as session:
            try:
                timer = await claim_due_timer(session)
                if timer is None:
                    return False
                claimed = ClaimedTimer.of(timer)
                await self._handle_timer(session, timer)
                await commit_and_publish(
                    session, self._bus, self._database.sessions, publish_wait_seconds=None
                )
            except Exception as exc:
                discard_pending(session)
                if claimed is None or is_transient_error(exc):
                    raise
                failure = exc
            except BaseException:
                discard_pending(session)
                raise
            else:
                self._timer_failures.pop(claimed.id, None)
                return True
        if isinstance(failure, RowBusyError) or is_conflict_error(failure):
            # Busy rows, or a deadlock/serialization failure against a concurrent
            # transaction: nothing of the timer's own; tried again shortly, not counted.
            await self._try_again_shortly(claimed, failure)
        else:
            await self._put_back(claimed, failure)
        return True

    async def _try_again_shortly(self, timer: ClaimedTimer, busy: Exception) -> None:
        retry_at = utcnow() + TIMER_BUSY_DELAY
        async with self._database.sessions() as session:
            postponed = await postpone_timer(session, timer.id, due_at=retry_at)
            await session.commit()
        log.info(
            "timer's rows held by another transaction; tried again shortly",
            timer_id=str(timer.id),
            kind=timer.kind,
            retry_at=retry_at.isoformat() if postponed else None,
            reason=str(busy),
        )

    async def _put_back(self, timer: ClaimedTimer, failure: Exception) -> None:
        failures = self._timer_failures.pop(timer.id, 0) + 1
        while len(self._timer_failures) >= MAX_REMEMBERED_TIMER_FAILURES:
            del self._timer_failures[next(iter(self._timer_failures))]  # the oldest entry
        self._timer_failures[timer.id] = failures
        retry_at = utcnow() + timer_retry_delay(failures)
        async with self._database.sessions() as session:
            postponed = await postpone_timer(session, timer.id, due_at=retry_at)
            await session.commit()
        ROUTING_MAINTENANCE_FAILURES.labels(work="timer").inc()
        log.error(
            "timer failed; put back",
            timer_id=str(timer.id),
            kind=timer.kind,
            workspace_id=str(timer.workspace_id),
            conversation_id=str(timer.conversation_id) if timer.conversation_id else None,
            agent_id=str(timer.agent_id) if timer.agent_id else None,
            failures_in_a_row=failures,
            retry_at=retry_at.isoformat() if postponed else None,
            error_type=type(failure).__name__,
            error=str(failure),
        )

    async def _handle_timer(self, session: AsyncSession, timer: Timer) -> None:
        ctx = RoutingContext(
            session=session,
            policy=await self._policies.get(session, timer.workspace_id),
            source=EVENT_SOURCE,
        )
        # The subject's rows are locked (never waited for) and read afresh before the
        # handler decides: it sees what concurrent drains and commands left.
        if timer.kind == TimerKind.SLA_FIRST_RESPONSE.value and timer.conversation_id:
            conversation = await lock_conversation(session, timer.conversation_id, skip_locked=True)
            if conversation is not None:
                await sla_breached(ctx, conversation)
        elif timer.kind == TimerKind.SNOOZE_END.value and timer.conversation_id:
            snoozed = await lock_conversation(session, timer.conversation_id, skip_locked=True)
            if snoozed is not None:
                await wake_at_snooze_end(ctx, snoozed)
        elif timer.kind == TimerKind.OWNER_OFFLINE_GRACE.value and timer.agent_id:
            agent = await session.get(Agent, timer.agent_id)
            if agent is not None:
                moved = await reassign_absent_owner(ctx, agent, skip_locked=True)
                log.info("absent owner's conversations moved", count=len(moved))

    async def drain_queues(self) -> None:
        """Drain each workspace's queue in a transaction of its own: one whose drain fails
        for reasons of its own is logged and left for the next tick while the others
        drain (database or broker trouble is raised)."""
        async with self._database.sessions() as session:
            workspaces = await workspaces_with_waiting(session)
        for workspace_id in workspaces:
            try:
                await self.drain_workspace_queue(workspace_id)
            except Exception as exc:
                if is_transient_error(exc):
                    raise
                ROUTING_MAINTENANCE_FAILURES.labels(work="queue_drain").inc()
                log.error(
                    "queue drain failed; the other workspaces go on",
                    workspace_id=str(workspace_id),
                    error_type=type(exc).__name__,
                    error=str(exc),
                )

    async def drain_workspace_queue(self, workspace_id: uuid.UUID) -> None:
        async with self._database.sessions() as session:
            try:
                ctx = RoutingContext(
                    session=session,
                    policy=await self._policies.get(session, workspace_id),
                    source=EVENT_SOURCE,
                )
                await drain_queue(ctx, workspace_id)
                await commit_and_publish(
                    session, self._bus, self._database.sessions, publish_wait_seconds=None
                )
            except BaseException:
                discard_pending(session)
                raise


def _aware(moment: datetime) -> datetime:
    """SQLite returns naive UTC datetimes; PostgreSQL aware ones."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
