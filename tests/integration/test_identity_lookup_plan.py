"""The router's batch identity lookup stays an index lookup however many identities a
workspace stores (B6: with the address alone after the workspace, the unique index on
(workspace, kind, address) could only narrow to the workspace, and PostgreSQL read every
identity of the workspace for every batch)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text

from devmode.seed import seed_demo
from services.router.contacts import known_identities
from shared.db.session import Database
from shared.events import Channel, IdentityClaim, IdentityKind, MessageReceived, Sender
from tests.query_plans import run_and_plan

pytestmark = pytest.mark.integration

STORED = 50_000


async def test_the_batch_identity_lookup_uses_the_identity_index(pg_database: Database) -> None:
    workspace_id = await seed_demo(pg_database, slug=f"plan-{uuid.uuid4().hex[:8]}")
    async with pg_database.sessions() as session:
        for table, columns, values in (
            (
                "contacts",
                "id, workspace_id, display_name, vip, created_at",
                "md5(:w || ':c:' || i)::uuid, CAST(:w AS uuid), 'c' || i, false, now()",
            ),
            (
                "contact_identities",
                "id, workspace_id, contact_id, channel, kind, address, created_at",
                "md5(:w || ':i:' || i)::uuid, CAST(:w AS uuid), md5(:w || ':c:' || i)::uuid, "
                "'webchat', 'webchat_session', 'wcs_' || lpad(to_hex(i), 32, '0'), now()",
            ),
        ):
            await session.execute(
                text(
                    f"INSERT INTO {table} ({columns}) SELECT {values} "  # noqa: S608 - constants
                    f"FROM generate_series(1, {STORED}) AS i"
                ),
                {"w": str(workspace_id)},
            )
        await session.commit()
    async with pg_database.engine.connect() as connection:
        await connection.execute(text("ANALYZE contacts"))
        await connection.execute(text("ANALYZE contact_identities"))
        await connection.commit()

    batch = [
        MessageReceived(
            workspace_id=workspace_id,
            channel=Channel.WEBCHAT,
            provider_message_id=f"p-{i}",
            thread_key=f"wcs_{i:032x}",
            sender=Sender(
                address=f"wcs_{i:032x}",
                identities=(IdentityClaim(kind=IdentityKind.EMAIL, address=f"c{i}@example.com"),),
            ),
            text="hello",
            received_at=datetime.now(UTC),
        )
        for i in range(100, 250)
    ]

    async def lookup() -> Any:
        async with pg_database.sessions() as session:
            found, _ = await known_identities(session, batch)
            return found

    found, nodes = await run_and_plan(pg_database, "contact_identities", lookup)
    assert len(found) == len(batch)  # every sender's chat identity, none of the emails
    on_identities = [n for n in nodes if n.get("Relation Name") == "contact_identities"]
    assert on_identities, nodes
    # An index scan's "Index Cond", or a bitmap heap scan's "Recheck Cond" (its index's).
    conditions = [n.get("Index Cond", "") + n.get("Recheck Cond", "") for n in on_identities]
    assert all("address" in condition for condition in conditions), (conditions, on_identities)
