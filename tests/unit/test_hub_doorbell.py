"""The hub learns which workspace a doorbell rings for from the record's key, and from
the event itself when the key does not say."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from services.agent_api.realtime.hub import AgentConnection, AgentHub, workspace_of
from shared.bus.port import BusRecord
from shared.db.session import Database
from shared.events import (
    Channel,
    Event,
    MessageCreated,
    MessageDirection,
    Topic,
    conversation_key,
    encode_event,
)


def doorbell(workspace_id: uuid.UUID, key: bytes | None) -> BusRecord:
    conversation_id = uuid.uuid4()
    out = encode_event(
        Event.of(
            MessageCreated(
                workspace_id=workspace_id,
                conversation_id=conversation_id,
                message_id=uuid.uuid4(),
                channel=Channel.WEBCHAT,
                direction=MessageDirection.INBOUND,
                text="hello",
                created_at=datetime.now(UTC),
            ),
            source="test",
        ),
        topic=Topic.EVENTS.value,
        key=conversation_key(workspace_id, conversation_id),
    )
    return BusRecord(
        topic=out.topic,
        partition=0,
        offset=0,
        key=out.key if key is None else key,
        value=out.value,
        headers=tuple(out.headers),
    )


def test_the_workspace_comes_from_the_key() -> None:
    workspace_id = uuid.uuid4()
    record = doorbell(workspace_id, None)
    assert workspace_of(record) == workspace_id
    other = uuid.uuid4()
    keyed_elsewhere = doorbell(workspace_id, f"{other}:{uuid.uuid4()}".encode())
    assert workspace_of(keyed_elsewhere) == other  # the key alone, no decoding


def test_a_key_that_does_not_say_falls_back_to_the_event() -> None:
    workspace_id = uuid.uuid4()
    assert workspace_of(doorbell(workspace_id, b"not-a-workspace")) == workspace_id
    undecodable = BusRecord(
        topic=Topic.EVENTS.value, partition=0, offset=0, key=b"x", value=b"{", headers=()
    )
    assert workspace_of(undecodable) is None


class RecordingSender:
    """Stands in for a socket's sender: keeps what was offered."""

    def __init__(self) -> None:
        self.offered: list[dict[str, object]] = []

    def offer(self, frame: dict[str, object]) -> None:
        self.offered.append(frame)


async def test_no_heartbeat_carries_a_position_the_connection_does_not_have_yet(
    database: Database, workspace_id: uuid.UUID
) -> None:
    """A heartbeat is a resume point: one sent while the connection still looks up where
    the stream is would tell the client ``seq`` 0."""
    hub = AgentHub(database)
    looking_up = asyncio.Event()
    answer = asyncio.Event()

    async def slow_latest(workspace: uuid.UUID) -> int:
        looking_up.set()
        await answer.wait()
        return 41

    hub._latest_stored = slow_latest  # type: ignore[method-assign]
    sender = RecordingSender()
    connection = AgentConnection(uuid.uuid4(), workspace_id, "agent", sender)  # type: ignore[arg-type]
    connecting = asyncio.create_task(hub.connect(connection, after=None))
    await looking_up.wait()
    hub.heartbeat()
    answer.set()
    await connecting
    hub.heartbeat()

    assert sender.offered == [{"type": "heartbeat", "seq": 41}]
