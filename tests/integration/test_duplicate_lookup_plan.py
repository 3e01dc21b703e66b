"""The router's batch duplicate check stays an index lookup however many messages a
workspace stores: with the provider message ids alone after the workspace, the unique
index on (workspace, channel, provider message id) narrows only to the workspace, and
every message the workspace ever stored was read for every batch."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text

from devmode.seed import seed_demo
from services.router.routing import batch_lookups
from shared.db.session import Database
from shared.events import Channel, MessageReceived, Sender
from tests.query_plans import run_and_plan

pytestmark = pytest.mark.integration

STORED = 50_000


async def test_the_batch_duplicate_check_uses_the_whole_unique_index(
    pg_database: Database,
) -> None:
    workspace_id = await seed_demo(pg_database, slug=f"dup-{uuid.uuid4().hex[:8]}")
    parameters = {"w": str(workspace_id), "n": STORED}
    async with pg_database.sessions() as session:
        for statement in (
            "INSERT INTO contacts (id, workspace_id, display_name, vip, created_at) "
            "VALUES (md5(:w || '/c')::uuid, CAST(:w AS uuid), 'Customer', false, now())",
            "INSERT INTO conversations (id, workspace_id, contact_id, channel, thread_key, "
            "status, tier, priority, required_skills, last_message_at, created_at, updated_at) "
            "VALUES (md5(:w || '/v')::uuid, CAST(:w AS uuid), md5(:w || '/c')::uuid, "
            "'webchat', 'wcs_dup', 'assigned', 1, 0, '[]'::json, now(), now(), now())",
            "INSERT INTO messages (id, workspace_id, conversation_id, channel, direction, "
            "provider_message_id, text, delivery_status, created_at) "
            "SELECT md5(:w || '/m/' || i)::uuid, CAST(:w AS uuid), md5(:w || '/v')::uuid, "
            "'webchat', 'inbound', 'pm-' || i, 'hello', 'received', now() "
            "FROM generate_series(1, :n) AS i",
        ):
            await session.execute(text(statement), parameters)
        await session.commit()
    async with pg_database.engine.connect() as connection:
        await connection.execute(text("ANALYZE messages"))
        await connection.commit()

    batch = [
        MessageReceived(
            workspace_id=workspace_id,
            channel=Channel.WEBCHAT,
            provider_message_id=f"pm-{i}",
            thread_key="wcs_dup",
            sender=Sender(address="wcs_dup"),
            text="hello",
            received_at=datetime.now(UTC),
        )
        for i in range(STORED - 99, STORED + 51)
    ]

    async def lookup() -> Any:
        async with pg_database.sessions() as session:
            return await batch_lookups(session, batch)

    lookups, nodes = await run_and_plan(pg_database, "provider_message_id", lookup)
    assert len(lookups.stored) == 100  # the stored ones, not the 50 new
    on_index = [n for n in nodes if n.get("Index Name") == "uq_messages_provider_id"]
    assert on_index, nodes
    conditions = [n.get("Index Cond", "") for n in on_index]
    assert all(
        all(column in condition for column in ("workspace_id", "channel", "provider_message_id"))
        for condition in conditions
    ), conditions
