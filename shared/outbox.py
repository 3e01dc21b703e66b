"""Transactional outbox: events are rows written in the business transaction.

``record_event`` adds the row (its id becomes the event's ``sequence``);
``commit_and_publish`` commits the transaction and publishes its rows right away;
``OutboxSweeper`` publishes rows a crash left behind (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL so several sweepers never publish the same row at once).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, cast

import structlog
from sqlalchemy import Table, bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from shared.bus.port import Bus
from shared.db.models import OutboxEvent, utcnow
from shared.db.session import autocommit
from shared.events import PAYLOAD_TYPES, Event, EventPayload, Topic, encode_event
from shared.metrics import EVENTS_PUBLISHED, OUTBOX_UNPUBLISHED_SWEPT

log = structlog.get_logger(__name__)

_PENDING = "omniroute.outbox.pending"
# How long a committed change waits for the broker to take its rows before answering
# anyway: the rows are safe in the database and the sweeper publishes them later, so
# a Kafka outage costs an agent's reply this much, not the producer's request timeout.
PUBLISH_AFTER_COMMIT_SECONDS = 3.0


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
    _recorded_events[row] = event
    pending: list[OutboxEvent] = session.info.setdefault(_PENDING, [])
    pending.append(row)
    return row


# The event each row was recorded from, while the row object lives: publishing right
# after commit then needs no second parse of the envelope just written.
_recorded_events: weakref.WeakKeyDictionary[OutboxEvent, Event] = weakref.WeakKeyDictionary()


def _event_to_publish(row: OutboxEvent) -> Event:
    recorded = _recorded_events.get(row)
    if recorded is None:
        return event_of(row)
    return recorded.with_sequence(row.seq) if row.seq is not None else recorded


def event_of(row: OutboxEvent) -> Event:
    """The stored event with its stream position (``seq``) as the ``sequence``."""
    return stored_event(row.event_type, row.envelope, row.seq)


def stored_event(event_type: str, envelope: dict[str, Any], seq: int | None) -> Event:
    """An outbox row's event from its columns, with ``seq`` as the ``sequence``."""
    fields = dict(envelope)
    payload = PAYLOAD_TYPES[event_type].model_validate(fields.pop("data"))
    event = Event.model_validate({**fields, "data": payload})
    return event.with_sequence(seq) if seq is not None else event


_SEQUENCER_LOCK_KEY = 0x6F6D6E69  # "omni": the one advisory lock that orders the stream
_local_sequencer_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


async def assign_stream_positions(
    sessions: async_sessionmaker[AsyncSession], row_ids: Sequence[int]
) -> dict[int, int]:
    """Give committed outbox rows their stream position, in commit order.

    Positions are handed out one transaction at a time (a PostgreSQL advisory lock held
    until commit), after the rows' own transaction committed. So when position N is
    visible, every position below N is visible too: a client resuming after N misses
    nothing, however writers interleave. Rows that already have a position keep it.
    """
    if not row_ids:
        return {}
    async with sessions() as session, _sequenced(session):
        return await _assign_positions(session, row_ids)


async def _assign_positions(session: AsyncSession, row_ids: Sequence[int]) -> dict[int, int]:
    # Ids and positions only, under the lock every writer waits for: the envelopes are
    # not needed here (reading them back would also parse them).
    rows = (
        await session.execute(
            select(OutboxEvent.id, OutboxEvent.seq)
            .where(OutboxEvent.id.in_(row_ids))
            .order_by(OutboxEvent.id)
        )
    ).all()
    positions = {int(row_id): int(seq) for row_id, seq in rows if seq is not None}
    positions |= await _number_rows(session, [row_id for row_id, seq in rows if seq is None])
    await session.commit()
    return positions


# The next positions after the stream's latest, in id order, with the sequencer lock
# taken first (held until the transaction ends), in one round trip: a VOLATILE PL/pgSQL
# function (migration 0014) whose numbering statement, under READ COMMITTED, takes its
# snapshot after the lock was granted, so it sees every position handed out before.
# Rows that have a position keep it.
_TAKE_POSITIONS = text(
    "SELECT outbox_id, stream_position FROM omni_take_stream_positions(CAST(:row_ids AS bigint[]))"
)


async def _number_rows(session: AsyncSession, row_ids: Sequence[int]) -> dict[int, int]:
    """Stream positions for outbox rows that have none. On PostgreSQL this takes the
    sequencer lock itself (held until the transaction ends; taken again by a caller
    holding it already, which is allowed): lock, latest position, numbering and update
    in one round trip. Elsewhere the caller holds the in-process lock (``_sequenced``)."""
    if not row_ids:
        return {}
    ordered = sorted(row_ids)
    if session.get_bind().dialect.name == "postgresql":
        numbered = await session.execute(_TAKE_POSITIONS, {"row_ids": ordered})
        return {int(row_id): int(seq) for row_id, seq in numbered}
    latest = await _latest_position(session)
    positions = {row_id: latest + ordinal for ordinal, row_id in enumerate(ordered, start=1)}
    outbox = cast(Table, OutboxEvent.__table__)
    await session.execute(
        update(outbox).where(outbox.c.id == bindparam("row_id")).values(seq=bindparam("position")),
        [{"row_id": row_id, "position": seq} for row_id, seq in positions.items()],
    )
    return positions


