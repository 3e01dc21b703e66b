"""Transactional outbox: events are rows written in the business transaction.

``record_event`` adds the row (its id becomes the event's ``sequence``);
``commit_and_publish`` commits the transaction and publishes its rows right away;
``OutboxSweeper`` publishes rows a crash left behind (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL so several sweepers never publish the same row at once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.bus.port import Bus
from shared.db.models import OutboxEvent, utcnow
from shared.events import PAYLOAD_TYPES, Event, EventPayload, Topic, encode_event
from shared.metrics import EVENTS_PUBLISHED, OUTBOX_UNPUBLISHED_SWEPT

log = structlog.get_logger(__name__)

_PENDING = "omniroute.outbox.pending"


def record_event(
    session: AsyncSession,
    payload: EventPayload,
    *,
    topic: Topic,
    key: str,
    source: str,
    subject: str | None = None,
) -> OutboxEvent:
    """Add an outbox row for ``payload`` to the session's transaction."""
    event = Event.of(payload, source=source, subject=subject)
    row = OutboxEvent(
        event_id=event.id,
        workspace_id=payload.workspace_id,
        topic=topic.value,
        record_key=key,
        event_type=event.type,
        envelope=event.model_dump(mode="json", exclude={"sequence"}),
        created_at=utcnow(),
    )
    session.add(row)
    pending: list[OutboxEvent] = session.info.setdefault(_PENDING, [])
    pending.append(row)
    return row


def event_of(row: OutboxEvent) -> Event:
    """The stored event with its outbox id as the ``sequence``."""
    envelope: dict[str, Any] = dict(row.envelope)
    payload = PAYLOAD_TYPES[row.event_type].model_validate(envelope.pop("data"))
    return Event.model_validate({**envelope, "data": payload}).with_sequence(row.id)


async def publish_rows(bus: Bus, rows: Sequence[OutboxEvent]) -> None:
    records = [encode_event(event_of(row), topic=row.topic, key=row.record_key) for row in rows]
    await bus.publish_many(records)
    for row in rows:
        EVENTS_PUBLISHED.labels(topic=row.topic).inc()


async def commit_and_publish(
    session: AsyncSession, bus: Bus, sessions: async_sessionmaker[AsyncSession]
) -> list[OutboxEvent]:
    """Commit the business transaction, then publish its outbox rows and mark them.

    If publishing fails the rows stay unpublished and the sweeper sends them later;
    the commit itself is never undone by a broker problem.
    """
    pending: list[OutboxEvent] = session.info.pop(_PENDING, [])
    await session.commit()
    if not pending:
        return []
    try:
        await publish_rows(bus, pending)
    except Exception as exc:  # broker trouble: the sweeper takes over
        log.warning("publishing after commit failed; sweeper will retry", error=str(exc))
        return pending
    async with sessions() as marking:
        await marking.execute(
            update(OutboxEvent)
            .where(OutboxEvent.id.in_([row.id for row in pending]))
            .values(published_at=utcnow())
        )
        await marking.commit()
    return pending


def discard_pending(session: AsyncSession) -> None:
    """Forget outbox rows of a rolled-back transaction."""
    session.info.pop(_PENDING, None)


class OutboxSweeper:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        bus: Bus,
        *,
        interval_seconds: float = 1.0,
        min_age_seconds: float = 2.0,
        batch_size: int = 500,
    ) -> None:
        self._sessions = sessions
        self._bus = bus
        self._interval = interval_seconds
        self._min_age = timedelta(seconds=min_age_seconds)
        self._batch_size = batch_size
        self._stopping = asyncio.Event()

    def request_stop(self) -> None:
        self._stopping.set()

    async def sweep_once(self) -> int:
        async with self._sessions() as session:
            rows = list(
                await session.scalars(
                    select(OutboxEvent)
                    .where(
                        OutboxEvent.published_at.is_(None),
                        OutboxEvent.created_at < utcnow() - self._min_age,
                    )
                    .order_by(OutboxEvent.id)
                    .limit(self._batch_size)
                    .with_for_update(skip_locked=True)
                )
            )
            if not rows:
                return 0
            await publish_rows(self._bus, rows)
            now = utcnow()
            for row in rows:
                row.published_at = now
            await session.commit()
        OUTBOX_UNPUBLISHED_SWEPT.inc(len(rows))
        log.info("outbox rows swept", count=len(rows))
        return len(rows)

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.sweep_once()
            except Exception as exc:  # keep sweeping through DB or broker outages
                log.warning("outbox sweep failed", error=str(exc))
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=self._interval)
            except TimeoutError:
                pass
