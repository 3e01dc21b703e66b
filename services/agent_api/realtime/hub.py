"""Agent WebSockets of this replica and the events each agent should see.

Every agent_api replica reads ``omni.events.v1`` without a consumer group, so an
event committed anywhere reaches the replica that holds the agent's socket.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from shared.bus.port import BusRecord
from shared.events import (
    ConversationAssigned,
    ConversationEscalated,
    ConversationQueued,
    ConversationUnassigned,
    Event,
    EventDecodeError,
    MessageCreated,
    SupervisorAlert,
    decode_event,
)
from shared.metrics import END_TO_END_LATENCY, WEBSOCKET_CONNECTIONS
from shared.websocket import CLOSE_SERVICE_RESTART, BoundedSender

log = structlog.get_logger(__name__)

FRAME_TYPES: dict[str, str] = {
    ConversationAssigned.event_type: "conversation.assigned",
    ConversationUnassigned.event_type: "conversation.unassigned",
    ConversationEscalated.event_type: "conversation.escalated",
    ConversationQueued.event_type: "conversation.queued",
    MessageCreated.event_type: "message.created",
    SupervisorAlert.event_type: "supervisor.alert",
}

SUPERVISOR_ROLES = frozenset({"supervisor", "admin"})


@dataclass(frozen=True)
class Audience:
    agents: frozenset[uuid.UUID]
    supervisors: bool = False


def audience(event: Event) -> Audience:
    """Who receives this event live: named agents and/or the workspace's supervisors."""
    data = event.data
    if isinstance(data, ConversationAssigned | ConversationUnassigned):
        return Audience(frozenset({data.agent_id}), supervisors=True)
    if isinstance(data, MessageCreated) and data.assignee_agent_id is not None:
        return Audience(frozenset({data.assignee_agent_id}))
    if isinstance(data, ConversationEscalated):
        by = frozenset({data.by_agent_id}) if data.by_agent_id else frozenset()
        return Audience(by, supervisors=True)
    if isinstance(data, ConversationQueued | SupervisorAlert):
        return Audience(frozenset(), supervisors=True)
    return Audience(frozenset())


def receives(event: Event, agent_id: uuid.UUID, role: str) -> bool:
    who = audience(event)
    return agent_id in who.agents or (who.supervisors and role in SUPERVISOR_ROLES)


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


class AgentConnection:
    """One agent socket: its sender and the seqs already sent (to drop duplicates)."""

    def __init__(
        self, agent_id: uuid.UUID, workspace_id: uuid.UUID, role: str, sender: BoundedSender
    ) -> None:
        self.agent_id = agent_id
        self.workspace_id = workspace_id
        self.role = role
        self.sender = sender
        self._sent: set[int] = set()
        self._held: list[dict[str, Any]] | None = None

    def hold(self) -> None:
        """Buffer live frames while a replay from the event log is in progress."""
        self._held = []

    def send(self, frame: dict[str, Any]) -> None:
        if self._held is not None:
            self._held.append(frame)
            return
        seq = frame.get("seq")
        if isinstance(seq, int):
            if seq in self._sent:
                return
            self._sent.add(seq)
        self.sender.offer(frame)

    def finish_replay(self, replayed: Sequence[dict[str, Any]]) -> None:
        """Send the replayed frames, then the live ones held meanwhile, without repeats."""
        held, self._held = self._held or [], None
        for frame in (*replayed, *held):
            self.send(frame)


class AgentHub:
    def __init__(self) -> None:
        self._by_agent: dict[uuid.UUID, set[AgentConnection]] = defaultdict(set)

    def add(self, connection: AgentConnection) -> None:
        self._by_agent[connection.agent_id].add(connection)
        WEBSOCKET_CONNECTIONS.labels(service="agent_api").inc()

    def remove(self, connection: AgentConnection) -> None:
        connections = self._by_agent.get(connection.agent_id)
        if connections is not None and connection in connections:
            connections.discard(connection)
            WEBSOCKET_CONNECTIONS.labels(service="agent_api").dec()
            if not connections:
                del self._by_agent[connection.agent_id]

    def publish(self, event: Event) -> None:
        frame = frame_of(event)
        if frame is None:
            return
        data = event.data
        if isinstance(data, MessageCreated) and data.received_at is not None:
            END_TO_END_LATENCY.observe((datetime.now(UTC) - data.received_at).total_seconds())
        for connections in list(self._by_agent.values()):
            for connection in list(connections):
                if connection.workspace_id == event.data.workspace_id and receives(
                    event, connection.agent_id, connection.role
                ):
                    connection.send(frame)

    async def handle(self, records: Sequence[BusRecord]) -> None:
        for record in records:
            try:
                event = decode_event(record)
            except EventDecodeError as exc:
                log.error("undecodable event skipped", error=str(exc))
                continue
            self.publish(event)

    async def close_all(self) -> None:
        for connections in list(self._by_agent.values()):
            for connection in list(connections):
                await connection.sender.close(CLOSE_SERVICE_RESTART, "server restarting; reconnect")