async def publish_rows(bus: Bus, rows: Sequence[OutboxEvent]) -> None:
    records = [
        encode_event(
            _event_to_publish(row),
            topic=row.topic,
            key=row.record_key,
            data=row.envelope.get("data"),  # dumped once, when the row was recorded
        )
        for row in rows
    ]
    await bus.publish_many(records)
    for row in rows:
        EVENTS_PUBLISHED.labels(topic=row.topic).inc()


async def commit_and_publish(
    session: AsyncSession,
    bus: Bus,
    sessions: async_sessionmaker[AsyncSession],
    *,
    publish_wait_seconds: float | None = PUBLISH_AFTER_COMMIT_SECONDS,
) -> list[OutboxEvent]:
    """Commit the business transaction with its outbox rows' stream positions, then
    publish the rows and mark them.

    The positions are handed out inside the transaction, under the sequencer lock held
    until its commit (see ``_sequenced``): so when position N is visible, every position
    below N is visible too, and the commit is one transaction instead of two. If
    publishing fails the rows stay unpublished and the sweeper sends them later; the
    commit itself is never undone by a broker problem.

    ``publish_wait_seconds``: how long the caller waits for the broker. Past it the
    publish goes on in the background (the records keep their order in the producer)
    and the caller returns; the rows are marked once the broker has them, or left to
    the sweeper. ``None`` waits as long as the producer does: a consumer loop (the
    router) keeps the broker's back-pressure that way.
    """
    pending: list[OutboxEvent] = session.info.pop(_PENDING, [])
    if not pending:
        await session.commit()
        return []
    # Everything else first, so the lock is held only for the positions and the commit.
    await session.flush()
    async with _sequenced(session, taken_by_numbering=True):
        positions = await _number_rows(session, [row.id for row in pending if row.seq is None])
        for row in pending:
            if row.id in positions:  # written already: the object only learns its value
                set_committed_value(row, "seq", positions[row.id])
        await session.commit()
    row_ids = [row.id for row in pending]
    if publish_wait_seconds is None:
        try:
            await publish_rows(bus, pending)
        except Exception as exc:  # broker trouble: the sweeper takes over
            _log_publish_failure(exc)
            return pending
        _published_marks(sessions).add(row_ids)
        return pending
    publishing = asyncio.create_task(publish_rows(bus, pending))
    _publishing.add(publishing)
    publishing.add_done_callback(lambda task: _mark_when_published(task, sessions, row_ids))
    try:
        await asyncio.wait_for(asyncio.shield(publishing), timeout=publish_wait_seconds)
    except TimeoutError:
        log.warning(
            "broker slow to take outbox rows; publishing goes on in the background",
            rows=len(row_ids),
        )
    except Exception:  # noqa: S110 - logged by _mark_when_published; the sweeper takes over
        pass
    return pending


# Publishes that outlived their caller's wait: referenced until done.
_publishing: set[asyncio.Task[None]] = set()


def _mark_when_published(
    task: asyncio.Task[None], sessions: async_sessionmaker[AsyncSession], row_ids: list[int]
) -> None:
    _publishing.discard(task)
    if task.cancelled():
        return  # the process is stopping: the sweeper publishes them
    if (exc := task.exception()) is not None:
        _log_publish_failure(exc)
        return
    _published_marks(sessions).add(row_ids)


def _log_publish_failure(exc: BaseException) -> None:
    log.warning(
        "publishing after commit failed; sweeper will retry",
        error=str(exc) or type(exc).__name__,
    )


@asynccontextmanager
async def _sequenced(
    session: AsyncSession, *, taken_by_numbering: bool = False
) -> AsyncIterator[None]:
    """Hold the sequencer lock from here to the end of ``session``'s transaction: the
    PostgreSQL advisory lock is transaction-scoped, released only after the commit is
    visible; in the single-process SQLite mode an asyncio lock held around the commit
    does the same. ``taken_by_numbering``: on PostgreSQL the caller's first statement
    under it is ``_number_rows``, which takes the lock itself (no statement of its own)."""
    if session.get_bind().dialect.name == "postgresql":
        if not taken_by_numbering:
            await session.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SEQUENCER_LOCK_KEY}
            )
        yield
        return
    loop = asyncio.get_running_loop()
    async with _local_sequencer_locks.setdefault(loop, asyncio.Lock()):
        yield


