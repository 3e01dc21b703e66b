"""Durable timers: rows with a due time, claimed with FOR UPDATE SKIP LOCKED.

A timer is claimed and handled in one transaction: if the process dies before the
commit, the claim is undone and another router fires it. A timer whose handling fails
is postponed (:func:`postpone_timer`, :func:`timer_retry_delay`) so it does not stay the
oldest due timer, claimed first and failing again, ahead of every other.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import Timer, TimerKind, utcnow

TIMER_RETRY_FIRST_DELAY = timedelta(seconds=10)
TIMER_RETRY_MAX_DELAY = timedelta(minutes=5)


async def schedule_timer(
    session: AsyncSession,
    kind: TimerKind,
    *,
    workspace_id: uuid.UUID,
    due_at: datetime,
    conversation_id: uuid.UUID | None = None,
    agent_id: uuid.UUID | None = None,
    replace: bool = True,
) -> Timer:
    """Replace any pending timer of the same kind and subject with one due at ``due_at``
    (``replace=False``: the subject is new in this transaction and has none)."""
    if replace:
        await cancel_timers(session, kind, conversation_id=conversation_id, agent_id=agent_id)
    timer = Timer(
        id=uuid.uuid4(),
        workspace_id=workspace_id,
        kind=kind.value,
        conversation_id=conversation_id,
        agent_id=agent_id,
        due_at=due_at,
    )
    session.add(timer)
    return timer


async def cancel_timers(
    session: AsyncSession,
    kind: TimerKind,
    *,
    conversation_id: uuid.UUID | None = None,
    agent_id: uuid.UUID | None = None,
) -> None:
    query = update(Timer).where(
        Timer.kind == kind.value, Timer.fired_at.is_(None), Timer.cancelled_at.is_(None)
    )
    if conversation_id is not None:
        query = query.where(Timer.conversation_id == conversation_id)
    if agent_id is not None:
        query = query.where(Timer.agent_id == agent_id)
    await session.execute(query.values(cancelled_at=utcnow()))


async def claim_due_timer(session: AsyncSession, *, now: datetime | None = None) -> Timer | None:
    """Lock and mark fired the oldest due timer no one else holds; None when none is due."""
    timer = await session.scalar(
        select(Timer)
        .where(
            Timer.fired_at.is_(None),
            Timer.cancelled_at.is_(None),
            Timer.due_at <= (now or utcnow()),
        )
        .order_by(Timer.due_at)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    if timer is not None:
        timer.fired_at = utcnow()
    return timer


def timer_retry_delay(failures: int) -> timedelta:
    """How long a timer whose handling failed ``failures`` times in a row waits before
    its next try: 10 s, doubling with each failure, at most 5 minutes. Never given up:
    the timer may be an SLA breach, and the failure may be gone by the next try."""
    doublings = min(max(failures, 1) - 1, 16)  # 2**16 * 10 s is far past the cap
    return min(TIMER_RETRY_MAX_DELAY, TIMER_RETRY_FIRST_DELAY * (1 << doublings))


async def postpone_timer(session: AsyncSession, timer_id: uuid.UUID, *, due_at: datetime) -> bool:
    """Make a pending timer due at ``due_at`` instead; False when it is no longer pending
    (another router fired it or it was cancelled meanwhile)."""
    result = await session.execute(
        update(Timer)
        .where(Timer.id == timer_id, Timer.fired_at.is_(None), Timer.cancelled_at.is_(None))
        .values(due_at=due_at)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)
