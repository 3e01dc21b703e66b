"""The router's timed work: due timers (SLA, owner absence) and the queue.

Runs in every router replica; rows are claimed with SKIP LOCKED so replicas share the
work without doing any of it twice.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import func, select

from services.router.delivery import DEFAULT_RECEIPT_RETENTION, settle_pending_receipts
from services.router.snoozed import wake_at_snooze_end
from shared.bus.port import Bus
from shared.db.models import Agent, Conversation, ConversationStatus, TimerKind, utcnow
from shared.db.session import Database
from shared.metrics import QUEUE_DEPTH, QUEUE_OLDEST_WAIT
from shared.outbox import commit_and_publish, discard_pending
from shared.routing.engine import (
    PolicyCache,
    RoutingContext,
    drain_queue,
    reassign_absent_owner,
    sla_breached,
    workspaces_with_waiting,
)
from shared.timers import claim_due_timer

log = structlog.get_logger(__name__)

EVENT_SOURCE = "omniroute/router"
MAX_TIMERS_PER_TICK = 200


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

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
            except Exception as exc:  # DB or broker trouble: try again next tick
                log.warning("routing maintenance failed", error=str(exc))
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=self._interval)
            except TimeoutError:
                pass

    async def tick(self) -> None:
        for _ in range(MAX_TIMERS_PER_TICK):
            if not await self.fire_one_timer():
                break
        await self.drain_queues()
        await self.measure_queues()
        await self.settle_receipts()

    async def settle_receipts(self) -> None:
        """Early delivery receipts whose message is known by now; expired ones dropped."""
        async with self._database.sessions() as session:
            try:
                applied, expired = await settle_pending_receipts(
                    session, retention=self._receipt_retention
                )
                await commit_and_publish(session, self._bus, self._database.sessions)
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
        """Claim and handle one due timer in one transaction; False when none is due."""
        async with self._database.sessions() as session:
            try:
                timer = await claim_due_timer(session)
                if timer is None:
                    return False
                ctx = RoutingContext(
                    session=session,
                    policy=await self._policies.get(session, timer.workspace_id),
                    source=EVENT_SOURCE,
                )
                if timer.kind == TimerKind.SLA_FIRST_RESPONSE.value and timer.conversation_id:
                    conversation = await session.get(Conversation, timer.conversation_id)
                    if conversation is not None:
                        await sla_breached(ctx, conversation)
                elif timer.kind == TimerKind.SNOOZE_END.value and timer.conversation_id:
                    snoozed = await session.get(Conversation, timer.conversation_id)
                    if snoozed is not None:
                        await wake_at_snooze_end(ctx, snoozed)
                elif timer.kind == TimerKind.OWNER_OFFLINE_GRACE.value and timer.agent_id:
                    agent = await session.get(Agent, timer.agent_id)
                    if agent is not None:
                        moved = await reassign_absent_owner(ctx, agent)
                        log.info("absent owner's conversations moved", count=len(moved))
                await commit_and_publish(session, self._bus, self._database.sessions)
            except BaseException:
                discard_pending(session)
                raise
        return True

    async def drain_queues(self) -> None:
        async with self._database.sessions() as session:
            workspaces = await workspaces_with_waiting(session)
        for workspace_id in workspaces:
            async with self._database.sessions() as session:
                try:
                    ctx = RoutingContext(
                        session=session,
                        policy=await self._policies.get(session, workspace_id),
                        source=EVENT_SOURCE,
                    )
                    await drain_queue(ctx, workspace_id)
                    await commit_and_publish(session, self._bus, self._database.sessions)
                except BaseException:
                    discard_pending(session)
                    raise


def _aware(moment: datetime) -> datetime:
    """SQLite returns naive UTC datetimes; PostgreSQL aware ones."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
