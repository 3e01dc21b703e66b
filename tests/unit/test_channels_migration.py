"""Migration 0003 on existing data: identities get the kind their channel implies."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from sqlalchemy import text

from shared.db.migrate import upgrade
from shared.db.session import Database


async def test_existing_identities_get_the_kind_their_channel_implies(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    await asyncio.to_thread(upgrade, url, "0002")
    database = Database(url)
    workspace, contact = uuid.uuid4().hex, uuid.uuid4().hex
    async with database.engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO workspaces (id, slug, name, created_at)"
                " VALUES (:id, 'w', 'W', '2026-01-01')"
            ),
            {"id": workspace},
        )
        await connection.execute(
            text(
                "INSERT INTO contacts (id, workspace_id, created_at)"
                " VALUES (:id, :ws, '2026-01-01')"
            ),
            {"id": contact, "ws": workspace},
        )
        for channel, address in (
            ("webchat", "wcs_1"),
            ("email", "a@example.com"),
            ("sms", "+1555"),
        ):
            await connection.execute(
                text(
                    "INSERT INTO contact_identities"
                    " (id, workspace_id, contact_id, channel, address, created_at)"
                    " VALUES (:id, :ws, :c, :channel, :address, '2026-01-01')"
                ),
                {
                    "id": uuid.uuid4().hex,
                    "ws": workspace,
                    "c": contact,
                    "channel": channel,
                    "address": address,
                },
            )
    await database.dispose()

    await asyncio.to_thread(upgrade, url)

    database = Database(url)
    async with database.engine.connect() as connection:
        rows = await connection.execute(text("SELECT channel, kind FROM contact_identities"))
        kinds = {str(channel): str(kind) for channel, kind in rows.all()}
    await database.dispose()
    assert kinds == {"webchat": "webchat_session", "email": "email", "sms": "phone"}
