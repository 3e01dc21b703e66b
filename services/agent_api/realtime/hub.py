"""Agent WebSockets of this replica, fed in stream order from the outbox.

Kafka (``omni.events.v1``, read by every replica without a group) is the doorbell:
it says which workspace has news. The news itself is read from the outbox by stream
position (``seq``), which is assigned in commit order. Each connection keeps its
position and receives only what lies beyond it, in order: no gaps and no duplicates,
whichever replica or writer produced the events and however their commits interleave.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson
import structlog
from sqlalchemy import bindparam, func, select

from shared.bus.port import BusRecord
from shared.db.models import OutboxEvent
from shared.db.session import Database
from shared.events import (
    AgentMentioned,
    ConsultationRequested,
    ConversationAssigned,
    ConversationEscalated,
    ConversationQueued,
    ConversationStatusChanged,
    ConversationUnassigned,
    CsatFollowUpClosed,
    CsatFollowUpOpened,
    CsatRecorded,
    Event,
    EventDecodeError,
    EventPayload,
    MessageAttachmentsUpdated,
    MessageCreated,
    MessageDeliveryUpdated,
    SupervisorAlert,
    Topic,
    decode_event,
)
from shared.metrics import END_TO_END_LATENCY, WEBSOCKET_CONNECTIONS
from shared.outbox import stored_event
from shared.tracing import push_span
from shared.websocket import CLOSE_SERVICE_RESTART, BoundedSender

log = structlog.get_logger(__name__)

PULL_BATCH: Final = 500
CATCH_UP_LIMIT: Final = 20_000

FRAME_TYPES: dict[str, str] = {
    ConversationAssigned.event_type: "conversation.assigned",
    ConversationUnassigned.event_type: "conversation.unassigned",
    ConversationEscalated.event_type: "conversation.escalated",
    ConversationQueued.event_type: "conversation.queued",
    MessageCreated.event_type: "message.created",
    MessageDeliveryUpdated.event_type: "message.delivery_updated",
    SupervisorAlert.event_type: "supervisor.alert",
    ConversationStatusChanged.event_type: "conversation.status_changed",
    ConsultationRequested.event_type: "consultation.requested",
    AgentMentioned.event_type: "agent.mentioned",
    MessageAttachmentsUpdated.event_type: "message.attachments_updated",
    CsatRecorded.event_type: "csat.recorded",
    CsatFollowUpOpened.event_type: "csat.follow_up_opened",
    CsatFollowUpClosed.event_type: "csat.follow_up_closed",
}

SUPERVISOR_ROLES = frozenset({"supervisor", "admin"})

# A workspace's stream statements, built once (only the parameters change per pull).
_LATEST_POSITION = select(func.max(OutboxEvent.seq)).where(
    OutboxEvent.workspace_id == bindparam("workspace"),
    OutboxEvent.topic == Topic.EVENTS.value,
)
_EVENTS_AFTER = (
    select(OutboxEvent.seq, OutboxEvent.event_type, OutboxEvent.envelope)
    .where(
        OutboxEvent.workspace_id == bindparam("workspace"),
        OutboxEvent.topic == Topic.EVENTS.value,
        OutboxEvent.seq > bindparam("position"),
    )
    .order_by(OutboxEvent.seq)
    .limit(bindparam("limit"))
)


@dataclass(frozen=True)
class Audience:
    agents: frozenset[uuid.UUID]
    supervisors: bool = False


def audience(event: Event) -> Audience:
    """Who receives this event without subscribing: named agents and/or supervisors."""
    data = event.data
    if isinstance(data, ConversationAssigned | ConversationUnassigned):
        return Audience(frozenset({data.agent_id}), supervisors=True)
    if isinstance(data, MessageCreated) and data.assignee_agent_id is not None:
        return Audience(frozenset({data.assignee_agent_id}))
    if isinstance(data, MessageDeliveryUpdated) and data.assignee_agent_id is not None:
        return Audience(frozenset({data.assignee_agent_id}))
    if isinstance(data, MessageAttachmentsUpdated) and data.assignee_agent_id is not None:
        return Audience(frozenset({data.assignee_agent_id}))
    if isinstance(data, ConversationEscalated):
        by = frozenset({data.by_agent_id}) if data.by_agent_id else frozenset()
        return Audience(by, supervisors=True)
    if isinstance(data, ConversationQueued | SupervisorAlert):
        return Audience(frozenset(), supervisors=True)
    if isinstance(data, ConversationStatusChanged):
        owner = frozenset({data.assignee_agent_id}) if data.assignee_agent_id else frozenset()
        return Audience(owner, supervisors=True)
    if isinstance(data, ConsultationRequested):
        return Audience(frozenset(data.consultant_agent_ids))
    if isinstance(data, AgentMentioned):
        return Audience(frozenset(data.mentioned_agent_ids))
    if isinstance(data, CsatRecorded):
        owner = frozenset({data.agent_id}) if data.agent_id else frozenset()
        return Audience(owner, supervisors=True)
    if isinstance(data, CsatFollowUpOpened | CsatFollowUpClosed):
        return Audience(frozenset(), supervisors=True)
    return Audience(frozenset())


def conversation_of(data: EventPayload) -> uuid.UUID | None:
    value = getattr(data, "conversation_id", None)
    return value if isinstance(value, uuid.UUID) else None


def frame_of(event: Event) -> dict[str, Any] | None:
    frame_type = FRAME_TYPES.get(event.type)
    if frame_type is None:
        return None
    return {
        "type": frame_type,
        "seq": event.sequence,
        "event_id": event.id,
        "time": event.time.isoformat(),
        "correlation_id": event.correlationid,
        "data": event.data_json(),
    }


def workspace_of(record: BusRecord) -> uuid.UUID | None:
    """The workspace a doorbell rings for: the first part of its key
    (``{workspace_id}:{conversation_id}`` on ``omni.events.v1``), else from the decoded
    event; None (logged) when neither says."""
    prefix = (record.key or b"")[:36]
    try:
        return uuid.UUID(prefix.decode("ascii"))
    except ValueError:
        pass
    try:
        return decode_event(record).data.workspace_id
    except EventDecodeError as exc:
        log.error("undecodable event skipped", error=str(exc))
        return None


@dataclass
class EncodedFrames:
    """Each event's frame encoded once, however many connections receive it."""

    by_seq: dict[int, str | None] = field(default_factory=dict)

    def text(self, seq: int, event: Event) -> str | None:
        if seq not in self.by_seq:
            frame = frame_of(event)
            self.by_seq[seq] = orjson.dumps(frame).decode() if frame is not None else None
        return self.by_seq[seq]


