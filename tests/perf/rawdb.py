"""Raw asyncpg baselines, run as their own process (``python -m tests.perf.rawdb``).

- ``b2``: the SQL the router runs for a message on an existing conversation (captured
  from its SQLAlchemy log), in batches of the router's size: per message the workspace
  check, the duplicate check, the identity and contact reads, the open-thread lookup,
  the conversation read and update, the message and outbox inserts; per batch, as the
  router does, the sequencer lock and the positions in one statement at the end of the
  transaction, the commit, and the published mark. No Kafka, no JSON models: the
  database work alone.
- ``b3``: the same capacity reservations as the router for new conversations, with
  ``workers`` connections side by side (like router processes): per conversation the
  contact, identity, conversation and message inserts, the choice by the router's order
  (tier distance, least loaded, longest idle) among the workspace's online agents (read
  once per batch, kept current after its own reservations, read again after a failed
  one), the conditional ``UPDATE … WHERE load + 1 <= capacity``, the assignment insert,
  the conversation update and two outbox rows; per batch the sequencer (inside the
  transaction, as the router), the commit and the published mark.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import uvloop

from tests.perf.payloads import text_of
from tests.perf.seed import session_id


async def take_positions(connection: asyncpg.Connection, ids: list[int]) -> None:
    """At the end of the batch's transaction, as the router does: the sequencer lock
    (held until the commit) and the rows' positions in one statement (the function of
    migration 0014)."""
    await connection.fetch(
        "SELECT outbox_id, stream_position FROM omni_take_stream_positions($1::bigint[])",
        sorted(ids),
    )


async def mark_published(connection: asyncpg.Connection, ids: list[int]) -> None:
    """After the commit, as the router does (in the background there): one statement in
    its own transaction, whose commit does not wait for the WAL flush."""
    await connection.execute(
        "UPDATE outbox_events SET published_at = $1"
        " FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit"
        " WHERE outbox_events.id = ANY($2::bigint[])",
        datetime.now(UTC),
        ids,
    )


def envelope(kind: str, data: dict[str, Any]) -> str:
    return json.dumps(
        {
            "id": uuid.uuid4().hex,
            "source": "omniroute/router",
            "specversion": "1.0",
            "type": kind,
            "time": datetime.now(UTC).isoformat(),
            "data": data,
        }
    )


async def outbox_insert(
    connection: asyncpg.Connection,
    workspace_id: uuid.UUID,
    key: str,
    kind: str,
    data: dict[str, Any],
) -> int:
    row_id: int = await connection.fetchval(
        "INSERT INTO outbox_events (event_id, workspace_id, topic, record_key, event_type, "
        "envelope, created_at, published_at, seq) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, "
        "NULL) RETURNING id",
        uuid.uuid4().hex,
        workspace_id,
        "omni.events.v1",
        key,
        kind,
        envelope(kind, data),
        datetime.now(UTC),
    )
    return row_id


async def b2_message(
    connection: asyncpg.Connection, workspace_id: uuid.UUID, session: str, text: str
) -> int:
    now = datetime.now(UTC)
    provider_id = f"{session}:{uuid.uuid4().hex}"
    await connection.fetchval("SELECT id FROM workspaces WHERE id = $1", workspace_id)
    await connection.fetchval(
        "SELECT id FROM messages WHERE workspace_id = $1 AND channel = $2 "
        "AND provider_message_id = $3",
        workspace_id,
        "webchat",
        provider_id,
    )
    identity = await connection.fetchrow(
        "SELECT id, workspace_id, contact_id, channel, kind, address, opted_out_at, "
        "opt_out_keyword, created_at FROM contact_identities WHERE workspace_id = $1 "
        "AND kind = $2 AND address = $3",
        workspace_id,
        "webchat_session",
        session,
    )
    await connection.fetchrow(
        "SELECT id, workspace_id, display_name, vip, merged_into_contact_id, created_at "
        "FROM contacts WHERE id = $1",
        identity["contact_id"],
    )
    conversation_id = await connection.fetchval(
        "SELECT id FROM conversations WHERE workspace_id = $1 AND channel = $2 "
        "AND thread_key = $3 AND status != $4",
        workspace_id,
        "webchat",
        session,
        "resolved",
    )
    conversation = await connection.fetchrow(
        "SELECT * FROM conversations WHERE id = $1", conversation_id
    )
    await connection.execute(
        "UPDATE conversations SET last_message_at = $1, updated_at = $2 WHERE id = $3",
        now,
        now,
        conversation_id,
    )
    message_id = uuid.uuid4()
    await connection.execute(
        "INSERT INTO messages (id, workspace_id, conversation_id, channel, direction, "
        "provider_message_id, author_agent_id, text, delivery_status, delivery_status_reason, "
        "subject, email_message_id, threading, attachments, original_text, created_at) VALUES "
        "($1, $2, $3, $4, $5, $6, NULL, $7, $8, NULL, NULL, NULL, $9, NULL, NULL, $10)",
        message_id,
        workspace_id,
        conversation_id,
        "webchat",
        "inbound",
        provider_id,
        text,
        "received",
        json.dumps({"rule": "thread_key", "conversation_id": str(conversation_id)}),
        now,
    )
    return await outbox_insert(
        connection,
        workspace_id,
        f"{workspace_id}:{conversation_id}",
        "omniroute.message.created.v1",
        {
            "conversation_id": str(conversation_id),
            "message_id": str(message_id),
            "text": text,
            "assignee_agent_id": str(conversation["assignee_agent_id"]),
        },
    )


async def run_b2(spec: dict[str, Any]) -> dict[str, Any]:
    workspace_id = uuid.UUID(spec["workspace_id"])
    rng = random.Random(int(spec.get("seed", 3)))  # noqa: S311 - reproducible load, not secrets
    count, batch = int(spec["count"]), int(spec["batch"])
    conversations = int(spec["conversations"])
    work = [
        (session_id(rng.randrange(conversations)), text_of(rng.randint(200, 1000), rng))
        for _ in range(count)
    ]
    connection = await asyncpg.connect(spec["dsn"])
    try:
        started = time.perf_counter()
        for first in range(0, count, batch):
            async with connection.transaction():
                ids = [
                    await b2_message(connection, workspace_id, session, text)
                    for session, text in work[first : first + batch]
                ]
                await take_positions(connection, ids)
            await mark_published(connection, ids)
        elapsed = time.perf_counter() - started
    finally:
        await connection.close()
    return {"count": count, "seconds": elapsed, "throughput": count / elapsed}


class OnlineAgents:
    """The workspace's online agents as one baseline connection knows them: read once per
    batch transaction and kept current after its own reservations, read again after a
    reservation failed (another connection filled the agent) before queueing, as the
    router does. Reading all of them for every conversation would make the baseline
    slower than it needs to be."""

    def __init__(self, workspace_id: uuid.UUID) -> None:
        self.workspace_id = workspace_id
        self.rows: list[dict[str, Any]] = []
        self.stale = True

    async def read(self, connection: asyncpg.Connection) -> None:
        rows = await connection.fetch(
            "SELECT id, tier, skills, languages, status, capacity_units, load_units, "
            "status_changed_at, last_assigned_at FROM agents WHERE workspace_id = $1 "
            "AND status = 'online' AND deactivated_at IS NULL",
            self.workspace_id,
        )
        self.rows = [dict(row) for row in rows]
        self.stale = False

    def ranked(self) -> list[dict[str, Any]]:
        """Eligible for a tier-1 conversation without skills (every bench conversation) by
        the router's order: tier distance, load share, longest idle (never assigned
        first), id."""
        return sorted(
            (a for a in self.rows if a["load_units"] + 1 <= a["capacity_units"]),
            key=lambda a: (
                a["tier"] - 1,
                a["load_units"] / a["capacity_units"],
                a["last_assigned_at"] or NEVER,
                a["id"],
            ),
        )

    def reserved(self, agent: dict[str, Any], now: datetime) -> None:
        agent["load_units"] += 1
        agent["last_assigned_at"] = now


NEVER = datetime.min.replace(tzinfo=UTC)


async def b3_conversation(
    connection: asyncpg.Connection,
    workspace_id: uuid.UUID,
    session: str,
    text: str,
    agents: OnlineAgents,
) -> list[int]:
    now = datetime.now(UTC)
    contact_id, conversation_id = uuid.uuid4(), uuid.uuid4()
    await connection.execute(
        "INSERT INTO contacts (id, workspace_id, display_name, vip, created_at) "
        "VALUES ($1, $2, $3, false, $4)",
        contact_id,
        workspace_id,
        "Customer",
        now,
    )
    await connection.execute(
        "INSERT INTO contact_identities (id, workspace_id, contact_id, channel, kind, address, "
        "created_at) VALUES ($1, $2, $3, 'webchat', 'webchat_session', $4, $5)",
        uuid.uuid4(),
        workspace_id,
        contact_id,
        session,
        now,
    )
    await connection.execute(
        "INSERT INTO conversations (id, workspace_id, contact_id, channel, thread_key, "
        "customer_address, status, tier, priority, required_skills, last_message_at, "
        "created_at, updated_at) VALUES ($1, $2, $3, 'webchat', $4, $4, 'queued', 1, 0, "
        "'[]'::json, $5, $5, $5)",
        conversation_id,
        workspace_id,
        contact_id,
        session,
        now,
    )
    await connection.execute(
        "INSERT INTO messages (id, workspace_id, conversation_id, channel, direction, "
        "provider_message_id, text, delivery_status, created_at) VALUES ($1, $2, $3, "
        "'webchat', 'inbound', $4, $5, 'received', $6)",
        uuid.uuid4(),
        workspace_id,
        conversation_id,
        f"{session}:1",
        text,
        now,
    )
    key = f"{workspace_id}:{conversation_id}"
    chosen: dict[str, Any] | None = None
    while chosen is None:
        if agents.stale:
            await agents.read(connection)
        for agent in agents.ranked():
            taken = await connection.fetchval(
                "UPDATE agents SET load_units = load_units + 1, last_assigned_at = $1 "
                "WHERE id = $2 AND workspace_id = $3 AND status = 'online' "
                "AND load_units + 1 <= capacity_units RETURNING id",
                now,
                agent["id"],
                workspace_id,
            )
            if taken is not None:
                agents.reserved(agent, now)
                chosen = agent
                break
            agents.stale = True  # another connection filled it: read again if needed
        if chosen is None and not agents.stale:
            break  # nobody has room by agents read since the last failed reservation
    if chosen is not None:
        await connection.execute(
            "INSERT INTO assignments (id, workspace_id, conversation_id, agent_id, reason, "
            "explanation, load_units, created_at) VALUES ($1, $2, $3, $4, 'new_conversation', "
            "'{}'::json, 1, $5)",
            uuid.uuid4(),
            workspace_id,
            conversation_id,
            chosen["id"],
            now,
        )
        await connection.execute(
            "UPDATE conversations SET status = 'assigned', assignee_agent_id = $1, "
            "updated_at = $2 WHERE id = $3",
            chosen["id"],
            now,
            conversation_id,
        )
        kind, data = "omniroute.conversation.assigned.v1", {"agent_id": str(chosen["id"])}
    else:
        await connection.execute(
            "UPDATE conversations SET queued_at = $1, updated_at = $1 WHERE id = $2",
            now,
            conversation_id,
        )
        kind, data = "omniroute.conversation.queued.v1", {}
    return [
        await outbox_insert(connection, workspace_id, key, kind, data),
        await outbox_insert(
            connection, workspace_id, key, "omniroute.message.created.v1", {"text": text}
        ),
    ]


async def run_b3(spec: dict[str, Any]) -> dict[str, Any]:
    workspace_id = uuid.UUID(spec["workspace_id"])
    count, batch, workers = int(spec["count"]), int(spec["batch"]), int(spec["workers"])
    rng = random.Random(5)  # noqa: S311 - reproducible load, not secrets
    work = [
        (f"wcs_raw{uuid.uuid4().hex}", text_of(rng.randint(200, 1000), rng)) for _ in range(count)
    ]
    connections = [await asyncpg.connect(spec["dsn"]) for _ in range(workers)]
    retries = 0

    async def worker(connection: asyncpg.Connection, share: list[tuple[str, str]]) -> None:
        nonlocal retries
        for first in range(0, len(share), batch):
            while True:
                agents = OnlineAgents(workspace_id)  # read anew in every transaction
                try:
                    async with connection.transaction():
                        ids = [
                            row_id
                            for session, text in share[first : first + batch]
                            for row_id in await b3_conversation(
                                connection, workspace_id, session, text, agents
                            )
                        ]
                        await take_positions(connection, ids)
                    break
                except asyncpg.DeadlockDetectedError:
                    retries += 1
            await mark_published(connection, ids)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker(c, work[i::workers]) for i, c in enumerate(connections)))
        elapsed = time.perf_counter() - started
    finally:
        for connection in connections:
            await connection.close()
    return {"count": count, "seconds": elapsed, "throughput": count / elapsed, "retries": retries}


async def main() -> None:
    spec: dict[str, Any] = json.loads(sys.stdin.read())
    result = await (run_b2(spec) if spec["role"] == "b2" else run_b3(spec))
    print(json.dumps(result), flush=True)  # noqa: T201 - the result, read by the bench


if __name__ == "__main__":
    uvloop.run(main())
