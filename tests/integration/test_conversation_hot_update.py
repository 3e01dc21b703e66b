"""A customer message's update of its conversation stays on the conversation's page.

Every inbound message sets the conversation's ``last_message_at`` (and ``updated_at``).
Neither column is indexed, so PostgreSQL can write the new row version next to the old
one (a HOT update) without a new entry in any of the table's indexes, if the page has
room. With pages packed full, each update also wrote an entry into every index: with
10^6 stored conversations, several random index pages read, dirtied and logged per
message (B6). Migration 0012 keeps room on the pages."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select, text

from devmode.seed import seed_demo
from shared.db.models import Conversation, utcnow
from shared.db.session import Database

pytestmark = pytest.mark.integration

STORED = 2_000  # dozens of pages


async def test_a_new_message_updates_its_conversation_in_place(pg_database: Database) -> None:
    workspace_id = await seed_demo(pg_database, slug=f"hot-{uuid.uuid4().hex[:8]}")
    async with pg_database.sessions() as session:
        parameters = {"w": str(workspace_id), "n": STORED}
        await session.execute(
            text(
                "INSERT INTO contacts (id, workspace_id, display_name, vip, created_at) "
                "SELECT md5(:w || ':c:' || i)::uuid, CAST(:w AS uuid), 'Customer ' || i, "
                "false, now() FROM generate_series(1, :n) AS i"
            ),
            parameters,
        )
        # As the router stores them: a thread key, an owner, the intake decision.
        await session.execute(
            text(
                "INSERT INTO conversations (id, workspace_id, contact_id, channel, thread_key, "
                "customer_address, status, tier, priority, required_skills, intake, "
                "last_message_at, created_at, updated_at) "
                "SELECT md5(:w || ':v:' || i)::uuid, CAST(:w AS uuid), "
                "md5(:w || ':c:' || i)::uuid, 'webchat', 'wcs_' || lpad(to_hex(i), 32, '0'), "
                "'wcs_' || lpad(to_hex(i), 32, '0'), 'assigned', 1, 0, '[]'::json, "
                """'{"matched_rules": [], "sentiment": "neutral", "team": null}'::json, """
                "now(), now(), now() FROM generate_series(1, :n) AS i"
            ),
            parameters,
        )
        await session.commit()

    async with pg_database.sessions() as session:
        # One conversation per page (the first of this workspace on each), so each
        # update finds its page as other traffic would leave it, not crowded by the test.
        first_on_each_page = (
            await session.execute(
                text(
                    "SELECT DISTINCT ON ((ctid::text::point)[0]) id FROM conversations "
                    "WHERE workspace_id = :w ORDER BY (ctid::text::point)[0], ctid"
                ),
                {"w": workspace_id},
            )
        ).scalars()
        ids = list(first_on_each_page)
        assert len(ids) >= 20
        for conversation in await session.scalars(
            select(Conversation).where(Conversation.id.in_(ids))
        ):
            conversation.last_message_at = utcnow()  # what a new message changes
        await session.flush()
        counts = (
            await session.execute(
                text(
                    "SELECT pg_stat_get_xact_tuples_updated('conversations'::regclass), "
                    "pg_stat_get_xact_tuples_hot_updated('conversations'::regclass)"
                )
            )
        ).one()
        await session.rollback()
    updated, in_place = counts
    assert updated == len(ids)
    assert in_place == updated