@dataclass(eq=False, slots=True)
class AgentConnection:
    """One socket: who it is, what it follows, and its position in the stream."""

    agent_id: uuid.UUID
    workspace_id: uuid.UUID
    role: str
    sender: BoundedSender
    position: int = 0
    live: bool = False
    subscriptions: set[uuid.UUID] = field(default_factory=set)
    consulting: set[uuid.UUID] = field(default_factory=set)

    def receives(self, event: Event) -> bool:
        who = audience(event)
        if self.agent_id in who.agents:
            return True
        is_supervisor = self.role in SUPERVISOR_ROLES
        if who.supervisors and is_supervisor:
            return True
        conversation = conversation_of(event.data)
        if conversation is None:
            return False
        if conversation in self.consulting:
            return isinstance(event.data, MessageCreated)
        return is_supervisor and conversation in self.subscriptions

    def deliver(self, seq: int, event: Event, encoded: EncodedFrames | None = None) -> None:
        """Advance to ``seq``; send the event if it concerns this connection. ``encoded``
        shares one encoding of each frame between the connections a pull serves."""
        if seq <= self.position:
            return
        self.position = seq
        data = event.data
        if isinstance(data, ConsultationRequested) and self.agent_id in data.consultant_agent_ids:
            self.consulting.add(data.conversation_id)
        if self.receives(event):
            text = (encoded or EncodedFrames()).text(seq, event)
            if text is not None:
                self.sender.offer_text(text)


