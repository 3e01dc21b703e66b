"""The supervisor wall's snapshot on PostgreSQL: queue figures, agents by status and
load, first-response SLA breaches and the last day's volume; other workspaces never
count and plain agents are refused."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import update

from shared.db.models import Conversation, ConversationStatus, CsatFollowUp, CsatSurvey, utcnow
from shared.db.session import Database
from tests.integration.test_api_agents import Desk, assert_problem, open_desk, queued_conversation

pytestmark = pytest.mark.integration


@pytest.fixture
async def desk(pg_database: Database) -> AsyncIterator[Desk]:
    async with open_desk(pg_database) as opened:
        yield opened


async def test_the_wall_shows_queues_agents_breaches_and_volume(desk: Desk) -> None:
    a, b = desk.a.workspace_id, desk.b.workspace_id
    late = await queued_conversation(desk.database, a, tier=1, waiting_seconds=900)
    soon = await queued_conversation(desk.database, a, tier=2, waiting_seconds=60)
    calm = await queued_conversation(desk.database, a, tier=1, waiting_seconds=10)
    old = await queued_conversation(desk.database, a, tier=1, waiting_seconds=3 * 24 * 3600)
    theirs = await queued_conversation(desk.database, b, tier=1, waiting_seconds=900)
    now = utcnow()
    async with desk.database.sessions() as session:
        for conversation_id, due in (
            (late, now - timedelta(minutes=5)),
            (old, now - timedelta(days=2)),
            (theirs, now - timedelta(hours=1)),
            (soon, now + timedelta(minutes=5)),
            (calm, now + timedelta(hours=2)),
        ):
            await session.execute(
                update(Conversation)
                .where(Conversation.id == conversation_id)
                .values(sla_due_at=due)
            )
        # Answered in time is no breach, even past the due time.
        await session.execute(
            update(Conversation)
            .where(Conversation.id == old)
            .values(status=ConversationStatus.ASSIGNED.value, first_response_at=now)
        )
        await session.commit()

    for who in ("supervisor", "admin", "supervisor_key"):
        response = await desk.call(who, "GET", "/v1/supervisor/wall")
        assert response.status_code == 200, response.text
    wall = response.json()

    tiers = {q["tier"]: q for q in wall["queues"]["tiers"]}
    assert tiers[1]["depth"] == 2
    assert tiers[1]["oldest_wait_seconds"] >= 900
    assert tiers[2]["depth"] == 1

    sla = wall["sla"]
    assert sla["breached"] == 1
    assert sla["at_risk"] == 1
    [breach] = sla["most_overdue"]
    assert breach["conversation_id"] == str(late)
    assert breach["overdue_seconds"] >= 300

    hours = wall["volume_by_hour"]
    assert len(hours) == 24
    # Three of ours were opened within the day (the three-day-old one is not counted,
    # nor the other workspace's).
    assert sum(h["conversations"] for h in hours) == 3
    assert hours == sorted(hours, key=lambda h: h["hour_start"])

    emails = {agent["id"]: agent for agent in wall["agents"]}
    assert set(emails) == {str(i) for i in desk.a.agent_ids.values()}
    assert wall["agents_by_status"] == {"online": 1, "away": 0, "offline": 4}
    assert wall["agents"][0]["status"] == "online"


async def test_agents_may_not_read_the_wall(desk: Desk) -> None:
    assert_problem(await desk.call("agent", "GET", "/v1/supervisor/wall"), 403)
    anonymous = await desk.client.get("/v1/supervisor/wall")
    assert_problem(anonymous, 401)


async def follow_up(
    desk: Desk,
    workspace_id: uuid.UUID,
    conversation_id: uuid.UUID,
    *,
    opened_ago: timedelta,
    closed: bool,
) -> None:
    now = utcnow()
    async with desk.database.sessions() as session:
        survey = CsatSurvey(
            id=uuid.uuid4(),
            workspace_id=workspace_id,
            conversation_id=conversation_id,
            channel="webchat",
            thread_key=uuid.uuid4().hex,
            tier=1,
            sent_at=now - opened_ago - timedelta(hours=1),
            expires_at=now + timedelta(days=1),
            score=1,
            answered_via="link",
            responded_at=now - opened_ago,
        )
        session.add(survey)
        await session.flush()
        session.add(
            CsatFollowUp(
                workspace_id=workspace_id,
                survey_id=survey.id,
                conversation_id=conversation_id,
                score=1,
                opened_at=now - opened_ago,
                closed_at=now if closed else None,
                note="called back" if closed else None,
            )
        )
        await session.commit()


async def test_the_wall_counts_open_csat_follow_ups(desk: Desk) -> None:
    empty = (await desk.call("supervisor", "GET", "/v1/supervisor/wall")).json()
    assert empty["csat_follow_ups"] == {
        "open": 0,
        "oldest_opened_at": None,
        "oldest_open_seconds": None,
    }
    a, b = desk.a.workspace_id, desk.b.workspace_id
    mine = await queued_conversation(desk.database, a, tier=1, waiting_seconds=10)
    theirs = await queued_conversation(desk.database, b, tier=1, waiting_seconds=10)
    await follow_up(desk, a, mine, opened_ago=timedelta(hours=3), closed=False)
    await follow_up(desk, a, mine, opened_ago=timedelta(minutes=20), closed=False)
    await follow_up(desk, a, mine, opened_ago=timedelta(days=2), closed=True)  # closed: not counted
    await follow_up(desk, b, theirs, opened_ago=timedelta(days=5), closed=False)  # not ours

    wall = (await desk.call("supervisor", "GET", "/v1/supervisor/wall")).json()
    summary = wall["csat_follow_ups"]
    assert summary["open"] == 2
    oldest = datetime.fromisoformat(summary["oldest_opened_at"])
    assert abs(oldest - (utcnow() - timedelta(hours=3))) < timedelta(minutes=5)
    assert 3 * 3600 <= summary["oldest_open_seconds"] < 4 * 3600
    listed = (
        await desk.call("supervisor", "GET", "/v1/csat/follow-ups", params={"status": "open"})
    ).json()
    assert len(listed["items"]) == summary["open"]
