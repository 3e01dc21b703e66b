"""Bench data written straight with SQL (``generate_series``), so 10⁵ conversations take
seconds: a workspace, agents, and open web-chat conversations with their contacts."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from devmode.seed import DEMO_PASSWORD
from services.agent_api.auth import hash_password


def session_id(index: int) -> str:
    """The web-chat session (thread key and sender address) of seeded conversation ``index``."""
    return f"wcs_{index:032x}"


@dataclass(frozen=True)
class Seeded:
    workspace_id: uuid.UUID
    slug: str
    agent_ids: list[uuid.UUID]
    conversations: int


async def seed_workspace(dsn: str, *, slug: str = "bench") -> uuid.UUID:
    workspace_id = uuid.uuid4()
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "INSERT INTO workspaces (id, slug, name, created_at) VALUES ($1, $2, $3, now())",
            workspace_id,
            slug,
            "Bench Inc.",
        )
    finally:
        await connection.close()
    return workspace_id


async def seed_agents(
    dsn: str,
    workspace_id: uuid.UUID,
    count: int,
    *,
    capacity: float,
    mixed: bool,
) -> list[uuid.UUID]:
    """``count`` online agents; ``mixed``: tiers 1-3 and skills in rotation."""
    password_hash = hash_password(DEMO_PASSWORD)
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            """
            INSERT INTO agents (id, workspace_id, email, display_name, password_hash, role, tier,
                skills, languages, status, capacity_units, load_units, status_changed_at,
                created_at)
            SELECT md5($1::uuid::text || ':agent:' || i)::uuid, $1::uuid,
                'agent' || i || '@bench.test',
                'Agent ' || i, $2, 'agent',
                CASE WHEN $4 THEN 1 + i % 3 ELSE 1 END,
                CASE WHEN $4 AND i % 4 = 1 THEN '["billing"]'::json
                     WHEN $4 AND i % 4 = 2 THEN '["billing", "returns"]'::json
                     ELSE '[]'::json END,
                '[]'::json, 'online', $5, 0, now() - make_interval(secs => i), now()
            FROM generate_series(1, $3) AS i
            RETURNING id
            """,
            workspace_id,
            password_hash,
            count,
            mixed,
            capacity,
        )
    finally:
        await connection.close()
    return [row["id"] for row in rows]


async def seed_conversations(
    dsn: str, workspace_id: uuid.UUID, agent_id: uuid.UUID, count: int, *, first: int = 0
) -> None:
    """``count`` open web-chat conversations owned by ``agent_id``, with contact and identity."""
    connection = await asyncpg.connect(dsn)
    try:
        async with connection.transaction():
            await connection.execute(
                """
                INSERT INTO contacts (id, workspace_id, display_name, vip, created_at)
                SELECT md5($1::uuid::text || ':contact:' || i)::uuid, $1, 'Customer ' || i,
                    false, now()
                FROM generate_series($2::int, $2::int + $3::int - 1) AS i
                """,
                workspace_id,
                first,
                count,
            )
            await connection.execute(
                """
                INSERT INTO contact_identities (id, workspace_id, contact_id, channel, kind,
                    address, created_at)
                SELECT md5($1::uuid::text || ':identity:' || i)::uuid, $1,
                    md5($1::uuid::text || ':contact:' || i)::uuid, 'webchat', 'webchat_session',
                    'wcs_' || lpad(to_hex(i), 32, '0'), now()
                FROM generate_series($2::int, $2::int + $3::int - 1) AS i
                """,
                workspace_id,
                first,
                count,
            )
            await connection.execute(
                """
                INSERT INTO conversations (id, workspace_id, contact_id, channel, thread_key,
                    customer_address, status, tier, priority, assignee_agent_id, required_skills,
                    last_message_at, created_at, updated_at)
                SELECT md5($1::uuid::text || ':conversation:' || i)::uuid, $1,
                    md5($1::uuid::text || ':contact:' || i)::uuid, 'webchat',
                    'wcs_' || lpad(to_hex(i), 32, '0'), 'wcs_' || lpad(to_hex(i), 32, '0'),
                    'assigned', 1, 0, $4, '[]'::json, now(), now(), now()
                FROM generate_series($2::int, $2::int + $3::int - 1) AS i
                """,
                workspace_id,
                first,
                count,
                agent_id,
            )
            await connection.execute(
                """
                INSERT INTO assignments (id, workspace_id, conversation_id, agent_id, reason,
                    explanation, load_units, created_at)
                SELECT md5($1::uuid::text || ':assignment:' || i)::uuid, $1,
                    md5($1::uuid::text || ':conversation:' || i)::uuid, $4, 'bench_seed',
                    '{}'::json, 0, now()
                FROM generate_series($2::int, $2::int + $3::int - 1) AS i
                """,
                workspace_id,
                first,
                count,
                agent_id,
            )
        await connection.execute("ANALYZE")
    finally:
        await connection.close()