class AgentHub:
    """``pull_batch``: stream rows read (and delivered) at a time; keep it well below the
    sockets' send queue, or one pull alone could overflow a fast client's queue."""

    def __init__(self, database: Database, *, pull_batch: int = PULL_BATCH) -> None:
        self._database = database
        self._pull_batch = max(1, pull_batch)
        self._by_workspace: dict[uuid.UUID, set[AgentConnection]] = defaultdict(set)
        self._cursor: dict[uuid.UUID, int] = {}
        self._pull_locks: dict[uuid.UUID, asyncio.Lock] = defaultdict(asyncio.Lock)

    # connections ---------------------------------------------------------------------

    async def connect(self, connection: AgentConnection, *, after: int | None) -> None:
        """Register and bring the connection up to date: from ``after`` if given, else
        from now. Returns once it is live (further events arrive through pulls)."""
        workspace = connection.workspace_id
        cursor = await self._ensure_cursor(workspace)
        if after is not None and after > cursor and after > await self._latest_stored(workspace):
            # Beyond anything the workspace's stream holds (another replica may be ahead
            # of this one's cursor, never of the database): whatever the client has is
            # not this stream's. Resuming there would skip every event up to it.
            connection.sender.offer({"type": "reset", "reason": "last_seq is ahead of the stream"})
            after = None
        connection.position = cursor if after is None else after
        # Registered once it has a position: a heartbeat carries it as the resume point.
        self._by_workspace[workspace].add(connection)
        WEBSOCKET_CONNECTIONS.labels(service="agent_api").inc()
        delivered = 0
        while connection.position < self._cursor[workspace]:
            events = await self._events_after(workspace, connection.position)
            if not events:
                break
            # Catching up is this socket's own work: wait for its client to take what is
            # queued instead of overflowing its queue (a client that takes nothing within
            # the send timeout is dropped as slow).
            if not await connection.sender.wait_for_room(len(events)):
                break
            for seq, event in events:
                connection.deliver(seq, event)
            delivered += len(events)
            if delivered > CATCH_UP_LIMIT:
                connection.sender.offer({"type": "reset", "reason": "too far behind"})
                connection.position = self._cursor[workspace]
                break
        # No await between the last check and going live: pulls see it live from here.
        connection.live = True

    def disconnect(self, connection: AgentConnection) -> None:
        connections = self._by_workspace.get(connection.workspace_id)
        if connections is not None and connection in connections:
            connections.discard(connection)
            WEBSOCKET_CONNECTIONS.labels(service="agent_api").dec()

    # the stream ----------------------------------------------------------------------

    async def _ensure_cursor(self, workspace: uuid.UUID) -> int:
        if workspace not in self._cursor:
            self._cursor.setdefault(workspace, await self._latest_stored(workspace))
        return self._cursor[workspace]

    async def _latest_stored(self, workspace: uuid.UUID) -> int:
        """The highest position the workspace's stream holds in the database."""
        async with self._database.autocommit() as connection:
            latest = await connection.scalar(_LATEST_POSITION, {"workspace": workspace})
        return int(latest or 0)

    async def _events_after(self, workspace: uuid.UUID, position: int) -> list[tuple[int, Event]]:
        """The workspace's next events beyond ``position``, in stream order (columns
        only: no ORM objects for rows that are read once and dropped; one statement
        outside a transaction: no BEGIN/ROLLBACK round trips around it)."""
        async with self._database.autocommit() as connection:
            rows = await connection.execute(
                _EVENTS_AFTER,
                {"workspace": workspace, "position": position, "limit": self._pull_batch},
            )
            return [
                (int(seq), stored_event(event_type, envelope, seq))
                for seq, event_type, envelope in rows
            ]

    async def pull(self, workspace: uuid.UUID) -> int:
        """Deliver everything new in the workspace's stream to live connections."""
        if not self._by_workspace.get(workspace):
            return 0
        delivered = 0
        async with self._pull_locks[workspace]:
            cursor = await self._ensure_cursor(workspace)
            while True:
                events = await self._events_after(workspace, cursor)
                if not events:
                    break
                encoded = EncodedFrames()
                for connection in list(self._by_workspace.get(workspace, ())):
                    # Only connections that reached the cursor; others are catching up.
                    if connection.live and connection.position >= cursor:
                        for seq, event in events:
                            connection.deliver(seq, event, encoded)
                cursor = events[-1][0]
                self._cursor[workspace] = cursor
                delivered += len(events)
                self._observe_latency([event for _, event in events])
                if len(events) < self._pull_batch:
                    break
        return delivered

    async def pull_all(self) -> None:
        """Safety net for a missed doorbell: pull every workspace with connections."""
        for workspace in [w for w, conns in self._by_workspace.items() if conns]:
            await self.pull(workspace)

    async def handle(self, records: Sequence[BusRecord]) -> None:
        """Doorbell from ``omni.events.v1``: pull the workspaces it names."""
        # The last record per workspace carries the trace the push continues.
        latest: dict[uuid.UUID, BusRecord] = {}
        for record in records:
            workspace = workspace_of(record)
            if workspace is not None:
                latest[workspace] = record
        for workspace, record in latest.items():
            with push_span(record.headers) as span:
                span.set_attribute("omniroute.frames", await self.pull(workspace))

    def heartbeat(self) -> None:
        for connections in list(self._by_workspace.values()):
            for connection in list(connections):
                connection.sender.offer({"type": "heartbeat", "seq": connection.position})

    @staticmethod
    def _observe_latency(events: list[Event]) -> None:
        now = datetime.now(UTC)
        for event in events:
            data = event.data
            if isinstance(data, MessageCreated) and data.received_at is not None:
                END_TO_END_LATENCY.observe((now - data.received_at).total_seconds())

    async def close_all(self) -> None:
        for connections in list(self._by_workspace.values()):
            for connection in list(connections):
                await connection.sender.close(CLOSE_SERVICE_RESTART, "server restarting; reconnect")