async def _latest_position(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.max(OutboxEvent.seq))) or 0)


# One statement in its own (implicit) transaction, whose commit does not wait for the
# WAL flush: ``set_config(…, true)`` sets synchronous_commit for that transaction only.
_MARK_PUBLISHED_ASYNC = text(
    "UPDATE outbox_events SET published_at = :now"
    " FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit"
    " WHERE outbox_events.id = ANY(:row_ids)"
)


async def _mark_published(engine: AsyncEngine, row_ids: list[int]) -> None:
    """Note that the rows went out, in one round trip on PostgreSQL (no BEGIN/COMMIT)
    and without waiting for the WAL flush: a mark lost in a database crash only makes
    the sweeper publish the rows once more, as after a crash of this process between
    publishing and marking (at-least-once; consumers deduplicate by event id and seq)."""
    async with autocommit(engine) as connection:
        if connection.dialect.name == "postgresql":
            await connection.execute(_MARK_PUBLISHED_ASYNC, {"now": utcnow(), "row_ids": row_ids})
            return
        await connection.execute(
            update(OutboxEvent).where(OutboxEvent.id.in_(row_ids)).values(published_at=utcnow())
        )


class _PublishedMarks:
    """Rows published and not yet marked, for one database: a task marks whatever has
    gathered in one statement, so the writer goes on to its next transaction instead
    of waiting for the mark (and a busy writer's marks share statements). A mark that
    fails or never runs (the process ends) leaves the rows to the sweeper, which
    publishes them once more (at-least-once, as above)."""

    def __init__(self, engine: AsyncEngine) -> None:
        # Weakly: this object is the value of a weak-keyed map keyed by the engine.
        self._engine = weakref.ref(engine)
        self._waiting: list[int] = []
        self._added = 0  # batches of ids added so far
        self._marked = 0  # of those, how many were marked (or failed to be)
        self._settling: list[tuple[int, asyncio.Future[None]]] = []
        self._marking: asyncio.Task[None] | None = None

    def add(self, row_ids: list[int]) -> None:
        self._waiting.extend(row_ids)
        self._added += 1
        if (
            self._marking is None
            or self._marking.done()
            or self._marking.get_loop() is not asyncio.get_running_loop()
        ):
            self._marking = asyncio.create_task(self._mark_waiting())

    async def _mark_waiting(self) -> None:
        try:
            while self._waiting:
                row_ids, self._waiting, taken = self._waiting, [], self._added
                engine = self._engine()
                try:
                    if engine is not None:
                        await _mark_published(engine, row_ids)
                except Exception as exc:  # the sweeper publishes them again
                    log.warning("marking published outbox rows failed", error=str(exc))
                self._marked = taken
                self._wake_settled()
        finally:  # also when cancelled: no one settling waits for marks that will not come
            self._wake_settled(everyone=True)

    def _wake_settled(self, *, everyone: bool = False) -> None:
        still: list[tuple[int, asyncio.Future[None]]] = []
        for target, waiter in self._settling:
            if everyone or self._marked >= target:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((target, waiter))
        self._settling = still

    async def settle(self) -> None:
        """Wait until the marks added before this call were made (or failed); marks
        added meanwhile are not waited for, so a steady stream of writes cannot hold
        the caller."""
        marking = self._marking
        if (
            marking is None
            or marking.done()
            or marking.get_loop() is not asyncio.get_running_loop()
            or self._marked >= self._added
        ):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._settling.append((self._added, waiter))
        await waiter


_marks: weakref.WeakKeyDictionary[AsyncEngine, _PublishedMarks] = weakref.WeakKeyDictionary()


def _published_marks(sessions: async_sessionmaker[AsyncSession]) -> _PublishedMarks:
    engine: AsyncEngine = sessions.kw["bind"]
    marks = _marks.get(engine)
    if marks is None:
        marks = _marks[engine] = _PublishedMarks(engine)
    return marks


async def settle_published_marks(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Wait for the marks of rows published so far (before closing the database, and
    before sweeping: a row just published is not published again)."""
    await _published_marks(sessions).settle()


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
        await settle_published_marks(self._sessions)
        async with self._sessions() as session:
            ids = list(
                await session.scalars(
                    select(OutboxEvent.id)
                    .where(
                        OutboxEvent.published_at.is_(None),
                        OutboxEvent.created_at < utcnow() - self._min_age,
                    )
                    .order_by(OutboxEvent.id)
                    .limit(self._batch_size)
                )
            )
        if not ids:
            return 0
        await assign_stream_positions(self._sessions, ids)
        async with self._sessions() as session:
            rows = list(
                await session.scalars(
                    select(OutboxEvent)
                    .where(OutboxEvent.id.in_(ids), OutboxEvent.published_at.is_(None))
                    .order_by(OutboxEvent.seq)
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
