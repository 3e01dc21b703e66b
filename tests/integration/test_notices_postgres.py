"""Proactive notices on PostgreSQL: queued, skipped for SMS opt-out, and the delivery
receipt reflected per recipient; another workspace's contacts answer 404."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select

from shared.db.models import Notice
from shared.db.session import Database
from shared.events import Channel, ConsentChange
from tests.integration.test_api_agents import Desk, assert_problem, open_desk
from tests.unit.test_notices import customer_writes, outbound, receipt, received

pytestmark = pytest.mark.integration


@pytest.fixture
async def desk(pg_database: Database) -> AsyncIterator[Desk]:
    async with open_desk(pg_database) as opened:
        yield opened


async def test_notice_on_postgres(desk: Desk) -> None:
    ws = desk.a.workspace_id
    number = f"+1555{uuid.uuid4().int % 10**7:07d}"
    stopped_number = f"+1556{uuid.uuid4().int % 10**7:07d}"
    reachable = await customer_writes(desk, received(ws, Channel.SMS, number))
    stopped = await customer_writes(
        desk,
        received(ws, Channel.SMS, stopped_number),
        received(ws, Channel.SMS, stopped_number, text="STOP", consent=ConsentChange.OPT_OUT),
    )
    theirs = await customer_writes(
        desk, received(desk.b.workspace_id, Channel.SMS, f"+1557{uuid.uuid4().int % 10**7:07d}")
    )
    refused = await desk.call(
        "admin_key",
        "POST",
        "/v1/notices",
        json={"text": "Hello", "contact_ids": [str(reachable), str(theirs)]},
    )
    assert_problem(refused, 404)
    async with desk.database.sessions() as session:
        count = await session.scalar(
            select(func.count()).select_from(Notice).where(Notice.workspace_id == ws)
        )
    assert count == 0

    created = await desk.call(
        "admin_key",
        "POST",
        "/v1/notices",
        json={"text": "Your parcel ships today.", "contact_ids": [str(reachable), str(stopped)]},
    )
    assert created.status_code == 202, created.text
    by_contact = {r["contact_id"]: r for r in created.json()["recipients"]}
    assert by_contact[str(reachable)]["status"] == "queued"
    assert by_contact[str(stopped)]["status"] == "skipped"
    assert "opted out" in by_contact[str(stopped)]["reason"]
    assert [
        m.recipient_address for m in outbound(desk) if m.text == "Your parcel ships today."
    ] == [number]
    await receipt(desk, by_contact[str(reachable)]["message_id"], Channel.SMS, "delivered")
    path = f"/v1/notices/{created.json()['id']}"
    after = (await desk.call("admin", "GET", path)).json()
    assert after["counts"] == {"delivered": 1, "skipped": 1}
    assert_problem(await desk.client.get(path, headers=desk.b.headers["admin"]), 404)
